"""The submit stage, the one that spends money: a photo+template sent at most once, under
its ledger claim, within the period budget."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

from modelset.budget import PeriodBudget, Reservation
from modelset.hidream import (
    AccountError,
    ConnectFailed,
    HiDreamClient,
    HiDreamError,
    OutcomeUnknown,
    Receipt,
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
from modelset.stages.decide import decide, not_sent
from modelset.stages.keys import upload_key_for
from modelset.stages.models import PreparedPhoto, PrepareOptions, SubmitPolicy
from modelset.stages.resolve import not_collected, submitted


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
        send = _Send(
            client=client,
            ledger=ledger,
            claim=claim,
            prepared=prepared,
            prepare=prepare,
            item=item,
            template_id=template_id,
            rules=rules,
            image=image,
            image_sha256=image_sha256,
            notify_url=notify_url,
            budget=budget,
            images=images,
        )
        try:
            return await send.submit()
        except RecordAppeared:
            # Planned as absent, written meanwhile by another run; nothing was written or
            # sent here: decide again from the record as it is.
            return await send.submit()


@dataclass(frozen=True)
class _Send:
    """One photo+template to send under its key's claim, and the steps of sending it."""

    client: HiDreamClient
    ledger: Ledger
    claim: LedgerClaim
    prepared: PreparedPhoto
    prepare: PrepareOptions
    item: str
    template_id: int
    rules: SubmitPolicy
    image: str | Path
    image_sha256: str
    notify_url: str | None
    budget: PeriodBudget | None
    images: int

    @property
    def key(self) -> str:
        return self.claim.key

    @property
    def upload_key(self) -> str:
        """The upload's key in the ledger: one paid send per upload, whatever its key."""
        return upload_key_for(
            self.client.base_url, self.template_id, self.image_sha256, self.prepare
        )

    async def submit(self) -> LedgerRecord:
        """Decide from the key's record as the claim holds it, reserve the budget, send."""
        record = self.claim.record
        decided = await decide(self.client, self.claim, record, self.rules)
        if isinstance(decided, LedgerRecord):
            return decided
        reservation: Reservation | None = None
        if self.budget is not None:
            reserved = await self.budget.reserve(
                self.key, self.rules.run_id, self.images, self.ledger
            )
            if isinstance(reserved, str):
                return not_sent(record, self.key, reserved)
            reservation = reserved
        return await self.send_and_settle(record, decided, reservation)

    async def send_and_settle(
        self, record: LedgerRecord | None, attempt: int, reservation: Reservation | None
    ) -> LedgerRecord:
        """Send; the reservation is then spent or given back by what became of it."""
        try:
            outcome = await self.record_intent_and_send(record, attempt, reservation)
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
            await self.settle(reservation, outcome)
        return outcome

    async def record_intent_and_send(
        self, record: LedgerRecord | None, attempt: int, reservation: Reservation | None
    ) -> LedgerRecord:
        """Record the intent, send, record the outcome; or, when this upload was paid for
        under another key, that key's record."""
        intent = await self.record_intent(attempt, reservation)
        if record is None and not self.rules.refresh:
            # Claimed after the intent is on record, so a concurrent claimer of the same
            # upload always finds its owner's record and never takes the upload over.
            paid = await self.paid_under_another_key()
            if paid is not None:
                return paid
        try:
            receipt = await self.send(intent)
        except (ClaimLost, HiDreamError) as failure:
            return await self.record_outcome(record, intent, failure)
        return await self.record_outcome(record, intent, receipt)

    async def record_intent(self, attempt: int, reservation: Reservation | None) -> LedgerRecord:
        """The record of a send about to be made: a send interrupted from here on is
        found again by its request_id."""
        return await self.claim.write(
            LedgerRecord(
                key=self.key,
                attempt=attempt,
                state=SubmissionState.INTENT,
                request_id=request_id_for(self.key, attempt),
                template_id=self.template_id,
                source=self.prepared.source,
                item=self.item,
                source_sha256=self.prepared.source_sha256,
                upload_sha256=self.image_sha256,
                look=self.prepared.look,
                claimed_by_run=self.rules.run_id,
                budget_period=reservation.period if reservation is not None else None,
            )
        )

    async def paid_under_another_key(self) -> LedgerRecord | None:
        """The record of the key this upload was paid for under (the intent dropped), or
        None when the upload is this key's."""
        owner = await self.ledger.claim_upload(self.upload_key, self.key)
        paid = None if owner == self.key else await self.ledger.run(self.ledger.read, owner)
        if paid is not None:
            await self.claim.forget()
            return paid
        return None

    async def send(self, intent: LedgerRecord) -> Receipt:
        """The request that may be paid for, cancelled if the claim's hold is lost first
        (ClaimLost)."""
        sending = asyncio.ensure_future(
            self.client.submit_variation(
                self.image,
                self.template_id,
                request_id=intent.request_id,
                notify_url=naming_request(self.notify_url, intent.request_id),
            )
        )
        lost = asyncio.ensure_future(self.claim.hold.lost.wait())
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

    async def record_outcome(
        self,
        record: LedgerRecord | None,
        intent: LedgerRecord,
        sent: Receipt | ClaimLost | HiDreamError,
    ) -> LedgerRecord:
        """The record of what became of the send: the task it created, or what it raised."""
        if isinstance(sent, ClaimLost):
            # The lease could not be renewed: stop sending. Whoever claims the key next
            # finds the intent and looks its request_id up.
            return intent.model_copy(
                update={
                    "state": SubmissionState.UNKNOWN,
                    "reason": not_collected("the ledger lease was lost mid-send"),
                }
            )
        if isinstance(sent, AccountError | ConnectFailed | Throttled):
            # Certainly not created: the key goes back to what it was before this send.
            await self.undo_intent(record)
            if isinstance(sent, AccountError):
                raise sent
            return intent.model_copy(
                update={
                    "state": SubmissionState.FINISHED,
                    "outcome": Status.FAILED.value,
                    "reason": f"not submitted ({sent.message}); a rerun tries again",
                }
            )
        if isinstance(sent, RequestRejected):
            return await self.claim.write(
                intent.model_copy(
                    update={
                        "state": SubmissionState.FINISHED,
                        "outcome": Status.REJECTED.value,
                        "reason": f"refused by the service: {sent.message}",
                    }
                )
            )
        if isinstance(sent, HiDreamError):
            # It may have reached the service and been paid for: never sent again blindly
            # (see resolve_unknown).
            cause = sent.cause if isinstance(sent, OutcomeUnknown) else sent.message
            return await self.claim.write(
                intent.model_copy(
                    update={"state": SubmissionState.UNKNOWN, "reason": not_collected(cause)}
                )
            )
        return await self.claim.write(submitted(intent, sent.task_id, sent.sub_task_ids))

    async def undo_intent(self, previous: LedgerRecord | None) -> None:
        """Put the key back as it was before this send, which certainly created nothing."""
        if previous is None:
            await self.claim.forget()
            await self.ledger.release_upload(self.upload_key, self.key)
        else:
            await self.claim.write(previous)

    async def settle(self, reservation: Reservation, outcome: LedgerRecord) -> None:
        """Spend what a send may have cost (the set size the service declared, or the
        reservation where its answer was lost), or give it back when nothing was created."""
        sent_here = outcome.key == self.key and outcome.claimed_by_run == self.rules.run_id
        if sent_here and outcome.state is SubmissionState.SUBMITTED:
            await reservation.spend(outcome.images_paid or reservation.images)
        elif sent_here and outcome.state in (SubmissionState.UNKNOWN, SubmissionState.INTENT):
            await reservation.spend(reservation.images)
        else:  # not sent, refused, or paid under another key
            await reservation.release()
