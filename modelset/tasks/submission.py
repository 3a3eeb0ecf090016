"""Submitting: the stage that spends money, a task run per chunk of sets with its own
retry rule. A retried chunk runs only its sets without a row yet, and the ledger makes
a set already sent a no-op, so a retry never pays twice."""

from __future__ import annotations

from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun

from modelset.batch.orchestration import SUBMIT_RETRY_DELAYS_S, SetChunkRunner
from modelset.hidream import HiDreamError


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
    task_run_name="submit {label}",
    cache_policy=NO_CACHE,
    retries=len(SUBMIT_RETRY_DELAYS_S),
    retry_delay_seconds=list(SUBMIT_RETRY_DELAYS_S),
    retry_condition_fn=retry_unless_refused,
)
async def submit_sets(chunk: SetChunkRunner, label: str) -> None:
    """Submit (exactly once each) and collect a chunk of sets; each set's outcome is its
    row in the report and the results table."""
    await chunk.run()
