"""Plan before paying: dry run, budget cap, confirmation, interruption."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from modelset.sandbox import SandboxServer
from tests.conftest import EngineRunner, SandboxFactory, hidream_env, make_photo
from tests.test_pipeline import manifest


def photo_folder(root: Path, count: int) -> Path:
    for index in range(count):
        make_photo(root / f"p{index:02d}.jpg", size=(300, 400), colour=(index * 9, 90, 160))
    return root


def cli(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelset", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.usefixtures("prefect_server")
def test_dry_run_submits_nothing_and_counts_what_a_real_run_would(
    env: dict[str, str], sandbox: SandboxServer, tmp_path: Path
) -> None:
    folder = photo_folder(tmp_path / "in", 3)
    (folder / "bad.jpg").write_bytes(b"")
    out = tmp_path / "out"

    dry = cli("run", str(folder), "-t", "20", "-t", "21", "--out", str(out), "--dry-run", env=env)
    assert dry.returncode == 1, dry.stdout + dry.stderr  # bad.jpg cannot be planned
    assert "plan: 6 tasks to submit, up to 24 images; 0 already done" in dry.stdout
    assert sandbox.submissions() == []
    rows = manifest(out)
    assert sorted(row["status"] for row in rows) == ["planned"] * 6 + ["rejected"] * 2
    assert all(row["upload_sha256"] for row in rows if row["status"] == "planned")

    real = cli(
        "run",
        str(folder / "p00.jpg"),
        str(folder / "p01.jpg"),
        "-t",
        "20",
        "--out",
        str(out),
        env=env,
    )
    assert real.returncode == 0, real.stdout + real.stderr
    assert len(sandbox.submissions()) == 2

    again = cli("run", str(folder), "-t", "20", "-t", "21", "--out", str(out), "--dry-run", env=env)
    assert "plan: 4 tasks to submit, up to 16 images; 2 already done" in again.stdout
    assert len(sandbox.submissions()) == 2


def test_a_dry_run_plans_what_a_real_run_then_pays(
    env: dict[str, str], sandbox: SandboxServer, tmp_path: Path, engine: EngineRunner
) -> None:
    folder = photo_folder(tmp_path / "in", 3)
    (folder / "bad.jpg").write_bytes(b"")
    out = str(tmp_path / "out")
    dry = engine([str(folder)], [20, 21], out=out, dry_run=True)
    assert not dry.completed, "bad.jpg cannot be planned"
    assert sandbox.submissions() == []
    rows = manifest(Path(out))
    assert sorted(row["status"] for row in rows) == ["planned"] * 6 + ["rejected"] * 2
    assert {row["reason"] for row in rows if row["status"] == "planned"} == {"would be submitted"}

    assert not engine([str(folder)], [20, 21], out=out).completed  # bad.jpg, again
    assert len(sandbox.submissions()) == 6
    engine([str(folder)], [20, 21], out=out, dry_run=True)
    rows = manifest(Path(out))
    assert sorted(row["status"] for row in rows) == ["rejected"] * 2 + ["succeeded"] * 6
    assert len(sandbox.submissions()) == 6


def test_budget_cap_holds_under_concurrency_and_a_rerun_continues(
    env: dict[str, str], sandbox: SandboxServer, tmp_path: Path, engine: EngineRunner
) -> None:
    folder = photo_folder(tmp_path / "in", 6)
    out = tmp_path / "out"
    state = engine([str(folder)], [20], out=str(out), max_images=8, concurrency=32)
    assert not state.completed
    assert len(sandbox.submissions()) == 2
    rows = manifest(out)
    assert sorted(row["status"] for row in rows) == ["skipped"] * 4 + ["succeeded"] * 2
    assert all("budget" in row["reason"] for row in rows if row["status"] == "skipped")

    state = engine([str(folder)], [20], out=str(out), max_images=100, concurrency=32)
    assert state.completed, state.message
    submitted = [(s["sha256"], s["template_id"]) for s in sandbox.submissions()]
    assert len(submitted) == 6
    assert len(set(submitted)) == 6


@pytest.mark.usefixtures("prefect_server")
def test_a_large_unattended_run_refuses_without_yes_or_a_cap(
    env: dict[str, str], sandbox: SandboxServer, tmp_path: Path
) -> None:
    folder = photo_folder(tmp_path / "in", 3)
    refused = cli(
        "run",
        str(folder),
        "-t",
        "20",
        "--out",
        str(tmp_path / "out"),
        env={**env, "HIDREAM_CONFIRM_THRESHOLD": "8"},
    )
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert sandbox.submissions() == []
    accepted = cli(
        "run",
        str(folder),
        "-t",
        "20",
        "--out",
        str(tmp_path / "out"),
        "--yes",
        env={**env, "HIDREAM_CONFIRM_THRESHOLD": "8"},
    )
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert len(sandbox.submissions()) == 3


def test_ctrl_c_writes_the_report_and_a_rerun_finishes_without_paying_twice(
    sandbox_factory: SandboxFactory, tmp_path: Path, prefect_server: str
) -> None:
    slow = sandbox_factory(generation_s=6)
    env = {**hidream_env(slow), "PREFECT_API_URL": prefect_server}
    folder = photo_folder(tmp_path / "in", 8)
    out = tmp_path / "out"
    args = ["run", str(folder), "-t", "20", "--out", str(out), "--concurrency", "4"]
    process = subprocess.Popen(
        [sys.executable, "-m", "modelset", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while len(slow.submissions()) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1, output
    rows: dict[str, Any] = {row["item"]: row for row in manifest(out)}
    assert len(rows) == 8
    statuses = {row["status"] for row in rows.values()}
    assert statuses <= {"outcome_unknown", "skipped", "succeeded"}
    assert "outcome_unknown" in statuses
    paid_before = len(slow.submissions())

    rerun = cli(*args, env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    submitted = [(s["sha256"], s["template_id"]) for s in slow.submissions()]
    assert len(submitted) == 8
    assert len(set(submitted)) == 8
    assert paid_before <= 8
    assert all(row["status"] == "succeeded" for row in manifest(out))
    assert json.loads((out / "manifest.jsonl").read_text().splitlines()[0])["outputs"]


def test_a_set_larger_than_assumed_overshoots_the_cap_by_nothing(
    env: dict[str, str],
    sandbox_factory: SandboxFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    engine: EngineRunner,
) -> None:
    sixes = sandbox_factory(images_per_set=6)
    monkeypatch.setenv("HIDREAM_BASE_URL", sixes.base_url)
    folder = photo_folder(tmp_path / "in", 6)
    state = engine([str(folder)], [20], out=str(tmp_path / "out"), max_images=16, concurrency=32)
    assert not state.completed
    assert len(sixes.submissions()) == 2, "6 + 6 fit in 16; a third set of 6 would not"


def answer_prompt(args: list[str], env: dict[str, str], answer: bytes) -> tuple[int, str]:
    """Run `modelset` on a pseudo-terminal, answer its question, return (exit code, screen)."""
    controller, terminal = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "modelset", *args],
        env={**os.environ, **env, "COLUMNS": "120"},
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    screen = b""
    deadline = time.monotonic() + 120
    answered = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed: the process ended
                break
            if not chunk:
                break
            screen += chunk
        if not answered and b"Go on?" in screen:
            os.write(controller, answer)
            answered = True
        if process.poll() is not None and not ready:
            break
    os.close(controller)
    return process.wait(timeout=30), screen.decode(errors="replace")


@pytest.mark.usefixtures("prefect_server")
def test_a_large_interactive_run_asks_first(
    env: dict[str, str], sandbox: SandboxServer, tmp_path: Path
) -> None:
    folder = photo_folder(tmp_path / "in", 3)
    args = ["run", str(folder), "-t", "20", "--out", str(tmp_path / "out")]
    asked = {**env, "HIDREAM_CONFIRM_THRESHOLD": "8"}

    declined, screen = answer_prompt(args, asked, b"n\n")
    assert "would submit 3 tasks generating up to 12 images" in screen
    assert declined == 0
    assert "nothing submitted" in screen
    assert sandbox.submissions() == []

    accepted, screen = answer_prompt(args, asked, b"y\n")
    assert accepted == 0, screen
    assert len(sandbox.submissions()) == 3


@pytest.mark.usefixtures("prefect_server")
def test_a_finished_run_exits_with_its_code_and_its_last_lines_reach_the_server(
    env: dict[str, str], sandbox: SandboxServer, tmp_path: Path
) -> None:
    """``modelset run`` ends without tearing Prefect's modules down
    (``modelset.cli.run.end_without_teardown``): its exit code is still the run's, and
    what the flow run logged last is on the Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    from tests.test_reliability import prefect_run_logs

    folder = photo_folder(tmp_path / "in", 1)
    (folder / "bad.jpg").write_bytes(b"")
    out = str(tmp_path / "out")
    done = cli("run", str(folder), "-t", "20", "--out", out, env=env)
    assert done.returncode == 1, done.stdout + done.stderr  # bad.jpg failed; the rest ran
    assert "rejected" in done.stdout and len(sandbox.submissions()) == 1

    async def this_run() -> str:
        """The flow run of this command (other tests' runs share the server)."""
        async with get_client() as client:
            runs = await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=50)
        [flow_run] = [r for r in runs if (r.parameters.get("options") or {}).get("out") == out]
        return str(flow_run.id)

    assert "report written" in prefect_run_logs([asyncio.run(this_run())])
