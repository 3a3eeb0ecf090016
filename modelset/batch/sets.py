"""Sending and collecting sets, a chunk at a time: the only place money is spent.

Each chunk is handed to the orchestrator (``submit 69-200 of 200``) and run again while
it raises :class:`SetsToRetry`; a set already sent is then a no-op (the ledger decides,
and the chunk keeps each set's row once it has one). Every set holds one of the batch's
slots while it is sent and collected; an interrupt stops every chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio

from modelset.batch.jobs import SetJob, UploadChecks
from modelset.batch.looks import DUPLICATE, GO_ON, near_duplicate_row, when_prepared
from modelset.batch.orchestration import SetsToRetry
from modelset.batch.photos import chunk_bounds, prepared
from modelset.batch.rows import failed_row, interrupted_row, paid_row, set_row
from modelset.batch.runtime import BatchRuntime, collect
from modelset.batch.summary import RunListener, RunPlan, RunProgress
from modelset.budget import Budget
from modelset.hidream import AccountError, HiDreamError
from modelset.ledger import LedgerRecord, SubmissionState
from modelset.report import ManifestRow
from modelset.stages import submit_once, upload_file, upload_on_disk


class SendFailed(Exception):
    """Sending a set failed in a way its chunk's next run may repeat safely."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass
class SetChunk:
    """Sets sent together; run again, it runs only those without a row yet."""

    jobs: list[SetJob]
    run_one: Callable[[SetJob], Awaitable[ManifestRow | None]]
    rows: dict[int, ManifestRow | None] = field(default_factory=dict)  # by position
    errors: dict[int, Exception] = field(default_factory=dict)  # the last run's, by position

    async def run(self) -> None:
        left = [i for i in range(len(self.jobs)) if i not in self.rows]
        outcomes = await asyncio.gather(*(self._one(i) for i in left), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, SendFailed):
                raise outcome
        if failures := [self.errors[i] for i in left if i in self.errors]:
            raise SetsToRetry(failures)

    async def _one(self, position: int) -> None:
        self.errors.pop(position, None)
        try:
            self.rows[position] = await self.run_one(self.jobs[position])
        except SendFailed as exc:
            self.errors[position] = exc.cause
            raise


async def run_jobs(
    jobs: list[SetJob],
    runtime: BatchRuntime,
    plan: RunPlan,
    budget: Budget,
    concurrency: int,
    listener: RunListener,
    checks: UploadChecks | None = None,
) -> None:
    """Every set in chunks, concurrently within ``concurrency``; an interrupt stops them."""
    listener.on_total(len(jobs))
    progress = RunProgress(listener, await runtime.orchestrator.progress(len(jobs)))
    one = partial(
        one_set,
        runtime=runtime,
        slots=asyncio.Semaphore(concurrency),
        plan=plan,
        budget=budget,
        progress=progress,
        checks=checks,
    )
    bounds = chunk_bounds(len(jobs))
    chunks = [SetChunk(jobs[start:end], one) for start, end in bounds]
    running = [
        asyncio.ensure_future(
            _submit_once_ready(chunk, f"{start + 1}-{end} of {len(jobs)}", runtime)
        )
        for chunk, (start, end) in zip(chunks, bounds, strict=True)
    ]
    await _until_done_or_interrupted(running, listener, plan)
    await prepared([job.photo for job in jobs])  # an interrupted set's row needs it
    for chunk, future in zip(chunks, running, strict=True):
        error = None if future.cancelled() else future.exception()
        if error is not None and not isinstance(error, SetsToRetry):
            raise error
        for position, job in enumerate(chunk.jobs):
            row = await _final_row(chunk, position, runtime, progress)
            if row is not None:  # None: a duplicate, whose row is its original's
                plan.rows[(job.photo.source, job.template_id)] = row


