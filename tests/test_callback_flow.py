"""Callbacks end to end: sandbox -> receiver -> event -> the collector, or a waiting batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelset.report import read_manifest
from tests.conftest import (
    REPO,
    SandboxFactory,
    free_port,
    hidream_env,
    make_photo,
    wait_until_healthy,
)
from tests.test_deployments import start_serve, stop

pytestmark = pytest.mark.usefixtures("prefect_server")
SECRET = "callback-secret-for-tests-7d1e"


@pytest.fixture
def callback_world(
    sandbox_factory: SandboxFactory, tmp_path: Path, prefect_server: str
) -> Iterator[tuple[dict[str, str], Path, list[Path]]]:
    """The sandbox (3 s sets), the receiver and `modelset serve`, wired by the settings."""
    sandbox = sandbox_factory(generation_s=3)
    port = free_port()
    out = tmp_path / "out"
    env = {
        **os.environ,
        **hidream_env(sandbox, out, HIDREAM_MAX_IMAGES="100"),
        "HIDREAM_CALLBACK_URL": f"http://127.0.0.1:{port}",
        "HIDREAM_CALLBACK_SECRET": SECRET,
        # Polling alone would take a minute: only the callback can make these runs fast.
        "HIDREAM_POLL_INTERVAL": "60",
        "HIDREAM_POLL_MAX_INTERVAL": "60",
        "PREFECT_API_URL": prefect_server,
    }
    logs = [tmp_path / "receiver.log", tmp_path / "serve.log"]
    receiver = subprocess.Popen(
        [sys.executable, "-m", "modelset", "callbacks", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=logs[0].open("wb"),
        stderr=subprocess.STDOUT,
    )
    wait_until_healthy(f"http://127.0.0.1:{port}/healthz", receiver, within=30, log=logs[0])
    serving = start_serve(env, logs[1])
    env["SANDBOX_URL"] = sandbox.base_url
    yield env, out, logs
    stop(serving)
    stop(receiver)


def submissions(env: dict[str, str]) -> list[dict[str, object]]:
    answer = httpx.get(f"{env['SANDBOX_URL']}/_sandbox/submissions", timeout=5).json()
    return list(answer["submissions"])


def test_a_callback_brings_the_set_of_a_run_that_died_after_submitting(
    callback_world: tuple[dict[str, str], Path, list[Path]], tmp_path: Path
) -> None:
    env, out, logs = callback_world
    photo = make_photo(tmp_path / "in" / "orphan.jpg")
    batch = subprocess.Popen(
        [sys.executable, "-m", "modelset", "run", str(photo), "-t", "20", "--out", str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not submissions(env) and time.monotonic() < deadline:
        time.sleep(0.1)
    batch.send_signal(signal.SIGKILL)
    batch.wait()

    folder = out / "orphan" / "20"
    deadline = time.monotonic() + 90
    while len(list(folder.glob("*.jpg"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(list(folder.glob("*.jpg"))) == 4, logs[1].read_text()[-3000:]
    rows = {row.item: row for row in read_manifest(out)}
    assert rows["orphan"].status.value == "succeeded"
    assert len(submissions(env)) == 1
    for log in logs:
        assert SECRET not in log.read_text()


def test_a_waiting_batch_learns_of_its_callback_within_seconds(
    callback_world: tuple[dict[str, str], Path, list[Path]], tmp_path: Path
) -> None:
    env, out, _ = callback_world
    photo = make_photo(tmp_path / "in" / "waited.jpg", colour=(20, 20, 220))
    started = time.monotonic()
    batch = subprocess.run(
        [sys.executable, "-m", "modelset", "run", str(photo), "-t", "20", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert batch.returncode == 0, batch.stdout + batch.stderr
    assert elapsed < 40, f"took {elapsed:.0f} s: the batch polled instead of waking"
    assert len(list((out / "waited" / "20").glob("*.jpg"))) == 4
    assert len(submissions(env)) == 1
    assert SECRET not in batch.stdout + batch.stderr
