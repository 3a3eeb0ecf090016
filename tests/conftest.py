"""Shared fixtures: real servers on 127.0.0.1, real images.

- ``sandbox_factory`` starts sandboxes (the upstream contract) in-process on free ports.
- ``prefect_server`` starts one ``prefect server start`` for the whole session, with its
  own PREFECT_HOME, and points this process (and its children) at it.
- ``s3_server`` starts moto's S3 server and points the ``AWS_*`` variables at it for the
  session; ``bucket`` is a fresh bucket on it, ``careless_bucket`` one behind a proxy that
  drops the conditional-write headers (``careless_s3``, a ``BucketProxy``).
- ``postgres_url`` starts a PostgreSQL 15 for the session (skipped where it is not
  installed); ``prefect_postgres_server`` a second Prefect server on that database.
- ``start_worker`` starts ``prefect worker start`` processes of a pool, each in an empty
  folder of its own (``Worker``; ``worker_env`` points one at a server).
- ``wait_until`` (and ``until`` in a coroutine) waits for something a test knows is
  coming; ``events_caught_up`` for the Prefect server to have stored what this process
  emitted. A test that checks that something did *not* happen waits on the event after
  which it would have, never on a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from PIL import Image, ImageDraw

from modelset.sandbox import SandboxConfig, SandboxServer
from modelset.sandbox.bucket import BucketProxy
from modelset.storage import open_store

TOKEN = "test-token-5f1c"
REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus" / "images"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

T = TypeVar("T")

WAIT_S = 60.0
"""How long a test waits for something it knows is coming. Only a safety net (a wait ends
as soon as the thing happens), so generous: two shared cores can be very busy."""


def _timed_out(within: float, what: str | Callable[[], str]) -> str:
    return f"not within {within:.0f} s: {what() if callable(what) else what}"


def wait_until(
    condition: Callable[[], T],
    *,
    within: float = WAIT_S,
    every: float = 0.02,
    what: str | Callable[[], str] = "",
) -> T:
    """``condition()`` once it is truthy, polled every ``every`` seconds; an
    AssertionError naming ``what`` (a string, or a function giving one) after ``within``."""
    deadline = time.monotonic() + within
    while not (value := condition()):
        assert time.monotonic() < deadline, _timed_out(within, what)
        time.sleep(every)
    return value


async def until(
    condition: Callable[[], T],
    *,
    within: float = WAIT_S,
    every: float = 0.02,
    what: str | Callable[[], str] = "",
) -> T:
    """:func:`wait_until` in a coroutine: sleeps without blocking the event loop."""
    deadline = time.monotonic() + within
    while not (value := condition()):
        assert time.monotonic() < deadline, _timed_out(within, what)
        await asyncio.sleep(every)
    return value


# The modules that cost most (process workers, whole batches, servers of their own),
# dearest first. With `--dist load --maxschedchunk 1` (the Makefile) each pytest worker
# takes the next test from this one queue as it finishes one, so the long tests start
# first, on every worker, and the cheap ones fill in at the end: no worker is left
# running a long test alone while the others idle.
DEAREST_FIRST = (
    "test_workers.py",
    "test_infrastructure_faults.py",
    "test_review_deployments.py",
    "test_callback_flow.py",
    "test_reliability.py",
    "test_budget.py",
    "test_plan.py",
    "test_crash_recovery.py",
    "test_bucket_runs.py",
    "test_deployments.py",
    "test_run_graph.py",
    "test_unattended.py",
    "test_inbox.py",
    "test_postgres_server.py",
)


def pytest_configure(config: pytest.Config) -> None:
    """A suite started in the background (``cmd &`` in a script) inherits SIGINT ignored,
    and so would every process it starts: ``prefect worker start`` stops on SIGTERM by
    sending itself SIGINT, and a worker that ignores it never stops (each took its 30 s
    grace period, then SIGKILL). Started processes get the default disposition back."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def cost_rank(item: pytest.Item) -> int:
        name = item.path.name
        return DEAREST_FIRST.index(name) if name in DEAREST_FIRST else len(DEAREST_FIRST)

    items.sort(key=cost_rank)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_photo(
    path: Path, size: tuple[int, int] = (600, 800), colour: tuple[int, int, int] = (180, 90, 60)
) -> Path:
    """A small real JPEG with some structure (a lighter 'head' near the top), and blocks
    placed by the file's name: photos of other names are other pictures, never taken for
    near-duplicates of each other."""
    image = Image.new("RGB", size, colour)
    width, height = size
    head = Image.new("RGB", (width // 3, height // 5), (240, 210, 190))
    image.paste(head, (width // 3, height // 12))
    draw = ImageDraw.Draw(image)
    rng = random.Random(path.name)
    for _ in range(4):
        x, y = rng.randrange(width), rng.randrange(height // 3, height)
        side = min(width, height) // rng.randint(4, 8)
        shade = tuple(rng.randrange(256) for _ in range(3))
        draw.rectangle((x, y, x + side, y + side), fill=shade)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=90)
    return path


SandboxFactory = Callable[..., SandboxServer]

# A dead or finished run's hold on a bucket's ledger key lasts a lease: short ones, so a
# rerun or a collector does not wait long. A lease must outlast a whole send:
# (2 + 5) s x 2 attempts.
SHORT_LEASES = {
    "HIDREAM_LEDGER_LEASE": "15",
    "HIDREAM_CONNECT_TIMEOUT": "2",
    "HIDREAM_READ_TIMEOUT": "5",
    "HIDREAM_SUBMIT_TIMEOUT": "5",
    "HIDREAM_MAX_ATTEMPTS": "2",
}


@pytest.fixture
def sandbox_factory() -> Iterator[SandboxFactory]:
    started: list[SandboxServer] = []

    def start(**overrides: Any) -> SandboxServer:
        options: dict[str, Any] = {
            "port": 0,
            "token": TOKEN,
            "latency_ms": 0,
            "generation_s": 0.4,
            "images_per_set": 4,
            "seed": 7,
        }
        options.update(overrides)
        server = SandboxServer(SandboxConfig(**options))
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def sandbox(sandbox_factory: SandboxFactory) -> SandboxServer:
    return sandbox_factory()


def hidream_env(sandbox: SandboxServer, out: Path | None = None, **extra: str) -> dict[str, str]:
    """The HIDREAM_* variables that point a run at ``sandbox`` (and at ``out``)."""
    values = {
        "HIDREAM_BASE_URL": sandbox.base_url,
        "HIDREAM_API_TOKEN": TOKEN,
        "HIDREAM_ALLOW_PRIVATE_URLS": "true",
        "HIDREAM_POLL_INTERVAL": "0.2",
        "HIDREAM_POLL_MAX_INTERVAL": "0.5",
        **extra,
    }
    if out is not None:
        values["HIDREAM_OUTPUT_DIR"] = str(out)
    return values


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer) -> dict[str, str]:
    """This process's settings point at the test's sandbox."""
    values = hidream_env(sandbox)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def wait_until_healthy(
    url: str, process: subprocess.Popen[bytes], *, within: float, log: Path
) -> None:
    """Wait for ``url`` to answer 200 while ``process`` lives; fail with its log."""
    deadline = time.monotonic() + within
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{url} did not come up; see {log}")
        time.sleep(0.3)


@contextlib.contextmanager
def environment(values: dict[str, str], *, removed: Iterable[str] = ()) -> Iterator[None]:
    """``os.environ`` with ``values`` set and ``removed`` unset, restored afterwards (so
    subprocesses started meanwhile inherit them)."""
    removed = tuple(removed)
    previous = {key: os.environ.get(key) for key in (*values, *removed)}
    os.environ.update(values)
    for key in removed:
        os.environ.pop(key, None)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


DATABASE_URL_SETTINGS = frozenset(
    {"PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL"}
)


def migrated_sqlite_database() -> Path:
    """A SQLite database Prefect has migrated, made once per machine and Prefect version
    (every pytest worker waits for the first to make it) and copied into a new server's
    home: migrating a fresh one costs a server start 5 s of CPU, and 30 s of waiting on
    a loaded machine."""
    from prefect import __version__

    folder = Path(tempfile.gettempdir()) / f"modelset-tests-prefect-{__version__}"
    folder.mkdir(exist_ok=True)
    database = folder / "prefect.db"
    with (folder / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not database.exists():
            making = Path(tempfile.mkdtemp(dir=folder))
            env = {k: v for k, v in os.environ.items() if k not in DATABASE_URL_SETTINGS}
            subprocess.run(
                [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
                env={**env, "PREFECT_HOME": str(making)},
                check=True,
                capture_output=True,
                timeout=300,
            )
            with contextlib.closing(sqlite3.connect(making / "prefect.db")) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            (making / "prefect.db").rename(database)
            shutil.rmtree(making)
    return database


def start_prefect_server(
    home: Path, *, within: float = 120, port: int | None = None, **settings: str
) -> tuple[subprocess.Popen[bytes], str]:
    """``prefect server start`` on ``port`` (a free one by default) with its own
    PREFECT_HOME; returns the process and its API URL once it answers. A new home on
    SQLite starts from an already migrated database."""
    home.mkdir(parents=True, exist_ok=True)
    if not DATABASE_URL_SETTINGS & settings.keys() and not (home / "prefect.db").exists():
        shutil.copyfile(migrated_sqlite_database(), home / "prefect.db")
    port = port or free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_API_URL": api_url,
        **settings,
    }
    log_path = home / "server.log"
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*command, "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    wait_until_healthy(f"{api_url}/health", process, within=within, log=log_path)
    return process, api_url


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real Prefect server for the session; yields its API URL."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path_factory.mktemp("prefect-home")
    process, api_url = start_prefect_server(home)
    try:
        with (
            environment({"PREFECT_API_URL": api_url, "PREFECT_HOME": str(home)}),
            temporary_settings({PREFECT_API_URL: api_url}),
        ):
            yield api_url
            # Deliver buffered run logs while the server still listens.
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)
    finally:
        stop_process(process)


# --- S3: moto's server, fresh buckets, and a careless proxy in front of it ------------------

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
}
# Anything that could point obstore or boto3 at real credentials or another endpoint.
S3_ENV_CLEARED = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT", "AWS_DEFAULT_REGION")


def stop_process(process: subprocess.Popen[bytes], *, within: float = 20) -> None:
    process.terminate()
    try:
        process.wait(timeout=within)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=within)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's standalone S3 server in a subprocess for the session (its conditional
    writes made atomic, as S3's are: ``modelset.sandbox.s3``); yields its endpoint.

    For the whole session ``AWS_ENDPOINT_URL`` and test credentials are set in
    ``os.environ``, so obstore here and in subprocesses of tests reaches it.
    """
    folder = tmp_path_factory.mktemp("moto")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = folder / "moto.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelset.sandbox.s3", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
    wait_until_healthy(f"{endpoint}/", process, within=60, log=log_path)
    values = {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}
    try:
        with environment(values, removed=S3_ENV_CLEARED):
            yield endpoint
    finally:
        stop_process(process)


def make_bucket(endpoint: str) -> str:
    """A new, empty bucket on the S3 server at ``endpoint``; returns its name."""
    import boto3

    name = f"modelset-{uuid.uuid4().hex[:16]}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3_ENV["AWS_REGION"],
        aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
    )
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def bucket(s3_server: str) -> str:
    """A fresh bucket on the session's S3 server: ``s3://<name>/out`` (a prefix in it)."""
    return f"s3://{make_bucket(s3_server)}/out"


@pytest.fixture(params=["folder", "bucket"])
def out_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An output location, once a local folder and once an ``s3://`` prefix of a fresh
    bucket: a test that takes it runs on both kinds of store."""
    if request.param == "folder":
        return str(tmp_path / "out")
    location: str = request.getfixturevalue("bucket")
    return location


@pytest.fixture(scope="session")
def careless_s3(s3_server: str) -> Iterator[BucketProxy]:
    """A proxy in front of ``s3_server`` that drops If-None-Match and If-Match."""
    proxy = BucketProxy(s3_server, drop_conditions=True).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def careless_bucket(careless_s3: BucketProxy, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://<name>/out`` of a fresh bucket, reached only through the careless proxy:
    ``AWS_ENDPOINT_URL`` points at the proxy for this test."""
    name = make_bucket(careless_s3.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", careless_s3.url)
    return f"s3://{name}/out"


# --- PostgreSQL 15, and a Prefect server on it ----------------------------------------------

POSTGRES_MISSING = "PostgreSQL 15 is not installed: apt-get install postgresql"


def postgres_bindir() -> Path | None:
    candidates = [Path("/usr/lib/postgresql/15/bin")]
    if shutil.which("pg_config"):
        found = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if found:
            candidates.append(Path(found))
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("postgres", "initdb", "pg_ctl", "psql")):
            version = subprocess.run(
                [str(folder / "postgres"), "--version"], capture_output=True, text=True
            ).stdout
            if " 15." in version:
                return folder
    return None


@dataclass
class Postgres:
    """The session's PostgreSQL: its ``prefect`` database's URL, and what a test about
    the database itself may do with it."""

    url: str
    run: Callable[..., None]
    pg_ctl: list[str]
    admin: list[str]

    def restart(self) -> None:
        """Stop (dropping every connection) and start again, as a failover would."""
        self.run(*self.pg_ctl, "-m", "fast", "-w", "restart")

    def create_database(self, name: str) -> str:
        """A new, empty database owned by the session's user; returns its URL."""
        owner = self.url.split("//", 1)[1].split(":", 1)[0]
        self.run(*self.admin, "-d", "postgres", "-c", f"CREATE DATABASE {name} OWNER {owner}")
        return self.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL 15 for the session on 127.0.0.1 (a free port), with a database
    ``prefect`` owned by a password user (skipped where it is not installed)."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(POSTGRES_MISSING)
    as_user: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip(POSTGRES_MISSING)
        as_user = ["runuser", "-u", "postgres", "--"]
    # Not below pytest's temp folder: that one is private to root.
    folder = Path(tempfile.mkdtemp(prefix="modelset-pg-"))
    if owner is not None:
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    data, sockets, log = folder / "data", folder / "sockets", folder / "postgres.log"
    port = free_port()

    def run(*command: str, **env: str) -> None:
        done = subprocess.run(
            [*as_user, *command],
            cwd=folder,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stderr or done.stdout}")

    run("mkdir", "-m", "700", str(sockets))
    run(
        str(bindir / "initdb"),
        "-D",
        str(data),
        "-U",
        "postgres",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "-E",
        "UTF8",
        "--no-sync",
    )
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    user, password = "modelset", secrets.token_hex(12)
    try:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start")
        admin = [str(bindir / "psql"), "-h", str(sockets), "-p", str(port), "-U", "postgres"]
        admin += ["-v", "ON_ERROR_STOP=1", "-q"]
        run(*admin, "-d", "postgres", "-c", f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
        run(*admin, "-d", "postgres", "-c", f"CREATE DATABASE prefect OWNER {user}")
        # Prefect's migration creates pg_trgm as this user, over TCP with the password:
        # check exactly that path (a trusted extension, which a database owner may create).
        run(
            str(bindir / "psql"),
            *("-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", "prefect"),
            *("-v", "ON_ERROR_STOP=1", "-q"),
            *("-c", "CREATE EXTENSION IF NOT EXISTS pg_trgm"),
            PGPASSWORD=password,
        )
        pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options]
        yield Postgres(
            f"postgresql+asyncpg://{user}:{password}@127.0.0.1:{port}/prefect", run, pg_ctl, admin
        )
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            cwd=folder,
            capture_output=True,
            timeout=120,
            check=False,
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres: Postgres) -> str:
    """The ``postgresql+asyncpg://`` URL of the session PostgreSQL's ``prefect`` database."""
    return postgres.url


