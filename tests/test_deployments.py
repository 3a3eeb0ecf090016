"""Deployments on a real Prefect server: served from prefect.yaml, run by UI-like calls
and by events; prefect.yaml's module entrypoints and its working-directory pull step.
(Process workers: tests/test_workers.py.)"""

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
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter
from prefect.client.schemas.objects import FlowRun
from prefect.deployments.flow_runs import arun_deployment
from prefect.flows import Flow, load_flow_from_entrypoint

from modelset import UsageError
from modelset.deployments.serve import PREFECT_YAML, load_deployments
from modelset.deployments.steps import set_working_directory
from modelset.deployments.uploads import emit_upload
from modelset.flows.generate import WORKING_DIRECTORY_SET
from modelset.sandbox import SandboxConfig, SandboxServer
from tests.conftest import TOKEN, hidream_env, make_photo


@pytest.fixture(scope="module")
def module_sandbox() -> Iterator[SandboxServer]:
    config = SandboxConfig(port=0, token=TOKEN, latency_ms=0, generation_s=0.5, seed=5)
    with SandboxServer(config) as server:
        yield server


def start_serve(env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """``modelset serve`` in ``cwd`` (default: the log's folder, not the repository: the
    module entrypoints import the installed package from anywhere)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "modelset", "serve"],
        cwd=cwd or log.parent,
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
def serve_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder ``modelset serve`` runs in (empty but for its log)."""
    return tmp_path_factory.mktemp("serve-folder")


@pytest.fixture(scope="module")
def served(
    module_sandbox: SandboxServer, serve_folder: Path, prefect_server: str
) -> Iterator[Path]:
    out = serve_folder.parent / "served-out"
    # No HIDREAM_MAX_IMAGES: the unattended deployments run under the caps they ship with.
    env = hidream_env(module_sandbox, out)
    process = start_serve({**env, "PREFECT_API_URL": prefect_server}, serve_folder / "serve.log")
    yield out
    stop(process)


# -- prefect.yaml ------------------------------------------------------------------------


def test_prefect_yaml_names_its_flows_by_module_path() -> None:
    spec = yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))
    entrypoints = {entry["name"]: entry["entrypoint"] for entry in spec["deployments"]}

    assert entrypoints == {
        "manual": "modelset.flows.generate:generate_model_sets",
        "on-upload": "modelset.flows.generate:generate_model_sets",
        "nightly": "modelset.flows.inbox:scan_inbox",
        "on-callback": "modelset.flows.collect:collect_model_set",
    }
    for entrypoint in entrypoints.values():
        assert isinstance(load_flow_from_entrypoint(entrypoint), Flow)
    assert spec["pull"] == [{"modelset.deployments.steps.set_working_directory": {}}]
    [callback] = next(e for e in spec["deployments"] if e["name"] == "on-callback")["triggers"]
    assert callback["parameters"] == {
        "task_id": "{{ event.payload.task_id }}",
        "out": "{{ event.payload.out }}",
        "request_id": "{{ event.payload.request_id }}",
    }


def test_unattended_deployments_ship_with_a_cap() -> None:
    spec = yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))
    options = {
        entry["name"]: entry.get("parameters", {}).get("options") for entry in spec["deployments"]
    }
    assert options["on-upload"] == {"max_images": 40}
    assert options["nightly"] == {"max_images": 400}


def test_served_deployments_name_their_flows_by_module_path() -> None:
    entrypoints = {d.name: d.entrypoint for d in load_deployments()}

    assert entrypoints["manual"] == "modelset.flows.generate.generate_model_sets"
    assert entrypoints["on-callback"] == "modelset.flows.collect.collect_model_set"


@pytest.fixture
def own_directory(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The pull step changes the process's working directory and environment: undo it."""
    monkeypatch.delenv(WORKING_DIRECTORY_SET, raising=False)
    before = Path.cwd()
    yield
    os.chdir(before)


@pytest.mark.usefixtures("own_directory")
def test_the_pull_step_leaves_a_run_where_it_is_unless_a_folder_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    assert set_working_directory() == {}
    assert Path.cwd() == tmp_path
    assert WORKING_DIRECTORY_SET not in os.environ


@pytest.mark.usefixtures("own_directory")
def test_the_pull_step_moves_a_run_to_the_named_folder_and_tells_the_flow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "srv" / "modelset"
    monkeypatch.setenv(WORKING_DIRECTORY_SET, str(folder))

    assert set_working_directory() == {"directory": str(folder)}
    assert Path.cwd() == folder
    assert os.environ[WORKING_DIRECTORY_SET] == str(folder)

    other = tmp_path / "given"
    assert set_working_directory(str(other)) == {"directory": str(other)}
    assert os.environ[WORKING_DIRECTORY_SET] == str(other)


@pytest.mark.usefixtures("own_directory")
def test_the_pull_step_refuses_a_relative_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKING_DIRECTORY_SET, "1")

    with pytest.raises(UsageError, match=f"{WORKING_DIRECTORY_SET} is the relative folder '1'"):
        set_working_directory()


# -- served ------------------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_server")
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


@pytest.mark.usefixtures("prefect_server")
async def test_a_served_run_keeps_a_relative_output_in_serves_folder(
    served: Path, serve_folder: Path, tmp_path: Path
) -> None:
    photo = make_photo(tmp_path / "sku-rel.jpg", colour=(90, 90, 200))
    run = await arun_deployment(
        "generate-model-sets/manual",
        parameters={"sources": [str(photo)], "template_ids": [20], "options": {"out": "rel"}},
        timeout=120,
    )
    assert run.state is not None and run.state.is_completed(), run.state
    assert len(list((serve_folder / "rel" / "sku-rel" / "20").glob("*.jpg"))) == 4


@pytest.mark.usefixtures("prefect_server")
async def test_upload_event_starts_a_run_that_completes(
    served: Path, module_sandbox: SandboxServer, tmp_path: Path
) -> None:
    photo = make_photo(tmp_path / "upload.jpg", colour=(10, 200, 10))
    started = time.time()
    await asyncio.to_thread(emit_upload, str(photo), [21], "SKU-42")
    run = await wait_for_run("generate-model-sets/on-upload", started)
    assert run.state is not None and run.state.is_completed(), run.state
    assert len(list((served / "SKU-42" / "21").glob("*.jpg"))) == 4


@pytest.mark.usefixtures("prefect_server")
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
    near = options["allow_near_duplicates"]
    assert near["default"] is False and "near-duplicate" in near["description"]
