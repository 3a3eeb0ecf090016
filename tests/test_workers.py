"""Scale-out: `prefect deploy --all` from prefect.yaml, and process workers started in
empty folders (the flows come from the installed package) sharing sharded batches.

- two workers share a sharded batch into a folder, and pay each photo once, the budget
  holding across the shards (SQLite server);
- production-shaped: a Prefect server on PostgreSQL, photos and output in a bucket, two
  workers that share nothing else; one is killed (with its flow runs) mid-batch, the
  batch is run again, and every photo is paid once and reported;
- a relative output location is refused in a worker's throwaway folder, naming the
  setting, while a bucket works; a worker given MODELSET_WORKING_DIRECTORY keeps it there;
- an account refused inside a shard fails the parent with the account's message.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.deployments.flow_runs import arun_deployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Crashed

from modelset.deployments.serve import load_deployments
from modelset.flows.generate import WORKING_DIRECTORY_SET
from modelset.report import read_manifest
from modelset.sandbox import SandboxServer
from modelset.storage import open_store
from tests.conftest import (
    MANUAL,
    PREFECT,
    PROCESS_POOL,
    REPO,
    SHORT_LEASES,
    SandboxFactory,
    StartWorker,
    Worker,
    assert_empty,
    children_of,
    hidream_env,
    images_in,
    make_photo,
    worker_env,
)

POOL = PROCESS_POOL


async def deployed_to_the_pool(api_url: str) -> bool:
    """Whether every deployment of prefect.yaml is on this server, in the work pool: an
    earlier test deployed them, and no `modelset serve` took them over since."""
    async with PrefectClient(api=api_url) as client:
        for wanted in load_deployments():
            try:
                found = await client.read_deployment_by_name(f"{wanted.flow_name}/{wanted.name}")
            except ObjectNotFound:
                return False
            if found.work_pool_name != POOL or found.paused:
                return False
    return True


def deploy(env: dict[str, str]) -> None:
    """Create the work pool and `prefect deploy --all` from the repository, unless that
    is already done on this server: deployments carry no settings (a worker's
    environment does), and the two commands cost two interpreters."""
    if asyncio.run(deployed_to_the_pool(env["PREFECT_API_URL"])):
        return
    for command in (
        [*PREFECT, "work-pool", "create", POOL, "--type", "process", "--overwrite"],
        [*PREFECT, "--no-prompt", "deploy", "--all"],
    ):
        done = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=180
        )
        assert done.returncode == 0, done.stdout + done.stderr


# -- SQLite server: two workers, one sharded batch into a folder ------------------------------


@pytest.fixture
def workers(
    sandbox: SandboxServer, tmp_path: Path, prefect_server: str, start_worker: StartWorker
) -> tuple[Path, list[Worker]]:
    out = tmp_path / "out"
    env = worker_env(
        prefect_server,
        tmp_path / "homes" / "deploy",
        **hidream_env(sandbox, out, HIDREAM_MAX_IMAGES="1000"),
    )
    deploy(env)
    return out, [start_worker(env, f"worker-{n}") for n in (1, 2)]


def test_two_workers_share_a_sharded_batch_and_pay_once(
    workers: tuple[Path, list[Worker]], sandbox: SandboxServer, tmp_path: Path
) -> None:
    out, started = workers
    folder = tmp_path / "in"
    for index in range(12):
        make_photo(folder / f"look-{index:02d}.jpg", colour=(index * 20, 60, 120))

    async def run_parent(cap: int) -> tuple[object, list[str]]:
        run = await arun_deployment(
            MANUAL,
            parameters={
                "sources": [str(folder)],
                "template_ids": [20],
                "options": {"shard_size": 3, "concurrency": 4, "max_images": cap},
            },
            timeout=300,
        )
        async with get_client() as client:
            children = await client.read_flow_runs()
        child_ids = [str(c.id) for c in children if c.parent_task_run_id is not None]
        return run.state, child_ids

    # The cap holds across the children: 8 images are two sets of 4, whichever shards.
    asyncio.run(run_parent(8))
    assert len(sandbox.submissions()) == 2

    state, child_ids = asyncio.run(run_parent(1000))
    assert state is not None and state.is_completed(), state  # type: ignore[attr-defined]
    rows = read_manifest(out)
    assert len(rows) == 12
    assert {row.status.value for row in rows} == {"succeeded"}
    submitted = [(s["sha256"], s["template_id"]) for s in sandbox.submissions()]
    assert len(submitted) == 12
    assert len(set(submitted)) == 12
    ran_on = [sum(child in w.log.read_text() for child in child_ids) for w in started]
    assert all(count >= 1 for count in ran_on), f"children per worker: {ran_on}"
    assert_empty(started)


def test_a_relative_output_is_refused_by_name_where_a_bucket_works(
    workers: tuple[Path, list[Worker]], tmp_path: Path, bucket: str
) -> None:
    _, started = workers
    photo = make_photo(tmp_path / "in" / "solo.jpg", colour=(200, 40, 40))

    async def run(out: str) -> FlowRun:
        return await arun_deployment(
            MANUAL,
            parameters={"sources": [str(photo)], "template_ids": [20], "options": {"out": out}},
            timeout=120,
        )

    refused = asyncio.run(run("output"))
    assert refused.state is not None and refused.state.is_failed(), refused.state
    message = refused.state.message or ""
    assert "options.out" in message and "'output'" in message, message
    assert WORKING_DIRECTORY_SET in message or "working directory" in message, message

    done = asyncio.run(run(bucket))
    assert done.state is not None and done.state.is_completed(), done.state
    assert images_in(bucket, "solo") == [f"solo/20/{n}.jpg" for n in range(1, 5)]
    assert_empty(started)


def test_a_worker_with_a_working_directory_keeps_relative_outputs_there(
    sandbox: SandboxServer, tmp_path: Path, prefect_server: str, start_worker: StartWorker
) -> None:
    home = tmp_path / "srv" / "modelset"
    env = worker_env(
        prefect_server,
        tmp_path / "homes" / "deploy",
        **hidream_env(sandbox, HIDREAM_MAX_IMAGES="100"),
    )
    deploy(env)
    worker = start_worker({**env, WORKING_DIRECTORY_SET: str(home)}, "worker-wd")
    photo = make_photo(tmp_path / "in" / "kept.jpg", colour=(40, 200, 40))

    run = asyncio.run(
        arun_deployment(
            MANUAL,
            parameters={"sources": [str(photo)], "template_ids": [20], "options": {"out": "out"}},
            timeout=120,
        )
    )

    assert run.state is not None and run.state.is_completed(), run.state
    assert len(list((home / "out" / "kept" / "20").glob("*.jpg"))) == 4
    assert_empty([worker])


def test_an_account_refused_in_a_shard_fails_the_parent_with_its_message(
    sandbox_factory: SandboxFactory, tmp_path: Path, prefect_server: str, start_worker: StartWorker
) -> None:
    sandbox = sandbox_factory(faults={"no_credits": 1.0})
    out = tmp_path / "out"
    env = worker_env(
        prefect_server,
        tmp_path / "homes" / "deploy",
        **hidream_env(sandbox, out, HIDREAM_MAX_IMAGES="100"),
    )
    deploy(env)
    start_worker(env, "worker-1")
    folder = tmp_path / "in"
    for index in range(4):
        make_photo(folder / f"broke-{index}.jpg", colour=(index * 50, 10, 200))

    run = asyncio.run(
        arun_deployment(
            MANUAL,
            parameters={
                "sources": [str(folder)],
                "template_ids": [20],
                "options": {"shard_size": 2, "max_images": 100},
            },
            timeout=180,
        )
    )

    assert run.state is not None and run.state.is_failed(), run.state
    message = run.state.message or ""
    assert message.startswith("the HiDream account has no credits left"), message
    assert sandbox.submissions() == []
    assert {row.status.value for row in read_manifest(out)} == {"skipped"}


# -- PostgreSQL server, bucket, a worker killed mid-batch ----------------------------------------

PHOTOS = 12  # three shards of 4: enough for two machines, one of which dies


async def non_final_runs(parent: uuid.UUID) -> list[FlowRun]:
    """The batch's parent run and its children that have not finished."""
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[parent]))
        ) + await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])
            )
        )
    return [run for run in runs if run.state is None or not run.state.is_final()]