async def _submit_once_ready(chunk: SetChunk, label: str, runtime: BatchRuntime) -> None:
    """A chunk's task run begins once its first photo is prepared: the run graph shows
    it from when its sets can go, not from the start of the run."""
    first = chunk.jobs[0].photo.preparing
    if first is not None:
        await asyncio.wait([first])  # a wait cancelled leaves the preparation running
    await runtime.orchestrator.submit(chunk, label)


async def _until_done_or_interrupted(
    running: Sequence[asyncio.Future[None]], listener: RunListener, plan: RunPlan
) -> None:
    everything: asyncio.Future[Any] = asyncio.gather(*running, return_exceptions=True)
    interrupted: asyncio.Future[Any] = asyncio.ensure_future(listener.interrupted.wait())
    await asyncio.wait([everything, interrupted], return_when=asyncio.FIRST_COMPLETED)
    if listener.interrupted.is_set():
        plan.stopped = "interrupted"
        for future in running:
            future.cancel()
    interrupted.cancel()
    await asyncio.gather(everything, return_exceptions=True)


async def _final_row(
    chunk: SetChunk, position: int, runtime: BatchRuntime, progress: RunProgress
) -> ManifestRow | None:
    """A set's row: the one its chunk made, else failed (its retries spent) or
    interrupted (its chunk was stopped before it had one)."""
    job = chunk.jobs[position]
    if position in chunk.rows:
        return chunk.rows[position]
    if position not in chunk.errors:
        return interrupted_row(job, runtime)
    row = failed_row(job, runtime, chunk.errors[position])
    await _advance(progress, row, runtime)
    return row


async def _advance(progress: RunProgress, row: ManifestRow, runtime: BatchRuntime) -> None:
    try:
        await progress.advance(row)
    except Exception as exc:  # the progress shown is a nicety, never a reason to fail
        runtime.orchestrator.log.warning("progress not updated: %s", exc)


async def one_set(
    job: SetJob,
    *,
    runtime: BatchRuntime,
    slots: asyncio.Semaphore,
    plan: RunPlan,
    budget: Budget,
    progress: RunProgress,
    checks: UploadChecks | None = None,
) -> ManifestRow | None:
    """Submit (once) and collect one photo+template, holding one of the batch's slots
    (a photo still being prepared is waited for first, without a slot).

    Whatever goes wrong with one set fails that set's row, never the batch; a send that
    may be repeated raises :class:`SendFailed` for its chunk to run again. None: the set
    is a duplicate of another in this batch, whose row it gets at the end.
    """
    early = await _checked_when_prepared(job, runtime, plan, checks)
    if isinstance(early, ManifestRow):
        row = early
    elif early == DUPLICATE:
        row = set_row(job.photo, job.template_id, None, status="skipped", reason=DUPLICATE)
    else:
        async with slots:
            row = await _sent_or_given_way(job, runtime, plan, budget, checks)
    await _advance(progress, row, runtime)
    return None if early == DUPLICATE else row


async def _checked_when_prepared(
    job: SetJob, runtime: BatchRuntime, plan: RunPlan, checks: UploadChecks | None
) -> ManifestRow | str:
    """Planning's upload checks of a set planned before its photo was prepared; once its
    whole chunk is checked (the better of two copies prepared together is then sent)."""
    if not job.unprepared or checks is None:
        return GO_ON
    try:
        early = await when_prepared(job, runtime, plan, checks)
    finally:
        checks.gate.checked(job)
    if early == GO_ON:
        await checks.gate.wait(job)
    return early


async def _sent_or_given_way(
    job: SetJob, runtime: BatchRuntime, plan: RunPlan, budget: Budget, checks: UploadChecks | None
) -> ManifestRow:
    gave_way = checks.looks.begin_sending(job) if job.sending and checks is not None else None
    if gave_way is not None:
        plan.tasks -= 1
        return near_duplicate_row(job.photo, job.template_id, gave_way)
    try:
        return await _submit_and_collect(job, runtime, plan, budget)
    except SendFailed:
        raise
    except Exception as exc:
        return failed_row(job, runtime, exc)


