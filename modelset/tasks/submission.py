"""Submitting: the stage that spends money, its own task with its own retry rule."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import anyio
from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.concurrency.asyncio import concurrency

from modelset.hidream import HiDreamError
from modelset.ledger import LedgerRecord
from modelset.stages import PreparedPhoto, submit_once, upload_file, upload_on_disk
from modelset.tasks.events import final_state_only
from modelset.tasks.runtime import BatchRuntime


async def retry_unless_refused(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry only what the ledger makes safe: never a refused account or input.

    Async, and awaited by the engine: in Prefect 3 ``state.result()`` called from async
    code returns a coroutine, which never raises, so no submit was ever retried."""
    try:
        await state.aresult()
    except HiDreamError:
        return False
    except Exception:
        return True
    return False


@task(
    name="submit",
    task_run_name="submit {item}/{template_id}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_condition_fn=retry_unless_refused,
)
async def submit_photo(
    key: str,
    prepared: PreparedPhoto,
    item: str,
    template_id: int,
    runtime: BatchRuntime,
    absent: bool = False,
    images: int = 0,
) -> LedgerRecord:
    """Submit one photo for one template exactly once (the ledger decides); ``absent``:
    planning found no record for the key (see ``Ledger.claim``); ``images``: what the set
    may cost, reserved from the period budget before it is sent."""
    assert runtime.client is not None
    upload = None
    if not prepared.passes_url(runtime.prepare):  # a URL that passes needs no upload here
        # Only an upload that must be fetched or prepared again is worth a thread's hop.
        upload = upload_on_disk(prepared, runtime.workspace) or await anyio.to_thread.run_sync(
            upload_file, prepared, runtime.workspace, runtime.prepare
        )
    async with AsyncExitStack() as stack:
        if runtime.concurrency_limit:
            await stack.enter_async_context(concurrency(runtime.concurrency_limit, strict=True))
        return await submit_once(
            runtime.client,
            runtime.ledger,
            key=key,
            prepared=prepared,
            prepare=runtime.prepare,
            item=item,
            template_id=template_id,
            rules=runtime.rules,
            upload=upload,
            notify_url=runtime.notify_url.get_secret_value() if runtime.notify_url else None,
            absent=absent,
            budget=runtime.budget,
            images=images,
        )


final_state_only(submit_photo)
