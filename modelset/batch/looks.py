"""Near-duplicates: a photo about to be paid for that looks like one paid for (or planned)
with the same template is skipped, once a region-by-region check confirms the match."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import anyio

from modelset.batch.jobs import SetJob, UploadChecks
from modelset.batch.photos import Photo
from modelset.batch.rows import paid_row, photo_upload_key, set_row
from modelset.batch.runtime import BatchRuntime
from modelset.batch.summary import RunPlan
from modelset.images.looks import Look
from modelset.ledger import LedgerRecord, SubmissionState
from modelset.report import ManifestRow
from modelset.stages import stored_preview

if TYPE_CHECKING:
    from PIL import Image

    from modelset.images import likeness


@dataclass(frozen=True)
class Likeness:
    """The paid (or planned) photo a photo looks like, and its set's images if paid."""

    item: str
    source_sha256: str | None
    distance: int
    outputs: tuple[str, ...] = ()

    @classmethod
    def of(cls, photo: Photo, distance: int) -> Likeness:
        assert photo.prepared is not None
        return cls(photo.item, photo.prepared.source_sha256, distance)


class LookChecks:
    """Planning's near-duplicate check: a photo about to be paid for that looks like one
    paid for with the same template is skipped. Of photos of this run that are the same
    picture, the best source is sent (``PreparedPhoto.source_rank``, then the batch's
    order): a better copy planned later takes the place of one whose send has not begun."""

    def __init__(self, runtime: BatchRuntime) -> None:
        self.runtime = runtime
        self._by_template: dict[int, likeness.NearDuplicates[str | Photo]] = {}
        self.turn = asyncio.Lock()  # held by a photo checked as it is prepared
        self._paid: dict[int, list[tuple[Look, str]]] | None = None  # listed once, if needed
        self._planned: dict[tuple[int, int], SetJob] = {}  # by id(photo), template
        # Taking a place (in a worker thread) and beginning a send (in the event loop)
        # exclude each other: a copy never takes the place of a set being sent.
        self._places = threading.Lock()

    def begin_sending(self, job: SetJob) -> Likeness | None:
        """The better copy the job's photo gave way to, if one did; else the job's send
        begins, and no copy takes its place any more."""
        with self._places:
            if job.gave_way_to is not None:
                return Likeness.of(*job.gave_way_to)
            job.sending_begun = True
            return None

    def _takes_over(
        self, template_id: int, photo: str | Photo, match: likeness.Match[str | Photo]
    ) -> bool:
        """Whether ``photo`` takes the place of the planned photo it repeats (``match``):
        a better source, while that one's send has not begun."""
        assert isinstance(photo, Photo) and isinstance(match.ref, Photo)
        assert photo.prepared is not None and match.ref.prepared is not None
        if photo.prepared.source_rank <= match.ref.prepared.source_rank:
            return False
        with self._places:
            giving_way = self._planned[(id(match.ref), template_id)]
            if giving_way.sending_begun:
                return False
            giving_way.gave_way_to = (photo, match.distance)
            for (_, template), job in self._planned.items():
                gave_way = job.gave_way_to
                if template == template_id and gave_way is not None and gave_way[0] is match.ref:
                    job.gave_way_to = (photo, gave_way[1])
            return True

    async def repeats(self, template_id: int, jobs: list[SetJob]) -> list[Likeness | None]:
        """For each job's photo (in order), what it repeats; photos that repeat nothing are
        planned, so a later photo like them is skipped. Never called by two at once: at
        planning, then under ``turn``."""
        found: list[Likeness | None] = [None] * len(jobs)
        if self.runtime.rules.allow_near_duplicates:
            return found
        looked = [
            (i, job.photo, job.key, look_of(job.photo))
            for i, job in enumerate(jobs)
            if job.photo.prepared and job.photo.prepared.look
        ]
        # numpy, only once a photo is to be checked: a rerun with nothing to do never is.
        from modelset.images.likeness import LookIndex, NearDuplicates
        from modelset.images.sameness import same_picture

        ledger = self.runtime.ledger
        near = self._by_template.get(template_id)
        if near is None:
            if self._paid is None:
                self._paid = await ledger.run(ledger.paid_looks)
            recorded = self._paid.get(template_id, [])
            index = await anyio.to_thread.run_sync(LookIndex[str | Photo], recorded)
            near = self._by_template[template_id] = NearDuplicates(index)
        keys = {id(photo): key for _, photo, key, _ in looked}
        self._planned.update({(id(job.photo), template_id): job for job in jobs})
        records: dict[str, LedgerRecord | None] = {}
        previews: dict[str, Image.Image | None] = {}
        store = self.runtime.workspace.store

        def preview(source_sha256: str | None) -> Image.Image | None:
            if source_sha256 is None:
                return None
            if source_sha256 not in previews:
                previews[source_sha256] = stored_preview(store, source_sha256)
            return previews[source_sha256]

        def confirm(photo: str | Photo, ref: str | Photo) -> bool:
            """Whether a candidate the look found is the same picture, region by region (a
            preview gone cannot confirm it: paying for a copy is the lesser harm)."""
            assert isinstance(photo, Photo) and photo.prepared is not None
            if isinstance(ref, Photo):
                assert ref.prepared is not None
                other = ref.prepared.source_sha256
            else:
                # Its own key, paid meanwhile by another run, is no near-duplicate: the
                # claim finds that record and collects the set.
                if ref == keys[id(photo)]:
                    return False
                if ref not in records:
                    records[ref] = ledger.read(ref)
                record = records[ref]
                if record is None:
                    return False
                other = record.source_sha256
            mine, theirs = preview(photo.prepared.source_sha256), preview(other)
            return mine is not None and theirs is not None and same_picture(mine, theirs)

        entries = [(look, photo) for _, photo, _, look in looked]
        takes_over = partial(self._takes_over, template_id)
        matches = await anyio.to_thread.run_sync(near.check, entries, confirm, takes_over)
        for (position, _, _, _), match in zip(looked, matches, strict=True):
            if match is None:
                continue
            if isinstance(match.ref, Photo):
                found[position] = Likeness.of(match.ref, match.distance)
                continue
            record = records[match.ref]
            assert record is not None
            found[position] = Likeness(
                record.item, record.source_sha256, match.distance, tuple(record.outputs)
            )
        return found


