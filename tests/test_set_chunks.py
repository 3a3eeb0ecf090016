"""A chunk of sets run again (by Prefect's retry of its submit task run, or by the
in-process orchestrator) runs only the sets without a row yet: a set sent is never sent
again by a retry, and a set whose send failed safely is sent on the next attempt."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from modelset.batch import SetsToRetry
from modelset.batch import orchestration as orchestration_module
from modelset.batch.jobs import SetJob
from modelset.batch.orchestration import run_with_retries
from modelset.batch.photos import Photo
from modelset.batch.sets import SendFailed, SetChunk
from modelset.report import ManifestRow, Status
from modelset.storage import StoreUnavailable


def jobs(*items: str) -> list[SetJob]:
    return [
        SetJob(Photo(f"/in/{item}.jpg", item, [20]), 20, f"key-{item}", sending=True)
        for item in items
    ]


class Sends:
    """Runs each set by recording its send; a set named in ``failing`` fails that many
    times first, as a send whose ledger write the output location refused."""

    def __init__(self, **failing: int) -> None:
        self.failing = Counter(failing)
        self.sent: Counter[str] = Counter()

    async def __call__(self, job: SetJob) -> ManifestRow:
        item = job.photo.item
        self.sent[item] += 1
        if self.failing[item]:
            self.failing[item] -= 1
            raise SendFailed(StoreUnavailable("s3://b/out: 503 SlowDown"))
        return ManifestRow(
            source=job.photo.source, item=item, template_id=20, status=Status.SUCCEEDED
        )


@pytest.fixture
def no_delays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(orchestration_module, "SUBMIT_RETRY_DELAYS_S", (0.0, 0.0))


@pytest.mark.usefixtures("no_delays")
def test_a_retried_chunk_runs_only_the_sets_that_failed() -> None:
    sends = Sends(b=1)
    chunk = SetChunk(jobs("a", "b", "c"), sends)
    asyncio.run(run_with_retries(chunk))
    assert sends.sent == {"a": 1, "b": 2, "c": 1}
    assert [row.item for row in chunk.rows.values() if row] == ["a", "c", "b"]
    assert chunk.errors == {}


@pytest.mark.usefixtures("no_delays")
def test_a_chunk_whose_retries_are_spent_says_which_sets_failed() -> None:
    sends = Sends(b=5)
    chunk = SetChunk(jobs("a", "b", "c"), sends)
    with pytest.raises(SetsToRetry, match="1 set"):
        asyncio.run(run_with_retries(chunk))
    assert sends.sent == {"a": 1, "b": 3, "c": 1}, "three runs: the first and two retries"
    assert set(chunk.rows) == {0, 2}
    assert isinstance(chunk.errors[1], StoreUnavailable)


@pytest.mark.usefixtures("prefect_server")
def test_prefect_retries_a_submit_chunk_and_a_set_sent_is_not_sent_again() -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.objects import State

    from modelset.tasks.orchestration import PrefectOrchestration

    sends = Sends(b=1)
    chunk = SetChunk(jobs("a", "b", "c"), sends)

    @flow
    async def batch() -> None:
        await PrefectOrchestration().submit(chunk, "1-3 of 3")

    async def run() -> State[None]:
        return await batch(return_state=True)

    state = asyncio.run(run())
    assert state.is_completed(), state.message
    assert sends.sent == {"a": 1, "b": 2, "c": 1}

    async def submit_run_counts() -> list[int]:
        """The chunk's task run's run count, once the server has its final state."""
        async with get_client() as client:
            for _ in range(60):
                runs = await client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
                )
                if runs and all(r.state and r.state.is_final() for r in runs):
                    return [r.run_count for r in runs if r.name == "submit 1-3 of 3"]
                await asyncio.sleep(0.5)
        raise AssertionError("the server never recorded the chunk's final state")

    flow_run_id = state.state_details.flow_run_id
    assert asyncio.run(submit_run_counts()) == [2]
