"""Callbacks end to end: sandbox -> receiver -> event -> the collector, or a waiting batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from modelset.report import read_manifest
from modelset.storage import Store, open_store
from tests.conftest import (
    REPO,
    SHORT_LEASES,
    SandboxFactory,
    free_port,
    hidream_env,
    make_photo,
    wait_until_healthy,
)
from tests.test_deployments import start_serve, stop

pytestmark = pytest.mark.usefixtures("prefect_server")
SECRET = "callback-secret-for-tests-7d1e"
World = tuple[dict[str, str], list[Path]]


@pytest.fixture
def callback_world(
    sandbox_factory: SandboxFactory, tmp_path: Path, prefect_server: str
) -> Iterator[Callable[..., World]]:
    """Starts the sandbox (3 s sets), the receiver and `modelset serve`, wired by the
    settings; ``HIDREAM_OUTPUT_DIR`` is ``default_out``, extra settings override."""
    started: list[subprocess.Popen[bytes]] = []

    def start(default_out: Path, faults: dict[str, float] | None = None, **extra: str) -> World:
        sandbox = sandbox_factory(generation_s=3, faults=faults or {})
        port = free_port()
        env = {
            **os.environ,
            **hidream_env(sandbox, default_out, HIDREAM_MAX_IMAGES="100"),
            "HIDREAM_CALLBACK_URL": f"http://127.0.0.1:{port}",
            "HIDREAM_CALLBACK_SECRET": SECRET,
            # Polling alone would take a minute: only the callback can make these runs fast.
            "HIDREAM_POLL_INTERVAL": "60",
            "HIDREAM_POLL_MAX_INTERVAL": "60",
            "PREFECT_API_URL": prefect_server,
            **extra,
        }
        logs = [tmp_path / "receiver.log", tmp_path / "serve.log"]
        receiver = subprocess.Popen(
            [sys.executable, "-m", "modelset", "callbacks", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=logs[0].open("wb"),
            stderr=subprocess.STDOUT,
        )
        started.append(receiver)
        wait_until_healthy(f"http://127.0.0.1:{port}/healthz", receiver, within=30, log=logs[0])
        started.append(start_serve(env, logs[1]))
        env["SANDBOX_URL"] = sandbox.base_url
        return env, logs

    yield start
    for process in reversed(started):
        stop(process)


def submissions(env: dict[str, str]) -> list[dict[str, object]]:
    answer = httpx.get(f"{env['SANDBOX_URL']}/_sandbox/submissions", timeout=5).json()
    return list(answer["submissions"])


def test_a_callback_brings_the_set_of_a_run_that_died_after_submitting(
    callback_world: Callable[..., World], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    env, logs = callback_world(out)
    photo = make_photo(tmp_path / "in" / "orphan.jpg")
    batch = subprocess.Popen(
        [sys.executable, "-m", "modelset", "run", str(photo), "-t", "20", "--out", str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Killed once its submit is on record (the task's index entry, which a callback is
    # matched by), not merely sent: a kill in between leaves an intent for a rerun.
    recorded = out / ".modelset" / "ledger" / "by-task"
    deadline = time.monotonic() + 60
    while not [e for e in recorded.rglob("*") if e.is_file() and not e.name.startswith(".")]:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    batch.send_signal(signal.SIGKILL)
    batch.wait()

    folder = out / "orphan" / "20"
    deadline = time.monotonic() + 90
    while len(list(folder.glob("*.jpg"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(list(folder.glob("*.jpg"))) == 4, logs[1].read_text()[-3000:]
    assert row_status(out, "orphan") == "succeeded"
    assert len(submissions(env)) == 1
    for log in logs:
        assert SECRET not in log.read_text()


def test_sets_whose_answers_were_lost_are_collected_by_their_callbacks(
    callback_world: Callable[..., World], tmp_path: Path, out_location: str
) -> None:
    """The service creates each task and bills it, and a proxy loses half the answers
    (502); it finds tasks by task_id only. The run reports those sets paid, not
    collected; each task's callback names its send (the notify_url carries the
    request_id), and the collector downloads the set into the report. Every photo is
    paid once, on a folder and on a bucket."""
    env, logs = callback_world(
        tmp_path / "default-out", faults={"lost_answer": 0.5}, **SHORT_LEASES
    )
    store = open_store(out_location)
    folder = tmp_path / "in"
    items = [f"unanswered-{n}" for n in range(4)]
    for n, item in enumerate(items):
        make_photo(folder / f"{item}.jpg", colour=(200, 60 * n, 60))
    batch = subprocess.run(
        [sys.executable, "-m", "modelset", "run", str(folder), "-t", "20", "--out", out_location],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lost = [row for row in read_manifest(store) if row.status.value == "outcome_unknown"]
    assert lost, "seed 7 loses some answers"
    assert batch.returncode == 1, batch.stdout + batch.stderr
    sets = "set" if len(lost) == 1 else "sets"
    assert f"{len(lost)} {sets} paid, not collected" in batch.stderr
    assert f"modelset settle {out_location}" in batch.stderr

    deadline = time.monotonic() + 90
    while any(row_status(store, item, within=0) != "succeeded" for item in items):
        assert time.monotonic() < deadline, logs[1].read_text()[-3000:]
        time.sleep(0.5)
    for item in items:
        assert len([key for key in store.list(f"{item}/20") if key.endswith(".jpg")]) == 4
    paid = submissions(env)
    assert len(paid) == 4
    assert len({entry["sha256"] for entry in paid}) == 4, "a photo was paid twice"
    for log in logs:
        assert SECRET not in log.read_text()


def row_status(location: Store | Path, item: str, within: float = 30) -> str | None:
    """The report's status of ``item``, once the collecting flow has written its row
    (it writes the images first)."""
    deadline = time.monotonic() + within
    while True:
        rows = {row.item: row for row in read_manifest(location)}
        if item in rows or time.monotonic() > deadline:
            return rows[item].status.value if item in rows else None
        time.sleep(0.2)


def test_a_callback_brings_the_set_of_a_dead_run_into_its_bucket(
    callback_world: Callable[..., World], tmp_path: Path, bucket: str
) -> None:
    # serve's own default output is elsewhere: only the callback URL names the bucket.
    elsewhere = tmp_path / "default-out"
    env, logs = callback_world(
        elsewhere,
        **SHORT_LEASES,
    )
    store = open_store(bucket)
    photo = make_photo(tmp_path / "in" / "drifter.jpg", colour=(30, 160, 90))
    batch = subprocess.Popen(
        [sys.executable, "-m", "modelset", "run", str(photo), "-t", "20", "--out", bucket],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Killed once the ledger holds the task id: submitted and recorded, not collected.
    deadline = time.monotonic() + 60
    while not store.list(".modelset/ledger/by-task") and time.monotonic() < deadline:
        assert batch.poll() is None
        time.sleep(0.05)
    batch.send_signal(signal.SIGKILL)
    batch.wait()

    def images() -> list[str]:
        return [key for key in store.list("drifter/20") if key.endswith(".jpg")]

    deadline = time.monotonic() + 90
    while len(images()) < 4 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert images() == [f"drifter/20/{n}.jpg" for n in range(1, 5)], logs[1].read_text()[-3000:]
    assert row_status(store, "drifter") == "succeeded"
    assert len(submissions(env)) == 1
    assert not elsewhere.exists()
    for log in logs:
        assert SECRET not in log.read_text()


def test_a_waiting_batch_learns_of_its_callback_within_seconds(
    callback_world: Callable[..., World], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    # Its first poll finds the set unfinished (3 s), the next would come in an hour: only
    # the callback can end this run, and the subprocess's timeout is a safety net.
    env, _ = callback_world(out, HIDREAM_POLL_INTERVAL="3600", HIDREAM_POLL_MAX_INTERVAL="3600")
    photo = make_photo(tmp_path / "in" / "waited.jpg", colour=(20, 20, 220))
    try:
        batch = subprocess.run(
            [sys.executable, "-m", "modelset", "run", str(photo), "-t", "20", "--out", str(out)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the batch was not woken by its callback: it polls again in an hour")
    assert batch.returncode == 0, batch.stdout + batch.stderr
    assert len(list((out / "waited" / "20").glob("*.jpg"))) == 4
    assert len(submissions(env)) == 1
    assert SECRET not in batch.stdout + batch.stderr
