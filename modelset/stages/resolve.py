"""Sends whose answer was lost: looked up by request_id where that is proven to work, or
given the task a callback or a person names; never sent again blindly."""

from __future__ import annotations

import logging

from modelset.hidream import HiDreamClient, HiDreamError
from modelset.ledger import Ledger, LedgerClaim, LedgerRecord, SubmissionState
from modelset.stages.models import SubmitPolicy

log = logging.getLogger("modelset.stages")


def not_collected(cause: str) -> str:
    """The reason of a send whose answer was lost: it may have been paid for."""
    return (
        f"paid, not collected: its answer was lost ({cause}); `modelset settle` collects "
        "it, `--resubmit-unknown` sends it again (may pay twice)"
    )


def submitted(record: LedgerRecord, task_id: str, sub_task_ids: list[str]) -> LedgerRecord:
    """The record of a send the service is known to have made a task of."""
    return record.model_copy(
        update={
            "state": SubmissionState.SUBMITTED,
            "task_id": task_id,
            "sub_task_ids": sub_task_ids,
            "reason": None,
        }
    )


async def resolve_unknown(
    client: HiDreamClient, claim: LedgerClaim, record: LedgerRecord, rules: SubmitPolicy
) -> LedgerRecord | None:
    """An earlier send whose answer was lost: its task if found, None if safe to resend.

    Looked up only where the service is proven to find tasks by request_id
    (``modelset.ledger.proof``); otherwise it stays unknown unless the rerun asked to
    resend unknown sends (``--resubmit-unknown``, which may pay twice).
    """
    if client.request_id_lookup_proven:
        try:
            receipt = await client.find_submission(
                record.request_id, cause="an earlier send's answer was lost"
            )
        except HiDreamError as exc:
            log.info("looking up %s failed: %s", record.request_id, exc.message)
        else:
            if receipt is None:
                return None
            return await claim.write(submitted(record, receipt.task_id, receipt.sub_task_ids))
    if rules.resubmit_unknown and record.claimed_by_run != rules.run_id:
        return None  # asked for, of an earlier run's send: it may be paid twice
    return await claim.write(
        record.model_copy(
            update={
                "state": SubmissionState.UNKNOWN,
                "reason": record.reason
                if record.state is SubmissionState.UNKNOWN and record.reason
                else not_collected("its run stopped mid-send"),
            }
        )
    )


async def adopt_task(
    client: HiDreamClient, ledger: Ledger, record: LedgerRecord, task_id: str
) -> LedgerRecord:
    """Attach to a send whose answer was lost the task it created, as a callback naming
    its request_id or a person (``modelset settle``) tells: the service must know the task
    (by its task_id, the documented lookup); under the key's claim, only a send still
    unknown, with that same request_id, is changed. Returns the record as it then is."""
    result = await client.get_result(task_id=task_id)
    async with ledger.claim(record.key) as claim:
        current = claim.record
        if (
            current is None
            or current.request_id != record.request_id
            or current.state not in (SubmissionState.UNKNOWN, SubmissionState.INTENT)
        ):
            return current or record
        log.info(
            "send %s created task %s (named by a callback or a person)", record.request_id, task_id
        )
        sub_task_ids = [sub.sub_task_id for sub in result.sub_task_results]
        return await claim.write(submitted(current, task_id, sub_task_ids))
