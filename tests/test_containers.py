"""Flow runs in containers: the image `make image` builds, the deployments of
deployments/docker/prefect.yaml on a Docker work pool, and prefect-docker's worker on
podman's Docker API (or a Docker engine), against real Prefect servers. The photos and
the output are in a bucket (moto), the site's settings reach the containers as the work
pool's env, and the token as a Prefect Secret block, nowhere else.

- a batch into a bucket completes in a container, every set paid once, and the report
  and manifest land in the bucket;
- on a Prefect server on PostgreSQL, two container workers share a sharded batch and pay
  each set once;
- a container killed through the engine's API mid-batch is survived: a rerun through the
  pool pays nothing twice and finishes the batch;
- and none of them leaves anything on the host: the containers are removed, the workers'
  folders stay empty.

Marked ``containers``: `make test-containers` runs them (CI after `make test-slow`), with
`make image` first; the session builds (or takes from the engine's cache) the image once.
Where no engine can run containers they skip, saying what to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from docker.models.containers import Container
from prefect.blocks.system import Secret
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolUpdate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.client.schemas.objects import FlowRun
from prefect.deployments.flow_runs import arun_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from modelset import layout
from modelset.report import read_manifest
from modelset.sandbox import SandboxServer
from modelset.storage import open_store
from tests.conftest import (
    MANUAL,
    PREFECT,
    REPO,
    S3_ENV,
    SHORT_LEASES,
    TOKEN,
    SandboxFactory,
    StartWorker,
    Worker,
    assert_empty,
    hidream_env,
    images_in,
    make_photo,
    stop_between_sends,
    wait_until,
    worker_env,
)

pytestmark = [pytest.mark.containers, pytest.mark.timeout(900)]

DOCKER_YAML = REPO / "deployments" / "docker" / "prefect.yaml"
CRASH_AUTOMATION = REPO / "deployments" / "crash-unresponsive-runs.yaml"
POOL_SPEC = yaml.safe_load(DOCKER_YAML.read_text(encoding="utf-8"))["deployments"][0]["work_pool"]
POOL: str = POOL_SPEC["name"]
IMAGE: str = POOL_SPEC["job_variables"]["image"]
TOKEN_BLOCK: str = POOL_SPEC["job_variables"]["env"]["HIDREAM_API_TOKEN_BLOCK"]
TO_INSTALL = (
    "apt-get install podman runc debootstrap, and write /etc/containers/containers.conf "
    "as docs/scale-out.md gives (or run a Docker engine)"
)
BASE_IMAGE = "localhost/debian-min:bookworm"  # the Makefile's, made with debootstrap
RUN_LABEL = "io.prefect.flow-run-id"  # prefect-docker's label on a flow run's container


# -- the engine and the image ---------------------------------------------------------------


@dataclass
class Engine:
    """A Docker Engine API: podman's service, or a Docker engine's."""

    name: str  # the command: podman or docker
    host: str  # DOCKER_HOST
    client: docker.DockerClient

    def containers_of(self, run_ids: set[str]) -> list[Container]:
        """The containers (running or not) of these flow runs, as one listing gives them:
        none is inspected, so one removed meanwhile is simply gone (``reload()`` one to
        read more than its labels)."""
        found = self.client.containers.list(all=True, filters={"label": RUN_LABEL}, sparse=True)
        return [c for c in found if (c.attrs.get("Labels") or {}).get(RUN_LABEL) in run_ids]


def docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    done = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=60)
    return done.returncode == 0


@contextlib.contextmanager
def podman_service(folder: Path) -> Iterator[str]:
    """``podman system service`` on a socket of its own; yields its DOCKER_HOST."""
    socket = folder / "podman.sock"
    log = (folder / "podman-service.log").open("wb")
    process = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(socket.exists, within=30, what="podman's API socket")
        yield f"unix://{socket}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    if docker_engine_answers():
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        yield Engine("docker", host, docker.DockerClient(base_url=host, timeout=120))
        return
    if shutil.which("podman") is None:
        pytest.skip(f"no container engine: {TO_INSTALL}")
    with podman_service(tmp_path_factory.mktemp("podman")) as host:
        client = docker.DockerClient(base_url=host, timeout=120)
        client.ping()
        yield Engine("podman", host, client)
        client.close()


@pytest.fixture(scope="module")
def image(engine: Engine) -> str:
    """The image, built by `make image` (each layer from the engine's cache if nothing it
    holds changed), and shown to run a container; returns its tag."""
    if engine.name == "podman" and (shutil.which("debootstrap") is None or os.geteuid() != 0):
        base = subprocess.run(["podman", "image", "exists", BASE_IMAGE], check=False)
        if base.returncode != 0:
            pytest.skip(f"no {BASE_IMAGE}, and no debootstrap run as root to make it: {TO_INSTALL}")
    built = subprocess.run(
        ["make", "image", f"ENGINE={engine.name}", f"IMAGE={IMAGE}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    try:
        engine.client.containers.run(
            IMAGE, ["python", "-c", "import modelset"], remove=True, network_mode="host"
        )
    except docker.errors.DockerException as error:
        pytest.skip(f"{engine.name} cannot run a container here ({error}): {TO_INSTALL}")
    return IMAGE


# -- the pool, its deployments and workers --------------------------------------------------


def site_env(sandbox: SandboxServer, s3_endpoint: str, **extra: str) -> dict[str, str]:
    """What a site puts in the pool's env: the upstream, the bucket's endpoint and
    credentials. Not the token: the deployments name its Secret block."""
    values = hidream_env(sandbox, None, HIDREAM_MAX_IMAGES="1000", **extra)
    del values["HIDREAM_API_TOKEN"]
    return {**values, **S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint}


async def give_the_pool(api_url: str, env: dict[str, str]) -> None:
    """The pool's env (the site's settings, merged by Prefect with each deployment's),
    as a site sets it in the pool's form, or with `prefect work-pool update`."""
    async with PrefectClient(api=api_url) as client:
        pool = await client.read_work_pool(POOL)
        template = pool.base_job_template
        template["variables"]["properties"]["env"]["default"] = env
        await client.update_work_pool(POOL, WorkPoolUpdate(base_job_template=template))


