"""The servers a benchmark runs against, each its own process on 127.0.0.1.

- :class:`Sandbox`: ``.venv/bin/modelset sandbox`` on a free port (fresh state each time, so
  no run profits from images another run made it render).
- :class:`PrefectServer`: ``prefect server start`` with its own temporary ``PREFECT_HOME``.
- :class:`S3Server`: moto's S3-compatible server (``python -m modelset.sandbox.s3``), for the
  figures with ``--out s3://...``, behind a proxy that adds a bucket's latency to every
  request (``python -m modelset.sandbox.bucket``); the server's request log is what
  :meth:`S3Server.requests_since` reads.

All wait until healthy, and stop with SIGTERM (SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from modelset import layout

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TOKEN = "bench-token-7d1e"
QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_environment() -> dict[str, str]:
    """This process's environment without any HIDREAM_*, PREFECT_* or AWS_* setting."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HIDREAM_", "PREFECT_", "AWS_"))
    }
    env.update(QUIET_ENV)
    return env


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(trust_env=False, timeout=2.0) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return
            if process.poll() is not None or time.monotonic() > deadline:
                _stop(process)
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"{url} did not become healthy; log {log}:\n{tail}")
            time.sleep(0.1)


def _start_healthy(
    command: list[str],
    log: Path,
    health_url: str,
    timeout_s: float,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``command`` with its output in ``log``; return once ``health_url`` answers."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env=clean_environment() if env is None else env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    _wait_healthy(health_url, process, timeout_s, log)
    return process


def _stop(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


class _Server:
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Sandbox(_Server):
    """``modelset sandbox`` in its own process."""

    def __init__(
        self,
        logs: Path,
        *,
        latency_ms: int = 200,
        generation_s: float = 2.0,
        images_per_set: int = 4,
        name: str = "sandbox",
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.token = TOKEN
        self.latency_ms = latency_ms
        self.generation_s = generation_s
        self.images_per_set = images_per_set
        self.log = logs / f"{name}.log"

    def start(self) -> Self:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        command = [
            str(BIN / "modelset"),
            "sandbox",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--token",
            self.token,
            "--latency-ms",
            str(self.latency_ms),
            "--generation-s",
            str(self.generation_s),
            "--images-per-set",
            str(self.images_per_set),
        ]
        self.process = _start_healthy(command, self.log, f"{self.base_url}/_sandbox/health", 30)
        return self

    def submissions(self) -> list[dict[str, Any]]:
        with httpx.Client(trust_env=False, timeout=30) as client:
            answer = client.get(f"{self.base_url}/_sandbox/submissions")
            answer.raise_for_status()
            found: list[dict[str, Any]] = answer.json()["submissions"]
            return found

    def first_submit_after(self, started_at: float, before: int = 0) -> float | None:
        """Seconds from ``started_at`` (wall clock) to the first submission after the
        first ``before`` ones, by the sandbox's own log of them; None if there is none."""
        times = [
            datetime.fromisoformat(submission["time"]).timestamp()
            for submission in self.submissions()[before:]
        ]
        return min(times) - started_at if times else None

    def client_env(self) -> dict[str, str]:
        """What a ``modelset`` process needs to talk to this sandbox."""
        return {
            "HIDREAM_BASE_URL": self.base_url,
            "HIDREAM_API_TOKEN": self.token,
            "HIDREAM_ALLOW_PRIVATE_URLS": "true",
        }


class PrefectServer(_Server):
    """``prefect server start`` with a temporary PREFECT_HOME, UI off."""

    def __init__(self, logs: Path) -> None:
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.home = Path(tempfile.mkdtemp(prefix="bench-prefect-home-"))
        self.log = logs / "prefect-server.log"
        self.started_in_s = 0.0

    def start(self) -> Self:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = clean_environment()
        env.update(
            {
                "PREFECT_HOME": str(self.home),
                "PREFECT_UI_ENABLED": "false",
                "PREFECT_API_URL": self.api_url,
            }
        )
        command = [
            str(BIN / "python"),
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        started = time.perf_counter()
        self.process = _start_healthy(command, self.log, f"{self.api_url}/health", 120, env=env)
        self.started_in_s = time.perf_counter() - started
        return self

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.home, ignore_errors=True)


S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_REGION": "us-east-1",
}
_REQUEST = re.compile(r'"(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP/[\d.]+" (\d{3})')


class S3Server(_Server):
    """moto's S3 server (``python -m modelset.sandbox.s3``) in its own process, objects in memory.

    A stand-in for a bucket: no network latency, but its CPU is this machine's (it is
    watched beside the sandbox's). Every request is one line of its log.
    """

    def __init__(self, logs: Path, latency_ms: float = 20.0) -> None:
        self.port = free_port()
        self.server_endpoint = f"http://127.0.0.1:{self.port}"
        # Clients reach it through a proxy that adds a bucket's latency to every request
        # (``modelset.sandbox.bucket``): 20 ms is a bucket in the workers' own region.
        self.latency_ms = latency_ms
        self.proxy_port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.proxy_port}"
        self.log = logs / "s3-server.log"
        self.proxy_log = logs / "s3-proxy.log"
        self.started_in_s = 0.0
        self.proxy: subprocess.Popen[bytes] | None = None
        self._buckets = 0

    @property
    def proxy_pid(self) -> int:
        assert self.proxy is not None
        return self.proxy.pid

    def stop(self) -> None:
        if self.proxy is not None:
            _stop(self.proxy)
        super().stop()

    def start(self) -> Self:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        command = [
            str(BIN / "python"),
            "-m",
            "modelset.sandbox.s3",
            "-H",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        started = time.perf_counter()
        self.process = _start_healthy(
            command, self.log, f"{self.server_endpoint}/", 60, cwd=self.log.parent
        )
        proxy = [
            str(BIN / "python"),
            "-m",
            "modelset.sandbox.bucket",
            "--upstream",
            self.server_endpoint,
            "--port",
            str(self.proxy_port),
            "--latency-ms",
            str(self.latency_ms),
        ]
        self.proxy = _start_healthy(proxy, self.proxy_log, f"{self.endpoint}/", 30)
        self.started_in_s = time.perf_counter() - started
        return self

    def client_env(self) -> dict[str, str]:
        """What obstore (in a ``modelset`` process or this one) needs to reach it."""
        return {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def new_bucket(self, what: str) -> str:
        """A fresh, empty bucket (one per measured run: moto lists by scanning a bucket's
        keys, a real bucket does not); returns ``s3://<bucket>/out``."""
        import boto3

        self._buckets += 1
        slug = re.sub(r"[^a-z0-9-]+", "-", what.lower()).strip("-")
        name = f"bench-{self._buckets:02d}-{slug}"[:63].rstrip("-")
        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=S3_CREDENTIALS["AWS_REGION"],
            aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        ).create_bucket(Bucket=name)
        return f"s3://{name}/out"

    def log_offset(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def requests_since(self, offset: int) -> Counter[str]:
        """The requests logged after ``offset``, by method and kind of key."""
        with self.log.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
        return Counter(
            f"{method} {request_kind(path)}{'' if int(status) < 300 else f' -> {status}'}"
            for method, path, status in _REQUEST.findall(text)
        )

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        """This process's ``AWS_*`` pointed at the server meanwhile (to read a manifest)."""
        values = self.client_env()
        saved = {key: os.environ.get(key) for key in values}
        cleared = {key: os.environ.pop(key) for key in _AWS_CLEARED if key in os.environ}
        os.environ.update(values)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            os.environ.update(cleared)


# Anything that could point obstore at real credentials or another endpoint.
_AWS_CLEARED = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT", "AWS_DEFAULT_REGION")


def request_kind(path: str) -> str:
    """What an S3 request path is about, in the output location's layout (``modelset.layout``)."""
    bucket_path, _, query = path.partition("?")
    parts = bucket_path.strip("/").split("/", 2)  # bucket, prefix ("out"), key
    key = parts[2] if len(parts) > 2 else ""
    if "list-type" in query:
        return "list"
    if not key:
        return "bucket"
    rules = (
        (f"{layout.LEDGER_BY_TASK}/", "ledger by-task index"),
        (f"{layout.LEDGER_BY_UPLOAD}/", "ledger by-upload claim"),
        (layout.LEDGER_DIGEST, "ledger digest"),
        (f"{layout.PROBE}/", "probe"),
        (f"{layout.SHARDS}/", "shards"),
        (f"{layout.PREFECT_RESULTS}/", "prefect results"),
        (f"{layout.UPLOADS}/", "prepared upload"),
    )
    for prefix, kind in rules:
        if key.startswith(prefix):
            return kind
    if key.startswith(f"{layout.LEDGER}/"):
        return "ledger lease" if key.endswith(".lease") else "ledger record"
    if key.startswith(f"{layout.THUMBS}/"):
        return "output thumbnail" if key.count("/") > 2 else "input thumbnail"
    if key.endswith(f"/{layout.TASK_MARKER}"):
        return "set marker"
    if key.endswith(".jpg"):
        return "image"
    if key in (layout.MANIFEST_JSONL, layout.MANIFEST_CSV, layout.INDEX_HTML):
        return "report"
    return "other"


def migrate_home(home: Path, log: Path) -> subprocess.Popen[bytes] | None:
    """Start migrating a PREFECT_HOME's database once (as ``make setup`` does for ~/.prefect).

    Returns the running migration, or None when it was migrated before.
    """
    marker = home / ".bench-migrated"
    if marker.exists():
        return None
    home.mkdir(parents=True, exist_ok=True)
    env = clean_environment()
    env["PREFECT_HOME"] = str(home)
    shell = f'"{BIN / "prefect"}" server database upgrade -y && touch "{marker}"'
    with log.open("wb") as out:
        return subprocess.Popen(
            ["/bin/sh", "-c", shell], env=env, stdout=out, stderr=subprocess.STDOUT
        )
