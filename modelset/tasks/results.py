"""Awaiting and downloading a set: polling (or a callback's wake-up), then the images."""

from __future__ import annotations

import asyncio

from prefect import task
from prefect.cache_policies import NO_CACHE

from modelset.ledger import LedgerRecord
from modelset.stages import collect_set
from modelset.tasks.runtime import BatchRuntime


@task(name="collect-set", cache_policy=NO_CACHE, tags=["modelset", "hidream-results"])
async def collect_model_set_images(
    record: LedgerRecord, item: str, runtime: BatchRuntime
) -> LedgerRecord:
    """Wait for the task behind ``record`` and download its images under ``item``."""
    assert runtime.client is not None
    assert record.task_id is not None
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
