"""Scale-out: `prefect deploy --all` from prefect.yaml and two process workers sharing one
sharded batch, each photo submitted once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.deployments.flow_runs import arun_deployment

from modelset.report import read_manifest
from modelset.sandbox import SandboxServer
from tests.conftest import REPO, hidream_env, make_photo
from tests.test_deployments import stop

pytestmark = pytest.mark.usefixtures("prefect_server")
PREFECT = [sys.executable, "-m", "prefect"]


@pytest.fixture
def workers(
    sandbox: SandboxServer, tmp_path: Path, prefect_server: str
) -> Iterator[tuple[Path, list[Path]]]:
    out = tmp_path / "out"
    env = {
        **os.environ,
        **hidream_env(sandbox, out, HIDREAM_MAX_IMAGES="1000"),
        "PREFECT_API_URL": prefect_server,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PWD": str(REPO),
    }
    for command in (
        [*PREFECT, "work-pool", "create", "modelset-process", "--type", "process", "--overwrite"],
        [*PREFECT, "--no-prompt", "deploy", "--all"],
    ):
        done = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
    logs = [tmp_path / f"worker-{n}.log" for n in (1, 2)]
    processes = [
        subprocess.Popen(
            [*PREFECT, "worker", "start", "--pool", "modelset-process", "--name", log.stem],
            cwd=REPO,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        for log in logs
    ]
    yield out, logs
    for process in processes:
        stop(process)


def test_two_workers_share_a_sharded_batch_and_pay_once(
    workers: tuple[Path, list[Path]], sandbox: SandboxServer, tmp_path: Path
) -> None:
    out, logs = workers
    folder = tmp_path / "in"
    for index in range(12):
        make_photo(folder / f"look-{index:02d}.jpg", colour=(index * 20, 60, 120))

    async def run_parent(cap: int) -> tuple[object, list[str]]:
        run = await arun_deployment(
            "generate-model-sets/manual",
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
    ran_on = [sum(child in log.read_text() for child in child_ids) for log in logs]
    assert all(count >= 1 for count in ran_on), f"children per worker: {ran_on}"