def prefect(env: dict[str, str], *arguments: str) -> None:
    """A `prefect` command, from the repository folder, as the docs give it."""
    done = subprocess.run(
        [*PREFECT, *arguments], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr


def deploy_in_containers(api_url: str, home: Path, env: dict[str, str]) -> dict[str, str]:
    """The Docker pool with the site's env, prefect.yaml's deployments on it (from
    deployments/docker/prefect.yaml), and the token in its Secret block; returns the
    environment of this pool's workers: the server and the engine, no HIDREAM_* or AWS_*."""
    clean = {
        k: v for k, v in worker_env(api_url, home).items() if not k.startswith(("HIDREAM_", "AWS_"))
    }
    prefect(clean, "work-pool", "create", POOL, "--type", "docker", "--overwrite")
    prefect(clean, "--no-prompt", "deploy", "--all", "--prefect-file", str(DOCKER_YAML))
    asyncio.run(give_the_pool(api_url, env))
    with temporary_settings({PREFECT_API_URL: api_url}):
        Secret(value=TOKEN).save(TOKEN_BLOCK, overwrite=True)
    return clean


async def runs_of(api_url: str, parent: uuid.UUID) -> list[FlowRun]:
    """The batch's parent run and its children."""
    async with PrefectClient(api=api_url) as client:
        children = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])
            )
        )
        return [await client.read_flow_run(parent), *children]


def final_state(api_url: str, run_id: uuid.UUID) -> Any:
    """The run's state once it is final, else None."""

    async def read() -> Any:
        async with PrefectClient(api=api_url) as client:
            return (await client.read_flow_run(run_id)).state

    state = asyncio.run(read())
    return state if state is not None and state.is_final() else None


