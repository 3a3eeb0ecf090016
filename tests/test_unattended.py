"""Runs started by an event (or a schedule) refuse to spend without a cap.

The shipped deployments carry one in their form defaults; this is what happens to a run
whose cap someone removed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentUpdate

from modelset.deployments.uploads import emit_upload
from modelset.sandbox import SandboxServer
from tests.conftest import hidream_env, make_photo
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
