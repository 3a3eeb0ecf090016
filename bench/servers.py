"""The servers a benchmark runs against, each its own process on 127.0.0.1.

- :class:`Sandbox`: ``.venv/bin/modelset sandbox`` on a free port (fresh state each time, so
  no run profits from images another run made it render).
- :class:`PrefectServer`: ``prefect server start`` with its own temporary ``PREFECT_HOME``.

Both wait until healthy, and stop with SIGTERM (SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

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
    """This process's environment without any HIDREAM_* or PREFECT_* setting."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HIDREAM_", "PREFECT_"))
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
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command, env=clean_environment(), stdout=out, stderr=subprocess.STDOUT
            )
        _wait_healthy(f"{self.base_url}/_sandbox/health", self.process, 30, self.log)
        return self

    def submissions(self) -> list[dict[str, Any]]:
        with httpx.Client(trust_env=False, timeout=30) as client:
            answer = client.get(f"{self.base_url}/_sandbox/submissions")
            answer.raise_for_status()
            found: list[dict[str, Any]] = answer.json()["submissions"]
            return found

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
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        _wait_healthy(f"{self.api_url}/health", self.process, 120, self.log)
        self.started_in_s = time.perf_counter() - started
        return self

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.home, ignore_errors=True)


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