def paid_once(sandbox: SandboxServer, count: int, containers: int) -> None:
    """Each of ``count`` sets accepted exactly once; prints the run's figures."""
    submitted = [(s["sha256"], s["template_id"]) for s in sandbox.submissions()]
    twice = len(submitted) - len(set(submitted))
    print(f"\n{containers} containers, {count} sets, {len(submitted)} accepted, {twice} twice")
    assert len(submitted) == count, f"{len(submitted)} accepted submissions for {count} sets"
    assert twice == 0


@dataclass
class Site:
    """A test's machines: the engine, a bucket for photos and output, and workers of the
    Docker pool, each in an empty folder, sharing a temporary folder that must stay empty."""

    engine: Engine
    s3_endpoint: str
    bucket: str
    folder: Path
    start_worker: StartWorker

    @property
    def worker_tmp(self) -> Path:
        return self.folder / "worker-tmp"

    def deploy(self, api_url: str, sandbox: SandboxServer, **settings: str) -> dict[str, str]:
        """The pool and its deployments on ``api_url``, the site's settings pointing at
        ``sandbox``; returns the environment of its workers."""
        site = site_env(sandbox, self.s3_endpoint, **settings)
        env = deploy_in_containers(api_url, self.folder / "homes" / "deploy", site)
        return {**env, "DOCKER_HOST": self.engine.host, "TMPDIR": str(self.worker_tmp)}

    def worker(self, env: dict[str, str], name: str, *options: str) -> Worker:
        return self.start_worker(env, name, POOL, *options)

    def photos(self, count: int, prefix: str) -> tuple[str, list[str]]:
        """``count`` photos under ``in/`` of the bucket (the containers see nothing of this
        machine's disk); returns that prefix and the items."""
        inbox = self.bucket.rsplit("/", 1)[0] + "/in"
        store = open_store(inbox)
        items = [f"{prefix}-{index:02d}" for index in range(count)]
        for index, item in enumerate(items):
            path = make_photo(self.folder / "photos" / f"{item}.jpg", colour=(index * 20, 70, 150))
            store.write_file(path.name, path)
        return inbox, items

    def parameters(self, inbox: str, **options: Any) -> dict[str, Any]:
        return {
            "sources": [inbox],
            "template_ids": [20],
            "options": {"out": self.bucket, "max_images": 1000, **options},
        }

    def has_everything(self, items: list[str]) -> None:
        """Every set, the manifest and a sheet with every thumbnail are in the bucket."""
        for item in items:
            assert images_in(self.bucket, item) == [f"{item}/20/{n}.jpg" for n in range(1, 5)]
        rows = read_manifest(self.bucket)
        assert sorted(row.item for row in rows) == items
        assert {row.status.value for row in rows} == {"succeeded"}
        page = open_store(self.bucket).read("index.html").data.decode()
        assert page.count("data:image/jpeg;base64,") >= len(items) * 4

    def nothing_left(self, run_ids: set[str], workers: list[Worker]) -> None:
        """The runs' containers are gone (auto_remove), and the workers' folders and
        temporary folder are as empty as they started."""
        wait_until(
            lambda: not self.engine.containers_of(run_ids),
            within=60,
            what=lambda: f"containers left: {self.engine.containers_of(run_ids)}",
        )
        assert_empty(workers)
        assert list(self.worker_tmp.iterdir()) == [], f"{self.worker_tmp} is not empty"


@pytest.fixture
def site(
    image: str,
    engine: Engine,
    s3_server: str,
    bucket: str,
    tmp_path: Path,
    start_worker: StartWorker,
) -> Site:
    (tmp_path / "worker-tmp").mkdir()
    return Site(engine, s3_server, bucket, tmp_path, start_worker)


# -- the runs ----------------------------------------------------------------------------


