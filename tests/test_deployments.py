"""Deployments on a real Prefect server: served from prefect.yaml, run by UI-like calls
and by events; prefect.yaml's module entrypoints and its working-directory pull step; the
same deployments on a Docker pool (deployments/docker/prefect.yaml), and a Kubernetes
pool's base job template, built into a job offline. (Process workers:
tests/test_workers.py; containers: tests/test_containers.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
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
from tests.conftest import REPO, TOKEN, hidream_env, make_photo

DOCKER_YAML = REPO / "deployments" / "docker" / "prefect.yaml"
KUBERNETES_TEMPLATE = REPO / "deployments" / "kubernetes" / "base-job-template.json"
TOKEN_BLOCK = {"HIDREAM_API_TOKEN_BLOCK": "hidream-api-token"}


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


# -- the same deployments on container pools ------------------------------------------------


def made_image() -> str:
    """The image `make image` builds (the Makefile's IMAGE)."""
    found = re.search(r"^IMAGE \?= (\S+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert found is not None
    return found.group(1)


def test_the_docker_deployments_are_prefect_yamls_on_a_docker_pool() -> None:
    process = yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))
    docker = yaml.safe_load(DOCKER_YAML.read_text(encoding="utf-8"))

    def without_pools(spec: dict[str, Any]) -> list[dict[str, Any]]:
        return [{k: v for k, v in d.items() if k != "work_pool"} for d in spec["deployments"]]

    assert without_pools(docker) == without_pools(process)
    assert docker["pull"] == process["pull"]
    pools = [entry["work_pool"] for entry in docker["deployments"]]
    assert all(pool == pools[0] for pool in pools)
    assert pools[0]["name"] == "modelset-docker"
    variables = pools[0]["job_variables"]
    assert variables["image"] == made_image()
    assert variables["network_mode"] == "host"
    assert variables["auto_remove"] is True
    assert variables["env"].items() >= TOKEN_BLOCK.items()
    assert not any("TOKEN" in name and name not in TOKEN_BLOCK for name in variables["env"])


async def kubernetes_job(values: dict[str, Any], flow_run: FlowRun) -> dict[str, Any]:
    """The job the Kubernetes worker would create for ``flow_run`` from the shipped base
    job template (as a pool on the session's server holds it) and ``values``: built as
    prefect-kubernetes' own tests build theirs, with no cluster."""
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads(KUBERNETES_TEMPLATE.read_text(encoding="utf-8"))
    async with get_client() as client:
        # The server checks the template as `prefect work-pool create --base-job-template`.
        pool = await client.create_work_pool(
            WorkPoolCreate(
                name=f"modelset-kubernetes-{uuid.uuid4().hex[:8]}",
                type="kubernetes",
                base_job_template=template,
            )
        )
    configuration = await KubernetesWorkerJobConfiguration.from_template_and_values(
        pool.base_job_template, values
    )
    configuration.prepare_for_flow_run(flow_run)
    job: dict[str, Any] = configuration.job_manifest
    return job


@pytest.mark.usefixtures("prefect_server")
async def test_the_kubernetes_template_makes_a_job_of_the_image_with_an_empty_work_folder() -> None:
    flow_run = FlowRun(flow_id=uuid.uuid4(), name="quiet-heron")
    site = {"HIDREAM_OUTPUT_DIR": "s3://catalogue/summer"}

    job = await kubernetes_job({"env": site, "memory_limit": "2Gi"}, flow_run)

    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == made_image()
    assert container["args"] == ["prefect", "flow-run", "execute"]
    env = {entry["name"]: entry.get("value") for entry in container["env"]}
    assert env.items() >= {**TOKEN_BLOCK, **site}.items()  # the pool's, merged with the site's
    assert env["PREFECT__FLOW_RUN_ID"] == str(flow_run.id)
    assert not any("TOKEN" in name and name not in TOKEN_BLOCK for name in env)
    assert container["envFrom"] == [{"secretRef": {"name": "modelset-storage", "optional": True}}]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi"},
        "limits": {"cpu": "2", "memory": "2Gi"},
    }
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes[mounts["/work"]]["emptyDir"] == {"sizeLimit": "1Gi"}
    assert volumes[mounts["/tmp"]]["emptyDir"] == {"sizeLimit": "1Gi"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    assert job["spec"]["ttlSecondsAfterFinished"] == 600


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
