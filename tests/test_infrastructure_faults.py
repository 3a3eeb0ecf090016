"""When the parts fail, not the upstream: a throttling or unreachable bucket, a Prefect
server killed and started again, its PostgreSQL restarted, during a batch.

Each test ends the same way: no photo+template accepted twice in the sandbox's log,
every photo+template succeeded or given a reason, and a rerun that submits nothing and
writes the whole report. (A process worker killed with its flow runs during a bucket
run is ``test_workers.test_production_shaped_workers_survive_a_dead_worker_and_pay_once``.)

The figures of each run are logged on ``tests.infrastructure`` (``-o log_cli=true``):
they are the ones in docs/reliability.md.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from modelset.sandbox import SandboxServer
from modelset.sandbox.bucket import BucketFaults, BucketProxy
from tests.conftest import (
    REPO,
    TOKEN,
    Postgres,
    SandboxFactory,
    free_port,
    hidream_env,
    make_bucket,
    make_photo,
    start_prefect_server,
    stop_process,
)
from tests.test_reliability import (
    MATRIX_SANDBOX,
    Harness,
    accepted_twice,
    check_batch,
)

figures = logging.getLogger("tests.infrastructure")
AWS_SECRET = "aws-secret-never-printed-5Rt"
STORE_ENV = {"HIDREAM_STORE_TIMEOUT": "3", "HIDREAM_STORE_RETRY_BUDGET": "60"}
# What S3 does under load: throttling, internal errors, dropped connections, some of
# them after the write reached the store.
LOADED_BUCKET = BucketFaults(slowdown=0.10, internal=0.05, reset_before=0.01, reset_after=0.01)


def make_batch(folder: Path, photos: int) -> Path:
    for index in range(photos):
        colour = (index * 5 % 256, index * 37 % 256, index * 91 % 256)
        make_photo(folder / f"p{index:02d}.jpg", size=(96, 128), colour=colour)
    return folder


@pytest.fixture
def faulty_bucket(
    s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[BucketProxy, str]]:
    """A fresh bucket reached only through a fault proxy (no faults until set), with an
    AWS secret that the tests look for in every output."""
    proxy = BucketProxy(s3_server, seed=5, stall_s=4).start()
    name = make_bucket(s3_server)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)  # moto takes any
    try:
        yield proxy, f"s3://{name}/out"
    finally:
        proxy.stop()


# -- the bucket, under a run in this process -----------------------------------------------


@pytest.mark.usefixtures("prefect_server")
def test_a_throttling_and_dropping_bucket_costs_retries_not_sets(
    harness: Harness,
    sandbox_factory: SandboxFactory,
    faulty_bucket: tuple[BucketProxy, str],
    tmp_path: Path,
) -> None:
    proxy, out = faulty_bucket
    harness.secrets = (*harness.secrets, AWS_SECRET)
    batch = make_batch(tmp_path / "batch", 60)
    sandbox = sandbox_factory(**MATRIX_SANDBOX)
    harness.point_at(sandbox, **STORE_ENV)
    proxy.set_faults(LOADED_BUCKET)

    first = harness.run([str(batch)], out)
    faults = {name: proxy.counts[name] for name in LOADED_BUCKET.model_dump()}
    requests = proxy.counts["requests"]
    assert first.is_completed(), first.message
    assert len(sandbox.submissions()) == 60
    rerun = harness.run([str(batch)], out)  # faults still on
    assert rerun.is_completed(), rerun.message

    proxy.set_faults(BucketFaults())
    check_batch(out, sandbox, photos=60)
    assert len(sandbox.submissions()) == 60, "the rerun submitted again"
    assert faults["slowdown"] >= 20 and faults["internal"] >= 10, faults
    assert faults["reset_before"] + faults["reset_after"] >= 2, faults
    harness.assert_no_secrets(out)
    figures.info(
        "throttling bucket: %d requests, faults %s, runs %s s, %d submissions, 0 twice",
        requests,
        faults,
        [round(seconds, 1) for seconds in harness.elapsed],
        len(sandbox.submissions()),
    )


@pytest.mark.usefixtures("prefect_server")
def test_a_bucket_unreachable_for_20_s_mid_batch_is_waited_out(
    harness: Harness,
    sandbox_factory: SandboxFactory,
    faulty_bucket: tuple[BucketProxy, str],
    tmp_path: Path,
) -> None:
    proxy, out = faulty_bucket
    harness.secrets = (*harness.secrets, AWS_SECRET)
    batch = make_batch(tmp_path / "batch", 30)
    sandbox = sandbox_factory(**{**MATRIX_SANDBOX, "generation_s": 1.0})
    harness.point_at(sandbox, **STORE_ENV)
    went_down = threading.Event()

    def outage_once_submitting() -> None:
        deadline = time.monotonic() + 60
        while len(sandbox.submissions()) < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        proxy.outage(20)
        went_down.set()

    threading.Thread(target=outage_once_submitting, daemon=True).start()
    state = harness.run([str(batch)], out)
    refused = proxy.counts["outage"]  # the run's requests the outage turned away
    assert went_down.is_set()
    assert state.is_completed(), state.message
    assert refused >= 5, "the outage did not meet the run"
    assert len(sandbox.submissions()) == 30
    rerun = harness.run([str(batch)], out)
    assert rerun.is_completed(), rerun.message
    check_batch(out, sandbox, photos=30)
    assert len(sandbox.submissions()) == 30, "the rerun submitted again"
    harness.assert_no_secrets(out)
    figures.info(
        "bucket unreachable 20 s: %d connections refused, runs %s s, %d submissions, 0 twice",
        refused,
        [round(seconds, 1) for seconds in harness.elapsed],
        len(sandbox.submissions()),
    )


# -- the Prefect server and its database, under `modelset run` -------------------------------

PHOTOS = 16


@dataclass
class KillableServer:
    """A ``prefect server start`` of a test's own, which it may kill and start again on
    the same port and database."""

    home: Path
    settings: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    api_url: str = ""

    def start(self) -> KillableServer:
        self.home.mkdir(parents=True, exist_ok=True)
        port = int(self.api_url.rsplit(":", 1)[1].split("/")[0]) if self.api_url else None
        self.process, self.api_url = start_prefect_server(
            self.home, within=180, port=port, **self.settings
        )
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process)


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[KillableServer]:
    server = KillableServer(tmp_path / "prefect-sqlite", {}).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def postgres_server(
    postgres: Postgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KillableServer]:
    url = postgres.create_database(f"faults_{os.getpid()}")
    settings = {
        "PREFECT_API_DATABASE_CONNECTION_URL": url,
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": url,
    }
    server = KillableServer(tmp_path_factory.mktemp("prefect-pg"), settings).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Batch:
    """``modelset run`` of 16 photos into a folder, against ``server``."""

    server: KillableServer
    sandbox: SandboxServer
    tmp_path: Path
    outputs: list[str] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)
    elapsed: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.photos = make_batch(self.tmp_path / "photos", PHOTOS)
        self.out = self.tmp_path / "out"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            **hidream_env(
                self.sandbox,
                HIDREAM_READ_TIMEOUT="5",
                HIDREAM_SUBMIT_TIMEOUT="5",
                HIDREAM_CONNECT_TIMEOUT="2",
            ),
            "PREFECT_API_URL": self.server.api_url,
        }

    def command(self) -> list[str]:
        return [
            *(sys.executable, "-m", "modelset", "run", str(self.photos), "-t", "20"),
            *("--out", str(self.out), "--concurrency", "4", "--yes"),
        ]

    def run(self, during: Callable[[], None] | None = None) -> int:
        """The batch; ``during`` is called once its first set is submitted."""
        started = time.monotonic()
        log = self.tmp_path / f"run-{len(self.codes)}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                self.command(), cwd=REPO, env=self.env(), stdout=sink, stderr=subprocess.STDOUT
            )
            try:
                if during is not None:
                    deadline = time.monotonic() + 90
                    while not self.sandbox.submissions():
                        assert process.poll() is None, log.read_text()[-3000:]
                        assert time.monotonic() < deadline, "nothing was submitted"
                        time.sleep(0.02)
                    during()
                process.wait(timeout=300)
            finally:
                process.kill()
        self.elapsed.append(time.monotonic() - started)
        self.outputs.append(log.read_text(errors="replace"))
        self.codes.append(process.returncode)
        return process.returncode

    def finish(self) -> None:
        """Rerun until the batch is done (at most twice), then once more: that last run
        must submit nothing; then the usual checks."""
        for _ in range(2):
            if self.codes[-1] == 0:
                break
            self.run()
        assert self.codes[-1] == 0, self.outputs[-1][-3000:]
        paid = len(self.sandbox.submissions())
        assert self.run() == 0, self.outputs[-1][-3000:]
        assert len(self.sandbox.submissions()) == paid, "a rerun of a finished batch paid"
        assert paid == PHOTOS
        assert accepted_twice(self.sandbox) == []
        check_batch(str(self.out), self.sandbox, photos=PHOTOS)
        for output in self.outputs:
            assert TOKEN not in output
            assert "Traceback" not in output, output[-3000:]


def kill_and_restart_after(server: KillableServer, seconds: float) -> Callable[[], None]:
    def during() -> None:
        server.kill()
        time.sleep(seconds)
        server.start()

    return during


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_prefect_server_killed_mid_batch_and_started_again_costs_no_set_twice(
    database: str, sandbox_factory: SandboxFactory, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    fixture = {"sqlite": "sqlite_server", "postgresql": "postgres_server"}[database]
    server: KillableServer = request.getfixturevalue(fixture)
    batch = Batch(server, sandbox_factory(generation_s=1.5, images_per_set=2), tmp_path)
    batch.run(during=kill_and_restart_after(server, 10))
    first = batch.codes[0], batch.elapsed[0]
    batch.finish()
    figures.info(
        "prefect server (%s) killed, back after 10 s: first run exit %d in %.1f s, runs %s",
        database,
        *first,
        list(zip(batch.codes, [round(s, 1) for s in batch.elapsed], strict=True)),
    )


def test_postgresql_restarted_under_a_running_server_mid_batch_costs_no_set_twice(
    postgres: Postgres,
    postgres_server: KillableServer,
    sandbox_factory: SandboxFactory,
    tmp_path: Path,
) -> None:
    batch = Batch(postgres_server, sandbox_factory(generation_s=1.5, images_per_set=2), tmp_path)
    batch.run(during=postgres.restart)
    first = batch.codes[0], batch.elapsed[0]
    batch.finish()
    figures.info(
        "postgresql restarted under the server: first run exit %d in %.1f s, runs %s",
        *first,
        list(zip(batch.codes, [round(s, 1) for s in batch.elapsed], strict=True)),
    )


def modelset_run(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """``modelset run ARGS``: its exit code and what it said, white space folded (rich
    wraps long lines)."""
    done = subprocess.run(
        [sys.executable, "-m", "modelset", "run", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, " ".join((done.stdout + done.stderr).split())


@pytest.mark.usefixtures("prefect_server")
def test_a_bucket_down_past_the_budget_says_what_failed_and_how_to_finish(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    photo = make_photo(tmp_path / "look.jpg")
    env = {
        **os.environ,
        **hidream_env(sandbox, HIDREAM_STORE_RETRY_BUDGET="1"),
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "AWS_REGION": "us-east-1",
    }
    code, said = modelset_run(
        [str(photo), "-t", "20", "--out", "s3://catalogue/out", "--yes"], env, tmp_path
    )
    assert code == 1, said
    assert "the output location failed: s3://catalogue/out" in said, said
    assert "Run the same command again to finish" in said, said
    assert "Traceback" not in said and "obstore" not in said
    assert AWS_SECRET not in said and TOKEN not in said
    assert sandbox.submissions() == []


def test_an_unreachable_prefect_server_says_so_and_how_to_finish(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    photo = make_photo(tmp_path / "look.jpg")
    env = {
        **os.environ,
        **hidream_env(sandbox),
        "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",  # nothing listens there
    }
    code, said = modelset_run([str(photo), "-t", "20", "--yes"], env, tmp_path)
    assert code == 1, said
    assert "the Prefect server did not answer" in said, said
    assert "run the same command again" in said, said
    assert "Traceback" not in said and TOKEN not in said
    assert sandbox.submissions() == []
