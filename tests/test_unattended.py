"""Runs started by an event (or a schedule) refuse to spend without a cap.

The shipped deployments carry one in their form defaults; this is what happens to a run
whose cap someone removed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import DeploymentUpdate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.client.schemas.objects import FlowRun
from prefect.events import Event
from prefect.events.clients import PrefectEventsClient

from modelset.deployments.uploads import emit_upload, upload_event
from modelset.sandbox import SandboxServer
from tests.conftest import SandboxFactory, hidream_env, make_photo
from tests.test_deployments import start_serve, stop, wait_for_run

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_an_event_run_without_a_cap_refuses_to_submit(
    sandbox: SandboxServer, tmp_path: Path, prefect_server: str
) -> None:
    out = tmp_path / "out"
    env = hidream_env(sandbox, out)
    env.pop("HIDREAM_MAX_IMAGES", None)
    process = start_serve({**env, "PREFECT_API_URL": prefect_server}, tmp_path / "serve.log")
    try:
        asyncio.run(remove_the_cap("generate-model-sets/on-upload"))
        photo = make_photo(tmp_path / "uncapped.jpg", colour=(250, 250, 10))
        before = len(sandbox.submissions())
        started = time.time()
        emit_upload(str(photo), [20], "uncapped")
        run = asyncio.run(wait_for_run("generate-model-sets/on-upload", started))
    finally:
        stop(process)
    assert run.state is not None and run.state.is_failed()
    assert "cap" in (run.state.message or "")
    assert len(sandbox.submissions()) == before


async def remove_the_cap(name: str) -> None:
    """What a person does in the UI: edit the deployment's default options to drop it."""
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(name)
        parameters = {**deployment.parameters, "options": {}}
        await client.update_deployment(deployment.id, DeploymentUpdate(parameters=parameters))


BURST = 50
BUDGET = 40


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_burst_of_uploads_pays_exactly_the_budget_across_their_runs(
    sandbox_factory: SandboxFactory, tmp_path: Path, prefect_postgres_server: str
) -> None:
    """A supplier drops 50 photos at once: 50 upload events, 50 runs of on-upload, each
    within its own cap of 40 images. The budget across runs (40 images a day) lets ten
    sets of four be paid, in all; the other runs say why they sent nothing."""
    sandbox = sandbox_factory(generation_s=0.2, images_per_set=4)
    out = tmp_path / "out"
    env = hidream_env(sandbox, out, HIDREAM_BUDGET_IMAGES=str(BUDGET))
    photos = [
        make_photo(tmp_path / "drop" / f"u{n:02d}.jpg", colour=(n * 5, 255 - n * 4, n * 3 % 256))
        for n in range(BURST)
    ]
    # Fifty runs at once are what a production server on PostgreSQL is for (SQLite
    # answered some of their API calls 503, "database is locked").
    api = prefect_postgres_server
    process = start_serve({**env, "PREFECT_API_URL": api}, tmp_path / "serve.log")
    try:
        started = time.time()
        # The server's trigger service picks a served deployment's trigger up a moment
        # after serve() registers it: the first upload waits for its run, then the burst.
        asyncio.run(announce(api, photos[:1]))
        asyncio.run(finished_runs(api, "on-upload", started, 1, final=False))
        asyncio.run(announce(api, photos[1:]))
        runs = asyncio.run(finished_runs(api, "on-upload", started, BURST))
    finally:
        stop(process)
    assert len(runs) == BURST
    assert len(sandbox.submissions()) * 4 == BUDGET, "the budget was not spent exactly"
    refused = [run.state for run in runs if run.state is not None and run.state.is_failed()]
    assert len(refused) == BURST - BUDGET // 4
    for state in refused:
        assert "budget of 40 images per day spent; resets" in (state.message or "")


async def announce(api: str, photos: list[Path]) -> None:
    """What ``modelset notify-upload`` sends, for each photo, to the server at ``api``."""
    async with PrefectEventsClient(api_url=api) as events:
        for photo in photos:
            await events.emit(Event(**upload_event(str(photo), [20], photo.stem)))


async def finished_runs(
    api: str, deployment: str, after: float, count: int, within: float = 420, *, final: bool = True
) -> list[FlowRun]:
    """The runs of ``deployment`` on the server at ``api`` created after ``after``, once
    ``count`` are final (or, with ``final`` False, once ``count`` exist)."""
    deadline = time.monotonic() + within
    async with PrefectClient(api=api) as client:
        while True:
            runs = [
                run
                for run in await client.read_flow_runs(
                    deployment_filter=DeploymentFilter(
                        name=DeploymentFilterName(any_=[deployment])
                    ),
                    limit=200,
                )
                if run.created is not None and run.created.timestamp() >= after
            ]
            done = [run for run in runs if run.state is not None and run.state.is_final()]
            if not final and len(runs) >= count:
                return runs
            if len(done) >= count or time.monotonic() > deadline:
                return done
            await asyncio.sleep(2)
