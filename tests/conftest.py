"""Shared fixtures: real servers on 127.0.0.1, real images.

- ``sandbox_factory`` starts sandboxes (the upstream contract) in-process on free ports.
- ``prefect_server`` starts one ``prefect server start`` for the whole session, with its
  own PREFECT_HOME, and points this process (and its children) at it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from modelset.sandbox import SandboxConfig, SandboxServer

TOKEN = "test-token-5f1c"
REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus" / "images"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_photo(
    path: Path, size: tuple[int, int] = (600, 800), colour: tuple[int, int, int] = (180, 90, 60)
) -> Path:
    """A small real JPEG with some structure (a lighter 'head' near the top)."""
    image = Image.new("RGB", size, colour)
    width, height = size
    head = Image.new("RGB", (width // 3, height // 5), (240, 210, 190))
    image.paste(head, (width // 3, height // 12))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=90)
    return path


SandboxFactory = Callable[..., SandboxServer]


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


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real Prefect server for the session; yields its API URL."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_API_URL": api_url,
    }
    log = (home / "server.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_until_healthy(f"{api_url}/health", process, within=120, log=home / "server.log")
    previous = {key: os.environ.get(key) for key in ("PREFECT_API_URL", "PREFECT_HOME")}
    os.environ["PREFECT_API_URL"] = api_url
    os.environ["PREFECT_HOME"] = str(home)
    try:
        with temporary_settings({PREFECT_API_URL: api_url}):
            yield api_url
            # Deliver buffered run logs while the server still listens.
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
