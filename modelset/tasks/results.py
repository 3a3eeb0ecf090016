"""Awaiting and downloading a set: polling (or a callback's wake-up), then the images."""

from __future__ import annotations

import asyncio

from prefect import task
from prefect.cache_policies import NO_CACHE

from modelset.ledger import LedgerRecord, SubmissionState
from modelset.stages import collect_set
from modelset.tasks.runtime import BatchRuntime


@task(name="collect-set", cache_policy=NO_CACHE, tags=["modelset", "hidream-results"])
async def collect_model_set_images(
    record: LedgerRecord, item: str, runtime: BatchRuntime, *, wait_for_others: bool = True
) -> LedgerRecord | None:
    """Wait for the task behind ``record`` and download its images under ``item``.

    One collector per set: with ``wait_for_others`` False (the callback flow), a set some
    batch is already collecting is left to it and None is returned.
    """
    assert runtime.client is not None
    assert record.task_id is not None
    async with runtime.ledger.collecting(record.key, wait=wait_for_others) as held:
        if not held:
            return None
        current = runtime.ledger.read(record.key) or record
        if current.state is SubmissionState.FINISHED and current.task_id == record.task_id:
            return current  # another collector finished it meanwhile
        wake = runtime.wakeups.setdefault(record.task_id, asyncio.Event())
        try:
            return await collect_set(
                runtime.client,
                runtime.downloads,
                runtime.ledger,
                record,
                workspace=runtime.workspace,
                item=item,
                deadline_s=runtime.deadline_s,
                wake=wake,
            )
        finally:
            runtime.wakeups.pop(record.task_id, None)
