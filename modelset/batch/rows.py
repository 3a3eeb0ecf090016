"""A set's row in the report, however its run ended for it."""

from __future__ import annotations

from typing import Literal

from modelset.batch.jobs import SetJob
from modelset.batch.photos import Photo
from modelset.batch.runtime import BatchRuntime
from modelset.ledger import LedgerRecord
from modelset.report import ManifestRow, Status
from modelset.stages import PrepareOptions, row_for, upload_key_for
from modelset.storage import StorageError


def sameness(photo: Photo, original: Photo) -> str:
    assert photo.prepared is not None and original.prepared is not None
    if photo.prepared.source_sha256 == original.prepared.source_sha256:
        return "same photo"
    return "same picture (an identical upload)"


def photo_upload_key(photo: Photo, template_id: int, base_url: str, options: PrepareOptions) -> str:
    assert photo.prepared is not None
    return upload_key_for(base_url, template_id, photo.prepared.sent_sha256(options), options)


def paid_row(photo: Photo, template_id: int, record: LedgerRecord | None, key: str) -> ManifestRow:
    """The row of a photo+template from its record, or from the record of the identical
    upload it was paid under (another key), with a reason saying so."""
    row = set_row(photo, template_id, record)
    if record is None or record.key == key:
        return row
    note = f"same picture (an identical upload) as {record.source}, paid once"
    return row.model_copy(update={"reason": f"{note}; {row.reason}" if row.reason else note})


def interrupted_row(job: SetJob, runtime: BatchRuntime) -> ManifestRow:
    record = runtime.ledger.read(job.key)
    if record is None or (job.sending and record.claimed_by_run != runtime.rules.run_id):
        reason = "interrupted before it was submitted"
        return set_row(job.photo, job.template_id, None, status="skipped", reason=reason)
    row = set_row(job.photo, job.template_id, record)
    if row.status is Status.SUCCEEDED:
        return row
    return row.model_copy(
        update={
            "status": Status.OUTCOME_UNKNOWN,
            "reason": "interrupted while in flight; a rerun resolves it",
        }
    )


def set_row(
    photo: Photo,
    template_id: int,
    record: LedgerRecord | None,
    *,
    status: Literal["planned", "skipped"] | None = None,
    reason: str | None = None,
) -> ManifestRow:
    assert photo.prepared is not None
    return row_for(
        source=photo.source,
        item=photo.item,
        template_id=template_id,
        prepared=photo.prepared,
        record=record,
        status_if_open=status,
        reason=reason,
    )


def failed_row(job: SetJob, runtime: BatchRuntime, exc: Exception) -> ManifestRow:
    """The row of a set that raised: the output location failing (which the store has
    retried already), or anything unexpected. A rerun resumes it from the ledger."""
    if isinstance(exc, StorageError):
        runtime.orchestrator.log.error("set %s/%s: %s", job.photo.item, job.template_id, exc)
        what = f"the output location failed ({exc})"
    else:
        runtime.orchestrator.log.exception("set %s/%s failed", job.photo.item, job.template_id)
        what = f"unexpected error ({type(exc).__name__}: {exc})"
    try:
        record = runtime.ledger.read(job.key)
    except StorageError:
        record = None
    return set_row(job.photo, job.template_id, record).model_copy(
        update={"status": Status.FAILED, "reason": f"{what}; a rerun resumes from the ledger"}
    )


def with_paid_sets(rows: dict[tuple[str, int], ManifestRow]) -> None:
    """Give each near-duplicate's row the images of the set paid for its picture in this
    run (a catalogue that reads rows gets them for both items), following a photo that
    gave way to a better copy to that copy."""
    by_photo = {(row.source_sha256, row.template_id): row for row in rows.values()}
    for key, row in rows.items():
        paid, hops = by_photo.get((row.near_duplicate_of, row.template_id)), 0
        while paid is not None and paid.near_duplicate_of is not None and hops < len(rows):
            paid, hops = by_photo.get((paid.near_duplicate_of, row.template_id)), hops + 1
        if row.near_duplicate_of is None or paid is None or paid.near_duplicate_of is not None:
            continue  # paid in an earlier run: its images came with the match
        reason = row.reason
        if hops:
            reason = f"near-duplicate of {paid.item} (through a copy it gave way to)"
        rows[key] = row.model_copy(
            update={
                "near_duplicate_of": paid.source_sha256,
                "outputs": paid.outputs,
                "reason": reason,
            }
        )
