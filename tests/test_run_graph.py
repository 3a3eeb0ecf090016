"""What a Prefect user sees of a run: the design card's stages as task runs with names that
say what they carry, Prefect's caching on a rerun, and no task run when nothing is left."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import State, TaskRun, TaskRunResult

from modelset.batch import chunk_bounds
from modelset.flows.generate import generate_model_sets
from modelset.options import RunOptions
from modelset.sandbox import SandboxServer
from tests.conftest import events_caught_up, make_photo, wait_until

pytestmark = pytest.mark.usefixtures("prefect_server", "env")

PHOTOS = 20


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    for index in range(PHOTOS):
        make_photo(folder / f"look-{index:02d}.jpg", colour=(index * 12, 80, 160))
    return folder


def run(photos: Path, out: str, template: int) -> State[Any]:
    async def go() -> State[Any]:
        return await generate_model_sets(
            [str(photos)], [template], RunOptions(out=out, concurrency=8), return_state=True
        )

    state = asyncio.run(go())
    assert state.is_completed(), state.message
    return state


EXPECTED = 4 * len(chunk_bounds(PHOTOS)) + 1  # fetch, validate, prepare, submit; catalogue


def task_runs(state: State[Any], expected: int = EXPECTED) -> list[TaskRun]:
    """The flow run's task runs, once the server has recorded ``expected`` of them, all
    final: first every event this process sent is stored (the task runs' states among
    them), then the server records the task runs from them, a moment later."""
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    asyncio.run(events_caught_up())

    async def read() -> list[TaskRun]:
        async with get_client() as client:
            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                limit=200,
            )

    runs: list[TaskRun] = []

    def recorded() -> bool:
        nonlocal runs
        runs = asyncio.run(read())
        return len(runs) >= expected and all(r.state and r.state.is_final() for r in runs)

    wait_until(recorded, every=0.5, what=lambda: f"{len(runs)} of {expected} task runs recorded")
    return runs


def test_the_stages_show_as_named_task_runs(photos: Path, tmp_path: Path) -> None:
    runs = task_runs(run(photos, str(tmp_path / "out"), 20))
    names = Counter(r.name for r in runs)
    # Chunks of 4 photos, then 16: the first set is sent after four photos, not twenty.
    for stage in ("fetch", "validate", "prepare", "submit"):
        for start, end in ((1, 4), (5, 20)):
            assert names[f"{stage} {start}-{end} of {PHOTOS}"] == 1, names
    assert sum(1 for r in runs if r.name.startswith("submit ")) == 2, names
    assert len(runs) / PHOTOS <= 0.5, f"{len(runs)} task runs for {PHOTOS} photos"
    # The graph draws no edge between chunks of sets: one submit never feeds another.
    submits = [r for r in runs if r.name.startswith("submit ")]
    submit_ids = {str(r.id) for r in submits}
    for submit in submits:
        upstream = {
            str(i.id)
            for inputs in submit.task_inputs.values()
            for i in inputs
            if isinstance(i, TaskRunResult)
        }
        assert not upstream & submit_ids, f"{submit.name} is drawn as fed by other submits"


def test_a_rerun_with_another_template_is_cached_and_a_finished_one_makes_none(
    photos: Path, tmp_path: Path, sandbox: SandboxServer
) -> None:
    out = str(tmp_path / "out")
    run(photos, out, 20)
    again = task_runs(run(photos, out, 21))
    stages = [r for r in again if r.name.split(" ")[0] in ("fetch", "validate", "prepare")]
    assert len(stages) == 3 * len(chunk_bounds(PHOTOS))
    assert {r.state.name for r in stages if r.state} == {"Cached"}, [
        (r.name, r.state.name if r.state else None) for r in stages
    ]
    assert len([r for r in again if r.name.startswith("submit ")]) == len(chunk_bounds(PHOTOS))
    assert len(sandbox.submissions()) == 2 * PHOTOS

    assert task_runs(run(photos, out, 21), expected=0) == []
    assert len(sandbox.submissions()) == 2 * PHOTOS


def test_the_cache_holds_in_a_bucket_for_another_machine(
    photos: Path, tmp_path: Path, bucket: str, sandbox: SandboxServer
) -> None:
    """A cached stage result names keys of the bucket, never a path of the machine that
    made it: a run with an empty scratch folder sends from it without preparing again."""
    run(photos, bucket, 20)
    again = task_runs(run(photos, bucket, 21))
    prepared = [r for r in again if r.name.startswith("prepare ")]
    assert {r.state.name for r in prepared if r.state} == {"Cached"}
    assert len(sandbox.submissions()) == 2 * PHOTOS
    accepted = {s["sha256"] for s in sandbox.submissions() if s["template_id"] == 21}
    assert accepted == {s["sha256"] for s in sandbox.submissions() if s["template_id"] == 20}