@pytest.fixture(scope="session")
def prefect_postgres_server(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A second ``prefect server start`` for the session, on ``postgres_url``; yields its
    API URL. This process's PREFECT_API_URL is left alone: pass the URL to subprocesses."""
    home = tmp_path_factory.mktemp("prefect-postgres-home")
    process, api_url = start_prefect_server(
        home,
        within=180,
        PREFECT_API_DATABASE_CONNECTION_URL=postgres_url,
        PREFECT_SERVER_DATABASE_CONNECTION_URL=postgres_url,
    )
    try:
        yield api_url
    finally:
        stop_process(process)


# --- Prefect workers, each in an empty folder of its own -----------------------------------

PREFECT = [sys.executable, "-m", "prefect"]
PROCESS_POOL = "modelset-process"
MANUAL = "generate-model-sets/manual"


def children_of(pid: int) -> list[int]:
    """Every process below ``pid`` (its flow runs, and theirs), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            # "pid (comm) state ppid ...": comm may hold spaces, so split after ")".
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def signal_tree(pid: int, signum: signal.Signals) -> list[int]:
    """Send ``signum`` to ``pid`` and every process below it; returns them."""
    targets = [pid, *children_of(pid)]
    for target in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signum)
    return targets


def stop_between_sends(pid: int, out: str, timeout_s: float = 60) -> None:
    """Leave the processes of ``pid`` stopped (SIGSTOP) at a moment when no send of the
    batch in ``out`` is between its recorded intent and its recorded answer: stopped,
    looked at, and let go again until then.

    A send caught there has an unknown outcome by design, which ``test_crash_recovery.py``
    covers; on a loaded machine the window is wide enough to be hit by chance, and a test
    of a machine dying between sends needs that."""
    from modelset.ledger import open_ledger

    ledger = open_ledger(open_store(out))
    deadline = time.monotonic() + timeout_s
    while True:
        signal_tree(pid, signal.SIGSTOP)
        if not ledger.unknown_sends():
            return
        signal_tree(pid, signal.SIGCONT)
        assert time.monotonic() < deadline, "no moment without a send in flight"
        time.sleep(0.05)


@dataclass
class Worker:
    """``prefect worker start`` in a folder of its own (which must stay empty)."""

    process: subprocess.Popen[bytes]
    cwd: Path
    log: Path

    def kill_with_its_runs(self) -> list[int]:
        """SIGKILL the worker and every flow run it started, as a machine that dies."""
        doomed = signal_tree(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        return doomed

    def kill_between_sends(self, out: str) -> list[int]:
        """Kill the worker with its runs at a moment when none of them is mid-send."""
        stop_between_sends(self.process.pid, out)
        return self.kill_with_its_runs()

    def stop(self) -> None:
        runs = children_of(self.process.pid)
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        for pid in runs:  # flow runs left behind (a batch killed on purpose, say)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def worker_env(api_url: str, home: Path, **extra: str) -> dict[str, str]:
    """A subprocess's environment: this Prefect server (named explicitly), its own
    PREFECT_HOME, quick polling."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(home),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        **extra,
    }


