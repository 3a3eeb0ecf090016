"""The manifest's rows: what is known of one photo and template, as the report shows it."""

from __future__ import annotations

from typing import Literal

from modelset.ledger import LedgerRecord, SubmissionState
from modelset.report import ManifestRow, Status
from modelset.stages.models import PreparedPhoto


def row_for(
    *,
    source: str,
    item: str,
    template_id: int,
    prepared: PreparedPhoto,
    record: LedgerRecord | None,
    status_if_open: Literal["planned", "skipped"] | None = None,
    reason: str | None = None,
) -> ManifestRow:
    """The manifest row of one photo and template from what is known of it."""
    base = ManifestRow(
        source=source,
        item=item,
        source_sha256=prepared.source_sha256,
        upload_sha256=prepared.upload_sha256,
        template_id=template_id,
        status=Status.REJECTED,
        reason=prepared.reason,
        thumbnail=prepared.thumbnail,
    )
    if not prepared.ready:
        return base
    if record is None:
        return base.model_copy(
            update={"status": Status(status_if_open or "skipped"), "reason": reason}
        )
    update: dict[str, object] = {
        "upload_sha256": record.upload_sha256 or prepared.upload_sha256,
        "request_id": record.request_id,
        "task_id": record.task_id,
        "reason": record.reason,
        "outputs": record.outputs,
        "ledger_key": record.key,
        "attempt": record.attempt,
    }
    if record.state is SubmissionState.FINISHED and record.outcome:
        update["status"] = Status(record.outcome)
    elif record.state in (SubmissionState.UNKNOWN, SubmissionState.INTENT):
        update["status"] = Status.OUTCOME_UNKNOWN
        update["reason"] = record.reason or "the send was interrupted; a rerun resolves it"
    else:
        update["status"] = Status.FAILED
        update["reason"] = record.reason or "not finished; a rerun resumes waiting"
    return base.model_copy(update=update)
