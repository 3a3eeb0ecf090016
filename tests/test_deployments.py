"""Deployments on a real Prefect server: served from prefect.yaml, run by UI-like calls,
by events and, sharded, by two process workers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter
from prefect.client.schemas.objects import FlowRun
from prefect.deployments.flow_runs import arun_deployment

from modelset.deployments.uploads import emit_upload
from modelset.sandbox import SandboxConfig, SandboxServer
from tests.conftest import REPO, TOKEN, hidream_env, make_photo

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(scope="module")
def module_sandbox() -> Iterator[SandboxServer]:
    config = SandboxConfig(port=0, token=TOKEN, latency_ms=0, generation_s=0.5, seed=5)
    with SandboxServer(config) as server:
        yield server


def start_serve(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "modelset", "serve"],
        cwd=REPO,
        env={**os.environ, "PREFECT_RUNNER_POLL_FREQUENCY": "1", **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 90
    while b"Your deployments are being served" not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(log.read_text())
        time.sleep(0.5)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


async def wait_for_run(deployment: str, after: float, within: float = 120) -> FlowRun:
    """The first finished run of ``deployment`` created after ``after`` (epoch seconds)."""
    name = deployment.split("/")[1]
    deadline = time.monotonic() + within
    async with get_client() as client:
        while time.monotonic() < deadline:
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])),
                flow_run_filter=FlowRunFilter(),
            )
            for run in runs:
                if (
                    run.created is not None
                    and run.created.timestamp() >= after
                    and (run.state is not None and run.state.is_final())
                ):
                    return run
            await asyncio.sleep(1)
    raise TimeoutError(f"no finished run of {deployment} within {within} s")


@pytest.fixture(scope="module")
def served(
    module_sandbox: SandboxServer, tmp_path_factory: pytest.TempPathFactory, prefect_server: str
) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("served-out")
    log = out.parent / "serve.log"
    env = hidream_env(module_sandbox, out, HIDREAM_MAX_IMAGES="100")
    process = start_serve({**env, "PREFECT_API_URL": prefect_server}, log)
    yield out
    stop(process)


async def test_manual_deployment_runs_with_form_parameters(
    served: Path, module_sandbox: SandboxServer, tmp_path: Path
) -> None:
    photo = make_photo(tmp_path / "sku-1.jpg")
    run = await arun_deployment(
        "generate-model-sets/manual",
        parameters={
            "sources": [str(photo)],
            "template_ids": [20],
            "options": {"policy": "fix", "concurrency": 2},
        },
        timeout=120,
    )
    assert run.state is not None and run.state.is_completed(), run.state
    assert len(list((served / "sku-1" / "20").glob("*.jpg"))) == 4


async def test_upload_event_starts_a_run_that_completes(
    served: Path, module_sandbox: SandboxServer, tmp_path: Path
) -> None:
    photo = make_photo(tmp_path / "upload.jpg", colour=(10, 200, 10))
    started = time.time()
    await asyncio.to_thread(emit_upload, str(photo), [21], "SKU-42")
    run = await wait_for_run("generate-model-sets/on-upload", started)
    assert run.state is not None and run.state.is_completed(), run.state
    assert len(list((served / "SKU-42" / "21").glob("*.jpg"))) == 4


def test_deployment_forms_carry_descriptions(served: Path) -> None:
    async def schema() -> dict[str, Any]:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("generate-model-sets/manual")
            return deployment.parameter_openapi_schema or {}

    found = asyncio.run(schema())
    properties = found["properties"]
    assert {"sources", "template_ids", "options", "item"} <= set(properties)
    options = found["definitions"]["RunOptions"]["properties"]
    assert options["policy"]["enum"] == ["fix", "strict"]
    assert "description" in options["max_images"]
