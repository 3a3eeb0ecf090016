"""What the Prefect server records of a batch's task runs: by default each from its final
state alone (one event, not three: docs/performance.md), every state with
HIDREAM_TASK_RUN_EVENTS=all; either way the run graph shows every stage and submit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State, StateType

from modelset.flows.generate import generate_model_sets
from modelset.options import RunOptions
from tests.conftest import make_photo
from tests.test_reliability import prefect_run_logs
from tests.test_run_graph import run_reported, task_runs

pytestmark = pytest.mark.usefixtures("prefect_server", "env")

PHOTOS = 3


def run(tmp_path: Path) -> State[Any]:
    folder = tmp_path / "in"
    for index in range(PHOTOS):
        make_photo(folder / f"look-{index}.jpg", colour=(index * 40, 90, 150))

    async def go() -> State[Any]:
        return await generate_model_sets(
            [str(folder)], [20], RunOptions(out=str(tmp_path / "out")), return_state=True
        )

    state = run_reported(go)
    assert state.is_completed(), state.message
    return state


def state_types(task_run_ids: list[Any]) -> list[list[StateType]]:
    async def read() -> list[list[StateType]]:
        async with get_client() as client:
            return [
                [s.type for s in await client.read_task_run_states(task_run_id)]
                for task_run_id in task_run_ids
            ]

    return asyncio.run(read())


def test_task_runs_are_recorded_from_their_final_state(tmp_path: Path) -> None:
    runs = task_runs(run(tmp_path))
    names = sorted(r.name for r in runs)
    assert [n for n in names if n.startswith("submit ")] == [
        f"submit look-{i}/20" for i in range(PHOTOS)
    ]
    assert {"fetch 1-3 of 3", "validate 1-3 of 3", "prepare 1-3 of 3"} <= set(names)
    for task_run in runs:
        assert task_run.state is not None and task_run.state.is_completed()
        assert task_run.start_time is not None and task_run.end_time is not None
    ours = [r.id for r in runs if not r.name.startswith("template-catalogue")]
    assert state_types(ours) == [[StateType.COMPLETED]] * len(ours)


def finished_lines(state: State[Any]) -> list[str]:
    flow_run_id = state.state_details.flow_run_id
    lines = prefect_run_logs([str(flow_run_id)]).splitlines()
    # The flow run's own line carries its message: "Completed('all 3 succeeded; ...')".
    return [line.split("(")[0] for line in lines if line.startswith("Finished in state")]


def test_completed_task_runs_of_a_batch_log_no_routine_line(tmp_path: Path) -> None:
    # The flow run's line and the template catalogue's (not one of the batch's stage or
    # submit tasks) are still sent: only the batch's own 3 + 3 lines are left out.
    assert finished_lines(run(tmp_path)) == ["Finished in state Completed"] * 2


def test_every_state_reaches_the_server_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HIDREAM_TASK_RUN_EVENTS", "all")
    runs = task_runs(run(tmp_path))
    submits = [r.id for r in runs if r.name.startswith("submit ")]
    assert len(submits) == PHOTOS
    for types in state_types(submits):
        assert types == [StateType.PENDING, StateType.RUNNING, StateType.COMPLETED]


def test_every_completion_line_is_logged_when_every_state_is_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HIDREAM_TASK_RUN_EVENTS", "all")
    lines = finished_lines(run(tmp_path))
    assert lines == ["Finished in state Completed"] * (2 + PHOTOS + 3)
