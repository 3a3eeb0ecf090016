"""The first step of a submit: whether a key is sent, and as which attempt, judged from
its record under the key's claim (and, for planning, from its record alone)."""

from __future__ import annotations

from modelset.hidream import HiDreamClient
from modelset.ledger import LedgerClaim, LedgerRecord, SubmissionState
from modelset.report import Status
from modelset.stages.models import SubmitPolicy
from modelset.stages.resolve import resolve_unknown


def needs_submit(record: LedgerRecord | None, rules: SubmitPolicy) -> bool:
    """Whether a key must be (re)sent under these rules, judged from its record alone."""
    if record is None:
        return True
    if record.claimed_by_run == rules.run_id:
        # Its own sends: an interrupted one (a retried task) or one whose answer was lost
        # (looked up where proven, see resolve_unknown); never one sent for certain.
        return record.state in (SubmissionState.INTENT, SubmissionState.UNKNOWN)
    if rules.refresh:
        return True
    if record.state is SubmissionState.FINISHED:
        if rules.regenerate.get(record.key) == record.attempt:
            return True  # declined in review; a later attempt is not declined (yet)
        return rules.retry_failed and record.outcome == Status.FAILED
    return record.state in (SubmissionState.INTENT, SubmissionState.UNKNOWN)


async def decide(
    client: HiDreamClient, claim: LedgerClaim, record: LedgerRecord | None, rules: SubmitPolicy
) -> LedgerRecord | int:
    """The attempt to send as, or the record to return without sending: nothing to send,
    an earlier send's task found, or too little lease left for a whole send."""
    if not needs_submit(record, rules):
        assert record is not None
        return record
    if record is not None and record.state in (
        SubmissionState.INTENT,
        SubmissionState.UNKNOWN,
    ):
        # An earlier send may have created a task: adopt it rather than pay again,
        # whatever the rerun options say.
        resolved = await resolve_unknown(client, claim, record, rules)
        if resolved is not None:
            return resolved
        attempt = record.attempt
    else:
        attempt = 1 if record is None else record.attempt + 1
    if claim.time_left() < rules.send_window_s:
        return not_sent(record, claim.key, "the ledger lease is too short for a whole send")
    return attempt


def not_sent(record: LedgerRecord | None, key: str, why: str) -> LedgerRecord:
    """The record returned for a send not made this time (a rerun tries again)."""
    base = record or LedgerRecord(
        key=key, state=SubmissionState.FINISHED, request_id="", template_id=0, source_sha256=""
    )
    return base.model_copy(
        update={
            "state": SubmissionState.FINISHED,
            "outcome": Status.FAILED.value,
            "reason": f"not submitted ({why}); a rerun tries again",
        }
    )
