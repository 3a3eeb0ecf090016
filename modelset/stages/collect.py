"""The collect stage: wait for a submitted set, one collector per set, and record how it
ended once its images are downloaded."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import httpx

from modelset.budget import PeriodBudget
from modelset.hidream import DeadlineExceeded, HiDreamClient, HiDreamError, TaskResult, TaskStatus
from modelset.labels import Labelling
from modelset.ledger import Ledger, LedgerRecord, SubmissionState
from modelset.report import Status
from modelset.stages.download import SetLabels, download_set
from modelset.stages.workspace import Workspace


async def collect_once(
    client: HiDreamClient,
    downloads: httpx.AsyncClient,
    ledger: Ledger,
    record: LedgerRecord,
    *,
    workspace: Workspace,
    labelling: Labelling,
    item: str,
    deadline_s: float | None = None,
    wakeups: dict[str, asyncio.Event] | None = None,
    wait_for_others: bool = True,
    just_sent: bool = False,
    budget: PeriodBudget | None = None,
) -> LedgerRecord | None:
    """Collect a submitted set, one collector per set.

    A batch holds the set's collection lock while it waits; with ``wait_for_others``
    False (the callback collector), a set someone is already collecting is left to them
    and None is returned. ``wakeups`` gets an event per waited task, for callbacks to set.

    ``just_sent``: this process has just submitted the set, without a callback, so no
    callback collector will come for it and no other collector has seen it finished: no
    lock is taken and the record is not read again (on a bucket, three requests fewer).
    Another run collecting it too at worst downloads the same images.
    """
    assert record.task_id is not None
    async with (
        contextlib.nullcontext(True)
        if just_sent
        else ledger.collecting(record.key, wait=wait_for_others)
    ) as held:
        if not held:
            return None
        if not just_sent:
            current = await ledger.run(ledger.read, record.key) or record
            if current.state is SubmissionState.FINISHED and current.task_id == record.task_id:
                return current  # another collector finished it meanwhile
        waiting = wakeups if wakeups is not None else {}
        wake = waiting.setdefault(record.task_id, asyncio.Event())
        try:
            return await collect_set(
                client,
                downloads,
                ledger,
                record,
                workspace=workspace,
                labelling=labelling,
                item=item,
                deadline_s=deadline_s,
                wake=wake,
                budget=budget,
            )
        finally:
            waiting.pop(record.task_id, None)


async def collect_set(
    client: HiDreamClient,
    downloads: httpx.AsyncClient,
    ledger: Ledger,
    record: LedgerRecord,
    *,
    workspace: Workspace,
    labelling: Labelling,
    item: str,
    deadline_s: float | None = None,
    wake: asyncio.Event | None = None,
    budget: PeriodBudget | None = None,
) -> LedgerRecord:
    """Wait for a submitted set and download it into ``<out>/<item>/<template_id>/``,
    labelled by ``labelling``; the period ``budget`` it was spent under gets back what the
    service did not generate."""
    assert record.task_id is not None
    try:
        result = await client.wait_for_result(record.task_id, deadline_s, wake=wake)
    except DeadlineExceeded as exc:
        return record.model_copy(
            update={"reason": f"{exc.message}; a rerun resumes waiting (nothing is resent)"}
        )
    except HiDreamError as exc:
        return record.model_copy(
            update={"reason": f"could not learn the result ({exc.message}); a rerun resumes"}
        )
    folder = f"{item}/{record.template_id}"
    labels = SetLabels(labelling, record.request_id, record.template_id, record.source_sha256)
    outputs, problems = await download_set(
        client, downloads, result, record.task_id, workspace, folder, labels
    )
    outcome, reason = _judge(result, problems)
    update: dict[str, object] = {
        "outcome": outcome.value,
        "reason": reason,
        "outputs": outputs,
        # A set whose images could not all be downloaded stays open: the next run
        # downloads again instead of paying again.
        "state": SubmissionState.SUBMITTED if problems else SubmissionState.FINISHED,
    }
    if problems:
        update["reason"] = f"{reason}; a rerun downloads them again"
    finished = await ledger.finish(record.model_copy(update=update))
    finished_here = True  # only the collector that finishes the set refunds its budget
    if finished is None:
        async with ledger.claim(record.key) as claim:
            if claim.record is not None and claim.record.task_id != record.task_id:
                # A newer attempt (--refresh, --retry-failed) owns the key now.
                return record.model_copy(update=update)
            current = claim.record
            finished_here = current is None or current.state is not SubmissionState.FINISHED
            finished = await claim.write(record.model_copy(update=update))
    if budget is not None and record.budget_period and not problems and finished_here:
        await budget.refund(record.budget_period, record.images_paid - len(result.image_urls))
    return finished


def _judge(result: TaskResult, problems: list[str]) -> tuple[Status, str | None]:
    statuses = [sub.task_status for sub in result.sub_task_results]
    counted = Counter(result.failure_reasons() + problems)
    if not counted:
        return Status.SUCCEEDED, None
    reasons = "; ".join(
        reason if count == 1 else f"{reason} (x{count})" for reason, count in counted.items()
    )
    if statuses and all(status is TaskStatus.REJECTED for status in statuses):
        return Status.REJECTED, reasons
    done = len(result.image_urls) - len(problems)
    return Status.FAILED, f"{done} of {len(statuses)} images generated ({reasons})"