StartWorker = Callable[..., Worker]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[StartWorker]:
    """Starts workers of a pool (``modelset-process`` unless named), each in a fresh, empty
    folder, with any further ``prefect worker start`` options; stops them all after."""
    started: list[Worker] = []

    def start(env: dict[str, str], name: str, pool: str = PROCESS_POOL, *options: str) -> Worker:
        cwd = tmp_path / "machines" / name
        cwd.mkdir(parents=True)
        log = tmp_path / f"{name}.log"
        process = subprocess.Popen(
            [*PREFECT, "worker", "start", "--pool", pool, "--name", name, *options],
            cwd=cwd,
            env={**env, "PREFECT_HOME": str(tmp_path / "homes" / name)},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        worker = Worker(process, cwd, log)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.stop()


def assert_empty(workers: list[Worker]) -> None:
    for worker in workers:
        assert list(worker.cwd.iterdir()) == [], f"{worker.cwd} is not empty"


def images_in(location: str, item: str) -> list[str]:
    return [key for key in open_store(location).list(f"{item}/20") if key.endswith(".jpg")]


# --- The fault matrix's harness ---------------------------------------------------------


@pytest.fixture
def harness(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> Any:
    """Runs the batch flow in this process and checks it (``test_reliability.Harness``;
    imported here only when a test asks, since it imports the flows)."""
    from tests.test_reliability import Harness

    caplog.set_level(logging.DEBUG)
    return Harness(monkeypatch, caplog, capsys)


# --- Prefect events -----------------------------------------------------------------------


async def stored_events(name: str, resource_id: str) -> list[Any]:
    """The events of ``name`` about ``resource_id`` the Prefect server has stored."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    async with get_client() as prefect:
        # limit: the client's default (100) is over what the 3.9.1 server accepts (50).
        page = await prefect.read_events(
            filter=EventFilter(
                event=EventNameFilter(name=[name]), resource=EventResourceFilter(id=[resource_id])
            ),
            limit=10,
        )
    return list(page.events)


async def wait_for_events(
    name: str,
    resource_id: str,
    *,
    at_least: int = 1,
    within: float = WAIT_S,
    where: Callable[[Any], bool] = lambda event: True,
) -> list[Any]:
    """The stored events of ``name`` about ``resource_id`` that ``where`` keeps, once
    there are ``at_least`` of them (or ``within`` seconds passed)."""
    deadline = time.monotonic() + within
    while True:
        events = [event for event in await stored_events(name, resource_id) if where(event)]
        if len(events) >= at_least or time.monotonic() > deadline:
            return events
        await asyncio.sleep(0.5)


# --- the engine, through each orchestrator -------------------------------------------------


@dataclass
class EngineRun:
    """How a batch ended, the same whichever orchestrator ran it."""

    completed: bool
    message: str


EngineRunner = Callable[..., EngineRun]


@pytest.fixture(params=["in-process", "prefect"])
def engine(request: pytest.FixtureRequest) -> EngineRunner:
    """Runs a batch with the engine's in-process orchestrator (no Prefect server at all)
    or as the ``generate-model-sets`` flow on the session's Prefect server:
    ``engine(sources, template_ids, **options)``. The planning tests run on both."""
    from modelset.options import RunOptions

    if request.param == "in-process":
        from modelset.batch import InProcess, run_batch

        def in_process(sources: list[str], template_ids: list[int], **options: Any) -> EngineRun:
            summary = asyncio.run(
                run_batch(sources, template_ids, RunOptions(**options), InProcess())
            )
            failed = summary.failed or bool(summary.plan.account_error or summary.plan.refused)
            return EngineRun(completed=not failed, message=summary.message())

        return in_process

    request.getfixturevalue("prefect_server")
    from modelset.flows.generate import generate_model_sets

    def as_flow(sources: list[str], template_ids: list[int], **options: Any) -> EngineRun:
        async def go() -> Any:
            return await generate_model_sets(
                sources, template_ids, RunOptions(**options), return_state=True
            )

        state = asyncio.run(go())
        return EngineRun(completed=state.is_completed(), message=state.message or "")

    return as_flow


CAUGHT_UP_EVENT = "modelset.tests.caught-up"


async def events_caught_up(within: float = WAIT_S) -> None:
    """Return once the Prefect server has stored (or, an id it had seen, dropped) every
    event this process emitted before the call.

    A marker event follows them through the same events worker, in order on its one
    connection; the server puts what a connection sends into its event persister's one
    queue in that order and writes the queue whole, so the marker stored means the events
    before it were written or dropped. Waiting for the marker is waiting for them.
    """
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    marker = f"modelset.tests.marker.{uuid.uuid4()}"
    assert emit_event(event=CAUGHT_UP_EVENT, resource={"prefect.resource.id": marker})
    await asyncio.to_thread(EventsWorker.drain_all)
    stored = await wait_for_events(CAUGHT_UP_EVENT, marker, within=within)
    assert stored, f"the Prefect server stored no marker event within {within:.0f} s"
