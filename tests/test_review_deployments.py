"""Review in deployment runs on the session's real Prefect server: a process worker
(limited to one run at a time) runs generate-model-sets/manual from prefect.yaml; a run
with review suspends without holding it, is resumed through Prefect's API or from the
shell, and publishes exactly what was approved; a review that times out leaves its sets
pending for the shell."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments.flow_runs import arun_deployment

from modelset import layout
from modelset.report import read_manifest
from modelset.sandbox import SandboxConfig, SandboxServer
from modelset.storage import open_store
from tests.conftest import MANUAL, PREFECT, TOKEN, Worker, hidream_env, make_photo, worker_env
from tests.test_review import published_events, published_files, reviews
from tests.test_workers import POOL, deploy

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(scope="module")
def review_sandbox() -> Iterator[SandboxServer]:
    config = SandboxConfig(port=0, token=TOKEN, latency_ms=0, generation_s=0.3, seed=11)
    with SandboxServer(config) as server:
        yield server


@pytest.fixture(scope="module")
def one_slot_worker(
    review_sandbox: SandboxServer, prefect_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    """`prefect deploy --all`, then one process worker that runs one flow run at a time."""
    base = tmp_path_factory.mktemp("review-worker")
    env = worker_env(
        prefect_server, base / "home", **hidream_env(review_sandbox, base / "default-out")
    )
    deploy(env)
    cwd = base / "machine"
    cwd.mkdir()
    log = base / "worker.log"
    process = subprocess.Popen(
        [*PREFECT, "worker", "start", "--pool", POOL, "--name", "reviewer", "--limit", "1"],
        cwd=cwd,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    worker = Worker(process, cwd, log)
    yield worker
    worker.stop()


def looks(folder: Path, count: int) -> list[str]:
    return [
        str(make_photo(folder / f"look-{n}.jpg", colour=(30 * n, 200 - 20 * n, 90)))
        for n in range(count)
    ]


async def start_run(sources: list[str], options: dict[str, Any], **env: str) -> UUID:
    """A run of the manual deployment, as the UI's Run form creates it (not waited on)."""
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(MANUAL)
        run = await client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"sources": sources, "template_ids": [20], "options": options},
            job_variables={"env": env} if env else None,
        )
    return run.id


def post_retrying(url: str, body: dict[str, Any]) -> httpx.Response:
    """POST as Prefect's own client does: a 503 (the server's database busy) is retried."""
    for _ in range(5):
        response = httpx.post(url, json=body, timeout=30)
        if response.status_code != 503:
            return response
        time.sleep(1)
    return response


async def wait_for(run_id: UUID, state_types: set[str], within: float = 150) -> FlowRun:
    deadline = time.monotonic() + within
    async with get_client() as client:
        while time.monotonic() < deadline:
            run = await client.read_flow_run(run_id)
            if run.state is not None and run.state.type.value in state_types:
                return run
            await asyncio.sleep(0.5)
    raise TimeoutError(f"flow run {run_id} not in {state_types} within {within} s: {run.state}")


