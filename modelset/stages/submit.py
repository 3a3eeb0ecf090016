"""The submit stage, the one that spends money: a photo+template sent at most once, under
its ledger claim, within the period budget."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

from modelset.budget import PeriodBudget, Reservation
from modelset.hidream import (
    AccountError,
    ConnectFailed,
    HiDreamClient,
    HiDreamError,
    OutcomeUnknown,
    RequestRejected,
    Throttled,
)
from modelset.ledger import (
    ClaimLost,
    Ledger,
    LedgerClaim,
    LedgerRecord,
    RecordAppeared,
    SubmissionState,
    request_id_for,
)
from modelset.report import Status
from modelset.settings import naming_request
from modelset.stages.keys import upload_key_for
from modelset.stages.models import PreparedPhoto, PrepareOptions, SubmitPolicy
from modelset.stages.resolve import not_collected, resolve_unknown, submitted

T = TypeVar("T")


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


async def submit_once(
    client: HiDreamClient,
    ledger: Ledger,
    *,
    key: str,
    prepared: PreparedPhoto,
    prepare: PrepareOptions,
    item: str,
    template_id: int,
    rules: SubmitPolicy,
    upload: Path | None,
    notify_url: str | None = None,
    absent: bool = False,
    budget: PeriodBudget | None = None,
    images: int = 0,
) -> LedgerRecord:
    """Send one photo+template at most once; returns its ledger record.

    ``upload`` is the prepared upload on this machine (see :func:`upload_file`).
    ``absent``: the key had no record when the run was planned (see ``Ledger.claim``).
    ``budget``: the period budget, of which ``images`` are reserved under the claim before
    the send, and spent or given back by its outcome.

    The record returned has another key when the same upload was paid for under that
    key (the same picture with other bytes): the caller points at that set.
    Raises :class:`AccountError` (the batch must stop); every other outcome is recorded.
    """
    assert prepared.ready
    assert prepared.source_sha256
    image, image_sha256 = prepared.image_to_send(prepare, upload)
    async with ledger.claim(key, absent=absent) as claim:

        async def held() -> LedgerRecord:
            record = claim.record
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
                return _not_sent(record, key, "the ledger lease is too short for a whole send")
            reservation: Reservation | None = None
            if budget is not None:
                reserved = await budget.reserve(key, rules.run_id, images, ledger)
                if isinstance(reserved, str):
                    return _not_sent(record, key, reserved)
                reservation = reserved
            try:
                outcome = await record_intent_and_send(claim, record, attempt, reservation)
            except (AccountError, RecordAppeared):
                # Nothing was created: the account was refused, or another run wrote the
                # record first and nothing was written or sent here.
                if reservation is not None:
                    await reservation.release()
                raise
            except BaseException:
                # Whether it was sent is not known here: it may have been paid for.
                if reservation is not None:
                    await reservation.spend(reservation.images)
                raise
            if reservation is not None:
                await _settle_reservation(reservation, outcome, key, rules.run_id)
            return outcome

        async def record_intent_and_send(
            claim: LedgerClaim,
            record: LedgerRecord | None,
            attempt: int,
            reservation: Reservation | None,
        ) -> LedgerRecord:
            sent = upload_key_for(client.base_url, template_id, image_sha256, prepare)
            intent = await claim.write(
                LedgerRecord(
                    key=key,
                    attempt=attempt,
                    state=SubmissionState.INTENT,
                    request_id=request_id_for(key, attempt),
                    template_id=template_id,
                    source=prepared.source,
                    item=item,
                    source_sha256=prepared.source_sha256,
                    upload_sha256=image_sha256,
                    look=prepared.look,
                    claimed_by_run=rules.run_id,
                    budget_period=reservation.period if reservation is not None else None,
                )
            )
            if record is None and not rules.refresh:
                # Claimed after the intent is on record, so a concurrent claimer of the same
                # upload always finds its owner's record and never takes the upload over.
                owner = await ledger.claim_upload(sent, key)
                if owner != key and (paid := await ledger.run(ledger.read, owner)) is not None:
                    await claim.forget()
                    return paid
            try:
                receipt = await _send_while_held(
                    claim,
                    client.submit_variation(
                        image,
                        template_id,
                        request_id=intent.request_id,
                        notify_url=naming_request(notify_url, intent.request_id),
                    ),
                )
            except ClaimLost:
                # The lease could not be renewed: stop sending. Whoever claims the key next
                # finds the intent and looks its request_id up.
                return intent.model_copy(
                    update={
                        "state": SubmissionState.UNKNOWN,
                        "reason": not_collected("the ledger lease was lost mid-send"),
                    }
                )
            except (AccountError, ConnectFailed, Throttled) as exc:
                # Certainly not created: the key goes back to what it was before this send.
                await _restore(claim, record)
                if record is None:
                    await ledger.release_upload(sent, key)
                if isinstance(exc, AccountError):
                    raise
                return intent.model_copy(
                    update={
                        "state": SubmissionState.FINISHED,
                        "outcome": Status.FAILED.value,
                        "reason": f"not submitted ({exc.message}); a rerun tries again",
                    }
                )
            except RequestRejected as exc:
                return await claim.write(
                    intent.model_copy(
                        update={
                            "state": SubmissionState.FINISHED,
                            "outcome": Status.REJECTED.value,
                            "reason": f"refused by the service: {exc.message}",
                        }
                    )
                )
            except HiDreamError as exc:
                # It may have reached the service and been paid for: never sent again
                # blindly (see resolve_unknown).
                reason = not_collected(
                    exc.cause if isinstance(exc, OutcomeUnknown) else exc.message
                )
                return await claim.write(
                    intent.model_copy(update={"state": SubmissionState.UNKNOWN, "reason": reason})
                )
            return await claim.write(submitted(intent, receipt.task_id, receipt.sub_task_ids))

        try:
            return await held()
        except RecordAppeared:
            # Planned as absent, written meanwhile by another run; nothing was written or
            # sent here: decide again from the record as it is.
            return await held()


async def _settle_reservation(
    reservation: Reservation, outcome: LedgerRecord, key: str, run_id: str
) -> None:
    """Spend what a send may have cost (the set size the service declared, or the
    reservation where its answer was lost), or give it back when nothing was created."""
    sent_here = outcome.key == key and outcome.claimed_by_run == run_id
    if sent_here and outcome.state is SubmissionState.SUBMITTED:
        await reservation.spend(outcome.images_paid or reservation.images)
    elif sent_here and outcome.state in (SubmissionState.UNKNOWN, SubmissionState.INTENT):
        await reservation.spend(reservation.images)
    else:  # not sent, refused, or paid under another key
        await reservation.release()


async def _send_while_held(claim: LedgerClaim, send: Awaitable[T]) -> T:
    """Await ``send``, cancelling it if the claim's hold is lost first (ClaimLost)."""
    sending = asyncio.ensure_future(send)
    lost = asyncio.ensure_future(claim.hold.lost.wait())
    try:
        await asyncio.wait({sending, lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        lost.cancel()
    if not sending.done():
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sending
        raise ClaimLost("the ledger lease was lost")
    return sending.result()


def _not_sent(record: LedgerRecord | None, key: str, why: str) -> LedgerRecord:
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


async def _restore(claim: LedgerClaim, previous: LedgerRecord | None) -> None:
    if previous is None:
        await claim.forget()
    else:
        await claim.write(previous)
