"""What one chunk of photos goes through in each stage before a set is sent.

Fetch makes each photo's bytes available here and hashes them; validate checks each from
its header only; prepare makes the one decode per photo (the upload and its thumbnail, in
the output location). Pillow work runs in threads, one per core, and only hashes and
keys come back. A value returned holds no source path (``source`` is blanked, and the
caller puts it back): whatever keeps a chunk's result (Prefect's cache) can hand it to
any worker.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
from pydantic import BaseModel

from modelset.batch.runtime import BatchRuntime
from modelset.stages import (
    PreparedPhoto,
    PrepareOptions,
    Workspace,
    fetch_photo,
    prepare_validated,
    validate_photo,
)

_CPU_LIMITER = anyio.CapacityLimiter(max(1, os.cpu_count() or 1))


class FetchItem(BaseModel):
    """A source to fetch, and what names its bytes when that is known beforehand."""

    source: str
    sha256: str | None = None  # a local file, hashed already
    identity: str | None = None  # a remote source's URL + ETag/Last-Modified + size


def _portable(photos: list[PreparedPhoto]) -> list[PreparedPhoto]:
    """What a cache may keep: the results without the sources as given."""
    return [photo.model_copy(update={"source": ""}) for photo in photos]


async def _each(
    stage: Callable[[Any, Workspace, PrepareOptions], PreparedPhoto],
    photos: Sequence[Any],
    runtime: BatchRuntime,
) -> list[PreparedPhoto]:
    # Every core on one chunk: a large chunk is not left to one core while it is the
    # only one left to prepare.
    done = await asyncio.gather(
        *(
            anyio.to_thread.run_sync(
                stage, photo, runtime.workspace, runtime.prepare, limiter=_CPU_LIMITER
            )
            for photo in photos
        )
    )
    return _portable(list(done))


def _fetch_one(item: FetchItem, workspace: Workspace, options: PrepareOptions) -> PreparedPhoto:
    return fetch_photo(item.source, workspace, options, known_sha256=item.sha256)


async def fetch_chunk(items: Sequence[FetchItem], runtime: BatchRuntime) -> list[PreparedPhoto]:
    """Each photo's bytes, here and hashed; a photo that cannot be fetched has its reason
    (transient network errors are retried per photo, and the chunk goes on)."""
    return await _each(_fetch_one, items, runtime)


async def validate_chunk(
    photos: Sequence[PreparedPhoto], runtime: BatchRuntime
) -> list[PreparedPhoto]:
    """Each photo checked from its header only: format, size, ratio, decompression bombs."""
    return await _each(validate_photo, photos, runtime)


async def prepare_chunk(
    photos: Sequence[PreparedPhoto], runtime: BatchRuntime
) -> list[PreparedPhoto]:
    """The one decode per photo: the upload and its thumbnail, into the output location."""
    return await _each(prepare_validated, photos, runtime)


STAGES: dict[str, Callable[[Any, BatchRuntime], Awaitable[list[PreparedPhoto]]]] = {
    "fetch": fetch_chunk,
    "validate": validate_chunk,
    "prepare": prepare_chunk,
}