def test_a_review_run_suspends_without_holding_the_worker_then_publishes_what_was_approved(
    one_slot_worker: Worker, review_sandbox: SandboxServer, prefect_server: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    sources = looks(tmp_path / "in", 6)
    run_id = asyncio.run(start_run(sources, {"review": True, "out": str(out)}))

    paused = asyncio.run(wait_for(run_id, {"PAUSED", "FAILED", "CRASHED", "COMPLETED"}))
    assert paused.state is not None and paused.state.type.value == "PAUSED", paused.state
    details = paused.state.state_details
    assert details.pause_timeout is not None
    week = datetime.now(UTC) + timedelta(days=7)
    assert abs((details.pause_timeout - week).total_seconds()) < 600  # HIDREAM_REVIEW_TIMEOUT
    keys = [f"look-{n}/20" for n in range(6)]
    assert {key: r[0] for key, r in reviews(out).items()} == dict.fromkeys(keys, "pending")
    assert open_store(out).list(layout.REVIEW_WAITING) == [f"{layout.REVIEW_WAITING}/{run_id}.json"]
    paid = len(review_sandbox.submissions())
    assert paid == 6

    # The worker runs one flow run at a time: this one runs only if the paused one let go.
    other = asyncio.run(
        arun_deployment(
            MANUAL,
            parameters={
                "sources": looks(tmp_path / "other", 1),
                "template_ids": [20],
                "options": {"out": str(tmp_path / "other-out")},
            },
            timeout=150,
        )
    )
    assert other.state is not None and other.state.is_completed(), other.state

    keyset = details.run_input_keyset
    assert keyset is not None

    async def form() -> tuple[dict[str, Any], str]:
        async with get_client() as client:
            schema = await client.read_flow_run_input(run_id, keyset["schema"])
            description = await client.read_flow_run_input(run_id, keyset["description"])
        return json.loads(schema), json.loads(description)

    schema, description = asyncio.run(form())
    assert set(schema["properties"]) == {"approve_all", "approve", "reject", "note", "reviewer"}
    assert all(f"`{key}`" in description for key in keys)
    assert description.count("data:image/jpeg;base64,") == 12  # each input and its set

    approve, reject = keys[:4], keys[4:]
    resumed = post_retrying(
        f"{prefect_server}/flow_runs/{run_id}/resume",
        {"run_input": {"approve": approve, "reject": reject, "note": "spring lookbook"}},
    )
    assert resumed.is_success, resumed.text
    assert resumed.json()["status"] == "ACCEPT"
    done = asyncio.run(wait_for(run_id, {"COMPLETED", "FAILED", "CRASHED"}))

    assert done.state is not None and done.state.is_completed(), done.state
    assert "4 approved (4 published), 2 declined, 0 still pending" in (done.state.message or "")
    assert len(review_sandbox.submissions()) == paid + 1  # the other run's; none on resume
    assert published_files(out) == [
        name
        for key in approve
        for name in [*(f"{key}/{n}.jpg" for n in range(1, 5)), f"{key}/{layout.PUBLISHED_MARKER}"]
    ]
    found = reviews(out)
    for key in approve:
        assert found[key][:2] == ("approved", "spring lookbook")
        assert len(found[key][3]) == 4
    for key in reject:
        assert found[key] == ("declined", "spring lookbook", "", [])
    for key in approve:
        item = key.split("/")[0]
        [event] = asyncio.run(published_events(f"modelset.set.{item}.20", out))
        assert event.payload["published"] == found[key][3]
        assert event.payload["out"] == str(out)
    assert asyncio.run(published_events("modelset.set.look-4.20", out, at_least=0)) == []
    assert open_store(out).list(layout.REVIEW_WAITING) == []
    assert list(one_slot_worker.cwd.iterdir()) == []


def test_the_shell_resumes_a_suspended_run_with_its_decision(
    one_slot_worker: Worker, review_sandbox: SandboxServer, prefect_server: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run_id = asyncio.run(start_run(looks(tmp_path / "in", 3), {"review": True, "out": str(out)}))
    paused = asyncio.run(wait_for(run_id, {"PAUSED", "FAILED", "CRASHED", "COMPLETED"}))
    assert paused.state is not None and paused.state.is_paused(), paused.state

    shell = subprocess.run(
        [sys.executable, "-m", "modelset", "review", str(out), "--approve", "look-0/20",
         "--reject", "look-1/20", "--reviewer", "ana"],
        env={**os.environ, "PREFECT_API_URL": prefect_server},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    done = asyncio.run(wait_for(run_id, {"COMPLETED", "FAILED", "CRASHED"}))

    assert shell.returncode == 0, shell.stdout + shell.stderr
    assert f"resumed flow run {paused.name}" in shell.stdout
    assert done.state is not None and done.state.is_completed(), done.state
    assert "review by ana: 1 approved (1 published), 1 declined, 1 still pending" in (
        done.state.message or ""
    )
    assert {key: r[0] for key, r in reviews(out).items()} == {
        "look-0/20": "approved",
        "look-1/20": "declined",
        "look-2/20": "pending",
    }
    assert published_files(out)[-1] == f"look-0/20/{layout.PUBLISHED_MARKER}"
    assert len(published_files(out)) == 5

    later = subprocess.run(
        [sys.executable, "-m", "modelset", "review", str(out), "--approve", "look-2/20"],
        env={**os.environ, "PREFECT_API_URL": prefect_server},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert later.returncode == 0, later.stdout + later.stderr
    assert "resumed" not in later.stdout  # the run is over: the shell decides itself
    assert reviews(out)["look-2/20"][0] == "approved"
    assert len(published_files(out)) == 10


def test_a_review_that_times_out_leaves_its_sets_pending_for_the_shell(
    one_slot_worker: Worker, review_sandbox: SandboxServer, prefect_server: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    sources = looks(tmp_path / "in", 2)
    run_id = asyncio.run(
        start_run(sources, {"review": True, "out": str(out)}, HIDREAM_REVIEW_TIMEOUT="2")
    )

    ended = asyncio.run(wait_for(run_id, {"FAILED", "CRASHED", "COMPLETED"}))

    assert ended.state is not None and ended.state.is_failed(), ended.state
    assert "paused and never resumed" in (ended.state.message or "")
    assert {key: r[0] for key, r in reviews(out).items()} == {
        "look-0/20": "pending",
        "look-1/20": "pending",
    }
    shell = subprocess.run(
        [sys.executable, "-m", "modelset", "review", str(out), "--approve-all"],
        env={**os.environ, "PREFECT_API_URL": prefect_server},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert shell.returncode == 0, shell.stdout + shell.stderr
    assert "resumed" not in shell.stdout
    assert {key: r[0] for key, r in reviews(out).items()} == {
        "look-0/20": "approved",
        "look-1/20": "approved",
    }
    assert len(published_files(out)) == 10
    assert [row.status.value for row in read_manifest(out)] == ["succeeded", "succeeded"]


def test_the_nightly_scan_waits_for_review_and_its_resume_scans_nothing_again(
    one_slot_worker: Worker, review_sandbox: SandboxServer, prefect_server: str, tmp_path: Path
) -> None:
    out, inbox = tmp_path / "out", tmp_path / "inbox"
    looks(inbox, 2)
    (inbox / "broken.jpg").write_bytes(b"not a photo")  # rejected: fails the run, after review

    async def start_scan() -> UUID:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("scan-inbox/nightly")
            run = await client.create_flow_run_from_deployment(
                deployment.id,
                parameters={
                    "inbox": str(inbox),
                    "template_ids": [20],
                    "options": {"review": True, "out": str(out), "max_images": 40},
                },
            )
        return run.id

    run_id = asyncio.run(start_scan())
    paused = asyncio.run(wait_for(run_id, {"PAUSED", "FAILED", "CRASHED", "COMPLETED"}))
    assert paused.state is not None and paused.state.is_paused(), paused.state
    paid = len(review_sandbox.submissions())

    async def resume() -> None:
        async with get_client() as client:
            await client.resume_flow_run(
                run_id,
                run_input={"approve_all": True, "approve": ["ghost/20"], "reject": ["look-1/20"]},
            )

    asyncio.run(resume())
    done = asyncio.run(wait_for(run_id, {"COMPLETED", "FAILED", "CRASHED"}))

    assert done.state is not None and done.state.is_failed(), done.state
    message = done.state.message or ""
    assert "1 approved (1 published), 1 declined" in message
    assert "not decided: ghost/20 (not a pending set of this review)" in message
    assert "before the review: 1 of 3 did not succeed: broken/20: rejected" in message
    assert len(review_sandbox.submissions()) == paid
    assert {key: r[0] for key, r in reviews(out).items()} == {
        "broken/20": "",
        "look-0/20": "approved",
        "look-1/20": "declined",
    }
    assert published_files(out)[-1] == f"look-0/20/{layout.PUBLISHED_MARKER}"


def test_a_sharded_parent_waits_for_its_children_then_suspends_for_all_their_sets(
    one_slot_worker: Worker,
    review_sandbox: SandboxServer,
    prefect_server: str,
    tmp_path: Path,
) -> None:
    # The parent holds one worker slot while its children run: they need a second worker.
    env = worker_env(prefect_server, tmp_path / "home", **hidream_env(review_sandbox))
    (tmp_path / "second").mkdir()
    second = Worker(
        subprocess.Popen(
            [*PREFECT, "worker", "start", "--pool", POOL, "--name", "second", "--limit", "1"],
            cwd=tmp_path / "second",
            env=env,
            stdout=(tmp_path / "second.log").open("wb"),
            stderr=subprocess.STDOUT,
        ),
        tmp_path / "second",
        tmp_path / "second.log",
    )
    try:
        out = tmp_path / "out"
        sources = looks(tmp_path / "in", 4)
        options = {"review": True, "out": str(out), "shard_size": 2}
        run_id = asyncio.run(start_run([str(tmp_path / "in")], options))
        paused = asyncio.run(wait_for(run_id, {"PAUSED", "FAILED", "CRASHED", "COMPLETED"}, 240))
        assert paused.state is not None and paused.state.is_paused(), paused.state
        assert len(sources) == 4
        keys = [f"look-{n}/20" for n in range(4)]
        assert {key: r[0] for key, r in reviews(out).items()} == dict.fromkeys(keys, "pending")
        paid = len(review_sandbox.submissions())

        async def resume() -> None:
            async with get_client() as client:
                await client.resume_flow_run(run_id, run_input={"approve_all": True})

        asyncio.run(resume())
        done = asyncio.run(wait_for(run_id, {"COMPLETED", "FAILED", "CRASHED"}))
    finally:
        second.stop()

    assert done.state is not None and done.state.is_completed(), done.state
    assert "4 approved (4 published), 0 declined" in (done.state.message or "")
    assert len(review_sandbox.submissions()) == paid  # the resume launched no shard again
    assert len(published_files(out)) == 20