def look_of(photo: Photo) -> Look:
    assert photo.prepared is not None and photo.prepared.look is not None
    return Look.parse(photo.prepared.look)


async def without_near_duplicates(
    jobs: list[SetJob], looks: LookChecks, plan: RunPlan
) -> list[SetJob]:
    """The jobs left once the prepared photos about to be paid for that repeat a paid or
    planned one are taken out (their rows say which); the others are checked as they
    are prepared (``when_prepared``)."""
    checked: dict[int, list[SetJob]] = {}
    for job in jobs:
        if job.sending and job.fresh and not job.unprepared and job.paid_as is None:
            checked.setdefault(job.template_id, []).append(job)
    skipped: set[int] = set()
    for template_id, candidates in checked.items():
        likes = await looks.repeats(template_id, candidates)
        for job, like in zip(candidates, likes, strict=True):
            if job.gave_way_to is not None:
                like = Likeness.of(*job.gave_way_to)
            if like is not None:
                skipped.add(id(job))
                row = near_duplicate_row(job.photo, template_id, like)
                plan.rows[(job.photo.source, template_id)] = row
    return [job for job in jobs if id(job) not in skipped]


def near_duplicate_row(photo: Photo, template_id: int, like: Likeness) -> ManifestRow:
    reason = f"near-duplicate of {like.item} (distance {like.distance})"
    row = set_row(photo, template_id, None, status="skipped", reason=reason)
    update = {"near_duplicate_of": like.source_sha256, "outputs": list(like.outputs)}
    return row.model_copy(update=update)


GO_ON = "go on"
DUPLICATE = "duplicate"


async def when_prepared(
    job: SetJob, runtime: BatchRuntime, plan: RunPlan, checks: UploadChecks
) -> ManifestRow | str:
    """Wait for the job's photo to be prepared, then make planning's upload checks: its
    row when nothing is left to do (rejected, paid under another key, a near-duplicate),
    ``DUPLICATE`` (its row is the original's, made at the end), else ``GO_ON``
    (submit, or collect what another key paid for)."""
    photo, template_id = job.photo, job.template_id
    if photo.preparing is not None:
        # Shielded: an interrupted set must not cancel its whole chunk's preparation.
        await asyncio.shield(photo.preparing)
    prepared = photo.prepared
    assert prepared is not None
    job.unprepared = False
    if not prepared.ready or prepared.upload_sha256 is None:
        plan.tasks -= job.sending
        return set_row(photo, template_id, None)
    original = checks.first_by_upload.setdefault((prepared.upload_sha256, template_id), photo)
    if original is not photo:
        plan.tasks -= job.sending
        checks.duplicates.append((photo, template_id, original))
        return DUPLICATE
    if not job.fresh:
        return GO_ON
    # One photo at a time, in the batch's order (the lock is first come, first served, and
    # photos come here in that order): of two photos alike, the first is the one paid for.
    async with checks.looks.turn:
        if not runtime.rules.refresh:
            ledger = runtime.ledger
            upload = photo_upload_key(photo, template_id, checks.base_url, runtime.prepare)
            owner = (await ledger.run(ledger.upload_owners, [upload], runtime.listing))[upload]
            if owner is not None and owner != job.key:
                record = await ledger.run(ledger.read, owner)
                plan.tasks -= job.sending
                job.paid_as, job.sending = owner, False
                if record is not None and record.state is SubmissionState.SUBMITTED:
                    return GO_ON
                plan.already_done += 1
                return paid_row(photo, template_id, record, job.key)
        if job.sending and (like := (await checks.looks.repeats(template_id, [job]))[0]):
            plan.tasks -= 1
            return near_duplicate_row(photo, template_id, like)
    return GO_ON