async def _submit_and_collect(
    job: SetJob, runtime: BatchRuntime, plan: RunPlan, budget: Budget
) -> ManifestRow:
    photo, template_id = job.photo, job.template_id
    ledger = runtime.ledger
    if job.sending:
        if plan.stopped is not None:
            reason = f"not submitted: {plan.stopped}"
            return set_row(photo, template_id, None, status="skipped", reason=reason)
        reserved = await budget.reserve(template_id)
        if reserved is None:
            return set_row(photo, template_id, None, status="skipped", reason=budget.refusal())
        try:
            record = await _send_once(job, runtime, budget, reserved)
        except AccountError as exc:
            plan.stopped = plan.account_error = exc.message
            reason = f"not submitted: {exc.message}"
            return set_row(photo, template_id, None, status="skipped", reason=reason)
    else:
        found = await ledger.run(ledger.read, job.paid_as or job.key)
        assert found is not None
        record = found
    if record.state is SubmissionState.SUBMITTED:
        just_sent = (
            job.sending
            and record.key == job.key
            and record.claimed_by_run == runtime.rules.run_id
            and runtime.notify_url is None
        )
        record = (
            await collect(record, record.item or photo.item, runtime, just_sent=just_sent) or record
        )
    return paid_row(photo, template_id, record, job.key)


async def _send_once(
    job: SetJob, runtime: BatchRuntime, budget: Budget, reserved: int
) -> LedgerRecord:
    """The send, with the budget's reservation settled by what it did: a refusal is the
    set's own, anything else is safe to repeat (:class:`SendFailed`)."""
    sent: LedgerRecord | None = None
    try:
        sent = await send_set(job, runtime, reserved, absent=job.fresh and job.paid_as is None)
        sent = await _after_send(job, sent, runtime, reserved)
        return sent
    except HiDreamError:
        raise
    except Exception as exc:
        raise SendFailed(exc) from exc
    finally:
        await budget.settle(job.template_id, reserved, sent, runtime.rules.run_id)


async def send_set(
    job: SetJob, runtime: BatchRuntime, images: int, *, absent: bool = False
) -> LedgerRecord:
    """Submit one photo for one template exactly once (the ledger decides); ``absent``:
    planning found no record for the key (see ``Ledger.claim``); ``images``: what the set
    may cost, reserved from the period budget before it is sent."""
    prepared = job.photo.prepared
    assert runtime.client is not None and prepared is not None
    upload = None
    if not prepared.passes_url(runtime.prepare):  # a URL that passes needs no upload here
        # Only an upload that must be fetched or prepared again is worth a thread's hop.
        upload = upload_on_disk(prepared, runtime.workspace) or await anyio.to_thread.run_sync(
            upload_file, prepared, runtime.workspace, runtime.prepare
        )
    async with runtime.orchestrator.set_slot():
        return await submit_once(
            runtime.client,
            runtime.ledger,
            key=job.key,
            prepared=prepared,
            prepare=runtime.prepare,
            item=job.photo.item,
            template_id=job.template_id,
            rules=runtime.rules,
            upload=upload,
            notify_url=runtime.notify_url.get_secret_value() if runtime.notify_url else None,
            absent=absent,
            budget=runtime.budget,
            images=images,
        )


async def _after_send(
    job: SetJob, record: LedgerRecord, runtime: BatchRuntime, images: int
) -> LedgerRecord:
    """A request the service accepted proves (or disproves) the request_id lookup, once;
    a send whose answer was lost (this run's, or a dead run's found at its claim) is
    resolved by it where it is proven."""
    lookup = runtime.lookup
    if lookup is None or record.key != job.key:
        return record
    if record.state is SubmissionState.SUBMITTED:
        if record.claimed_by_run == runtime.rules.run_id:
            await lookup.accepted(record)
    elif record.state is SubmissionState.UNKNOWN and await lookup.proven_for(runtime.ledger):
        record = await send_set(job, runtime, images)
    return record