async def crash_dead_runs(parent: uuid.UUID, dead: set[int]) -> int:
    """Mark Crashed the runs whose process was killed, as Prefect's zombie detection
    would in production (flow-run heartbeats and an automation); returns how many."""
    crashed = 0
    async with get_client() as client:
        for run in await non_final_runs(parent):
            pid = (run.infrastructure_pid or "").rpartition(":")[2]
            if pid.isdigit() and int(pid) in dead:
                await client.set_flow_run_state(
                    run.id, Crashed(message="its worker died"), force=True
                )
                crashed += 1
    return crashed


@pytest.mark.timeout(600)
def test_production_shaped_workers_survive_a_dead_worker_and_pay_once(
    prefect_postgres_server: str,
    sandbox_factory: SandboxFactory,
    bucket: str,
    tmp_path: Path,
    start_worker: StartWorker,
) -> None:
    api_url = prefect_postgres_server
    sandbox = sandbox_factory(generation_s=1.0)
    inbox = bucket.rsplit("/", 1)[0] + "/in"  # the same bucket, another prefix
    photos = open_store(inbox)
    for index in range(PHOTOS):
        path = make_photo(
            tmp_path / "photos" / f"look-{index:02d}.jpg", colour=(index * 10, 80, 160)
        )
        photos.write_file(path.name, path)
    items = [f"look-{index:02d}" for index in range(PHOTOS)]
    env = worker_env(
        api_url,
        tmp_path / "homes" / "deploy",
        **hidream_env(sandbox, HIDREAM_MAX_IMAGES="1000"),  # no HIDREAM_OUTPUT_DIR
        **SHORT_LEASES,
    )
    deploy(env)
    workers = [start_worker(env, f"machine-{n}") for n in (1, 2)]
    parameters: dict[str, Any] = {
        "sources": [inbox],
        "template_ids": [20],
        "options": {"out": bucket, "shard_size": 4, "concurrency": 4, "max_images": 1000},
    }

    async def start_batch() -> FlowRun:
        return await arun_deployment(MANUAL, parameters=parameters, timeout=0)

    async def finish_batch() -> FlowRun:
        return await arun_deployment(MANUAL, parameters=parameters, timeout=300)

    with temporary_settings({PREFECT_API_URL: api_url}):
        first = asyncio.run(start_batch())
        deadline = time.monotonic() + 120
        while not sandbox.submissions():
            assert time.monotonic() < deadline, [w.log.read_text()[-2000:] for w in workers]
            time.sleep(0.05)
        # The machine running the most flow runs dies, with them.
        victim = max(workers, key=lambda worker: len(children_of(worker.process.pid)))
        dead = victim.kill_between_sends(bucket)
        submitted_before = len(sandbox.submissions())
        crashed = asyncio.run(crash_dead_runs(first.id, set(dead)))
        assert crashed >= 1, "the killed worker ran none of the batch"
        workers.append(start_worker(env, "machine-3"))

        second = asyncio.run(finish_batch())

    assert second.state is not None and second.state.is_completed(), second.state
    assert submitted_before < PHOTOS, "the worker died after the batch had been sent"
    submitted = [(s["sha256"], s["template_id"]) for s in sandbox.submissions()]
    assert len(submitted) == PHOTOS, f"{len(submitted)} accepted submissions"
    assert len(set(submitted)) == PHOTOS
    for item in items:
        assert images_in(bucket, item) == [f"{item}/20/{n}.jpg" for n in range(1, 5)], item
    rows = read_manifest(bucket)
    assert sorted(row.item for row in rows) == items
    assert {row.status.value for row in rows} == {"succeeded"}
    link = open_store(bucket).presign("index.html", timedelta(days=7))
    assert link is not None
    page = httpx.get(link, timeout=30)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.text.count("data:image/jpeg;base64,") >= PHOTOS * 4
    assert_empty(workers)
