"""One set to send or collect (a photo and a template), and what planning checks of it
once its photo is prepared."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelset.batch.photos import Photo

if TYPE_CHECKING:
    from modelset.batch.looks import LookChecks


@dataclass
class SetJob:
    photo: Photo
    template_id: int
    key: str
    sending: bool  # False: submitted earlier, only collected now
    paid_as: str | None = None  # the key an identical upload was paid under, if another
    # Planned from the source's hash while its photo was still being prepared: the
    # upload checks of planning are made once it is (``when_prepared``).
    unprepared: bool = False
    fresh: bool = False  # its key had no record when planned
    # A better copy of its picture planned later in this run takes its place while its
    # send has not begun (``LookChecks``): the photo it gave way to, and how far apart.
    gave_way_to: tuple[Photo, int] | None = None
    sending_begun: bool = False


@dataclass
class UploadChecks:
    """What planning checks of the prepared upload, for sets planned before it existed."""

    base_url: str
    first_by_upload: dict[tuple[str, int], Photo]
    duplicates: list[tuple[Photo, int, Photo]]
    looks: LookChecks
    gate: ChunkGate


class ChunkGate:
    """Sets planned before their photos were prepared are sent once every set of their
    chunk is checked: of two copies prepared together, the better is then the one sent."""

    def __init__(self, jobs: list[SetJob]) -> None:
        self._unchecked: dict[int, int] = {}
        self._checked: dict[int, asyncio.Event] = {}
        for job in jobs:
            if job.unprepared:
                chunk = id(job.photo.preparing)
                self._unchecked[chunk] = self._unchecked.get(chunk, 0) + 1
                self._checked.setdefault(chunk, asyncio.Event())

    def checked(self, job: SetJob) -> None:
        chunk = id(job.photo.preparing)
        self._unchecked[chunk] -= 1
        if not self._unchecked[chunk]:
            self._checked[chunk].set()

    async def wait(self, job: SetJob) -> None:
        """Until every set of the job's chunk is checked."""
        await self._checked[id(job.photo.preparing)].wait()
