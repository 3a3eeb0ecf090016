"""The submit task's retry rule, run by Prefect's own async engine: a failure the ledger
makes safe to repeat (the output location failing, say) is retried; a refused account
or input never is. (In Prefect 3 a synchronous rule that calls ``state.result()`` gets a
coroutine back inside an async flow, never raises, and so never retried anything.)"""

from __future__ import annotations

import asyncio

import pytest
from prefect import flow, task
from prefect.client.schemas.objects import State

from modelset.hidream import NoCredits, RequestRejected
from modelset.storage import StoreUnavailable
from modelset.tasks.submission import retry_unless_refused

pytestmark = pytest.mark.usefixtures("prefect_server")


def attempts_until_done(first_failure: Exception) -> tuple[int, bool]:
    """How many times a task with the submit task's rule ran when its first attempt
    raised ``first_failure`` (later ones succeed), and whether it ended completed."""
    calls: list[int] = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_unless_refused)
    async def submit() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise first_failure
        return "sent"

    @flow
    async def batch() -> bool:
        state: State[str] = await submit(return_state=True)  # type: ignore[misc]
        return bool(state.is_completed())

    completed = asyncio.run(batch())
    return len(calls), bool(completed)


def test_a_failing_output_location_is_retried() -> None:
    assert attempts_until_done(StoreUnavailable("s3://b/out: 503 SlowDown")) == (2, True)


def test_an_unexpected_error_is_retried() -> None:
    assert attempts_until_done(RuntimeError("connection reset")) == (2, True)


@pytest.mark.parametrize(
    "refusal", [NoCredits("no credits left"), RequestRejected("image is not 3:4")]
)
def test_a_refused_account_or_input_is_not_retried(refusal: Exception) -> None:
    assert attempts_until_done(refusal) == (1, False)
