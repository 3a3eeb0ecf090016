"""What a Prefect user sees of a run: the design card's stages as task runs with names that
say what they carry, Prefect's caching on a rerun, and no task run when nothing is left."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import prefect.task_engine
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import State, TaskRun, TaskRunResult

from modelset.flows.generate import chunk_bounds, generate_model_sets
from modelset.options import RunOptions
from modelset.sandbox import SandboxServer
from tests.conftest import make_photo, wait_until

pytestmark = pytest.mark.usefixtures("prefect_server", "env")

PHOTOS = 20


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    for index in range(PHOTOS):
        make_photo(folder / f"look-{index:02d}.jpg", colour=(index * 12, 80, 160))
    return folder


REPORTED: dict[UUID, set[UUID]] = {}
"""By flow run of :func:`run_reported`: the task runs this process reported finished."""


@contextlib.contextmanager
def reporting() -> Iterator[set[UUID]]:
    """The ids of the task runs that finish within the block. The engine reports each
    one's final state through ``emit_task_run_state_change_event`` (modelset's tasks
    too: modelset.tasks.events routes that name), the event the Prefect server records
    the task run from, a moment later."""
    finished: set[UUID] = set()
    engine: Any = prefect.task_engine
    reports = engine.emit_task_run_state_change_event

    def recording(*, task_run: TaskRun, validated_state: State[Any], **rest: Any) -> Any:
        if validated_state.is_final():
            finished.add(task_run.id)
        return reports(task_run=task_run, validated_state=validated_state, **rest)

    engine.emit_task_run_state_change_event = recording
    try:
        yield finished
    finally:
        engine.emit_task_run_state_change_event = reports


def run_reported(go: Callable[[], Coroutine[Any, Any, State[Any]]]) -> State[Any]:
    """``asyncio.run(go())``, a batch's flow, keeping what it reported for task_runs()."""
    with reporting() as finished:
        state = asyncio.run(go())
    assert state.state_details.flow_run_id is not None
    REPORTED[state.state_details.flow_run_id] = finished
    return state


def run(photos: Path, out: str, template: int) -> State[Any]:
    async def go() -> State[Any]:
        return await generate_model_sets(
            [str(photos)], [template], RunOptions(out=out, concurrency=8), return_state=True
        )

    state = run_reported(go)
    assert state.is_completed(), state.message
    return state


def task_runs(state: State[Any]) -> list[TaskRun]:
    """The task runs of the flow run (one of :func:`run_reported`), once the server has
    recorded, final, each one this process reported finished: it records them from
    events, a moment later. A task run made otherwise (through the API) shows at once."""
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    reported = REPORTED[flow_run_id]

    async def read() -> list[TaskRun]:
        async with get_client() as client:
            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                limit=200,
            )

    runs: list[TaskRun] = []

    def missing() -> set[UUID]:
        return reported - {r.id for r in runs if r.state is not None and r.state.is_final()}

    def recorded() -> bool:
        nonlocal runs
        runs = asyncio.run(read())
        return not missing()

    wait_until(recorded, every=0.5, what=lambda: f"{len(missing())} task runs not recorded")
    return runs


def test_the_stages_show_as_named_task_runs(photos: Path, tmp_path: Path) -> None:
    runs = task_runs(run(photos, str(tmp_path / "out"), 20))
    names = Counter(r.name for r in runs)
    # Chunks of 4 photos, 8, then 16: the first set is sent after four photos, not 16.
    for stage in ("fetch", "validate", "prepare"):
        for start, end in ((1, 4), (5, 12), (13, 20)):
            assert names[f"{stage} {start}-{end} of {PHOTOS}"] == 1, names
    submits = [name for name in names if name.startswith("submit ")]
    assert sorted(submits) == sorted(f"submit look-{i:02d}/20" for i in range(PHOTOS))
    assert len(runs) / PHOTOS <= 1.5, f"{len(runs)} task runs for {PHOTOS} photos"
    # The graph draws no edge between sets: one submit never feeds another (20 sets at
    # concurrency 8, so later submits start after earlier ones returned).
    submit_ids = {str(r.id) for r in runs if r.name.startswith("submit ")}
    for submit in (r for r in runs if r.name.startswith("submit ")):
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
    assert len([r for r in again if r.name.endswith("/21")]) == PHOTOS
    assert len(sandbox.submissions()) == 2 * PHOTOS

    finished = run(photos, out, 21)
    flow_run_id = finished.state_details.flow_run_id
    assert flow_run_id is not None and REPORTED[flow_run_id] == set(), "task runs were made"
    assert task_runs(finished) == []
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