def test_a_batch_into_a_bucket_runs_in_a_container_and_pays_once(
    site: Site, prefect_server: str, sandbox: SandboxServer
) -> None:
    inbox, items = site.photos(6, "look")
    worker = site.worker(site.deploy(prefect_server, sandbox), "box-1")

    run = asyncio.run(arun_deployment(MANUAL, parameters=site.parameters(inbox), timeout=300))

    assert run.state is not None and run.state.is_completed(), (
        run.state,
        worker.log.read_text()[-3000:],
    )
    assert run.infrastructure_pid, "the run names no container"
    paid_once(sandbox, len(items), containers=1)
    site.has_everything(items)
    site.nothing_left({str(run.id)}, [worker])


def test_two_container_workers_share_a_sharded_batch_and_pay_once(
    site: Site, prefect_postgres_server: str, sandbox: SandboxServer
) -> None:
    api_url = prefect_postgres_server
    inbox, items = site.photos(9, "shard")
    env = site.deploy(api_url, sandbox)
    # Two flow runs at most per worker: the parent and three children cannot all go to one.
    workers = [site.worker(env, f"box-{n}", "--limit", "2") for n in (1, 2)]

    with temporary_settings({PREFECT_API_URL: api_url}):
        given = site.parameters(inbox, shard_size=3)
        run = asyncio.run(arun_deployment(MANUAL, parameters=given, timeout=400))
    logs = [worker.log.read_text() for worker in workers]

    assert run.state is not None and run.state.is_completed(), (run.state, logs)
    runs = asyncio.run(runs_of(api_url, run.id))
    assert len(runs) == 4, [r.name for r in runs]  # the parent and a child per shard
    assert all(r.state is not None and r.state.is_completed() for r in runs)
    ran = [sum(str(r.id) in log for r in runs) for log in logs]
    assert all(count >= 1 for count in ran), f"flow runs per worker: {ran}"
    paid_once(sandbox, len(items), containers=len(runs))
    site.has_everything(items)
    site.nothing_left({str(r.id) for r in runs}, workers)


def test_a_container_killed_mid_batch_is_survived_and_nothing_is_paid_twice(
    site: Site, prefect_server: str, sandbox_factory: SandboxFactory
) -> None:
    sandbox = sandbox_factory(generation_s=4.0)  # sends spread over 20 s: a window to kill in
    inbox, items = site.photos(10, "killed")
    env = site.deploy(prefect_server, sandbox, **SHORT_LEASES)
    prefect(env, "automation", "create", "--from-file", str(CRASH_AUTOMATION))
    worker = site.worker(env, "box-1")
    given = site.parameters(inbox, concurrency=2)

    first = asyncio.run(arun_deployment(MANUAL, parameters=given, timeout=0))
    # Under way: a send accepted (it left the request_id lookup's proof in the bucket).
    wait_until(
        lambda: open_store(site.bucket).list(layout.LOOKUP_PROOFS),
        within=180,
        what=lambda: worker.log.read_text()[-3000:],
    )
    [container] = site.engine.containers_of({str(first.id)})
    container.reload()
    # SIGKILL through the engine's API, as when the machine it ran on is gone; between two
    # sends, since a send cut off is reported paid, not collected unless a lookup finds
    # its task, and test_crash_recovery.py is where that is tested.
    stop_between_sends(int(container.attrs["State"]["Pid"]), site.bucket)
    container.kill()
    sent_before = len(sandbox.submissions())

    second = asyncio.run(arun_deployment(MANUAL, parameters=given, timeout=400))
    # No worker says the first run died (its container went with it): its heartbeats
    # stop, and the automation of deployments/crash-unresponsive-runs.yaml marks it.
    crashed = wait_until(
        lambda: final_state(prefect_server, first.id),
        within=180,
        every=2,
        what="the killed run marked Crashed",
    )

    assert crashed.is_crashed(), crashed
    assert sent_before < len(items), "the container died after the batch had been sent"
    assert second.state is not None and second.state.is_completed(), (
        second.state,
        worker.log.read_text()[-3000:],
    )
    print(f"\nkilled after {sent_before} of {len(items)} sets were sent")
    paid_once(sandbox, len(items), containers=2)
    site.has_everything(items)
    site.nothing_left({str(first.id), str(second.id)}, [worker])
