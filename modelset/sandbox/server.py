"""Running the sandbox: in a background thread (tests, demo) or in the foreground (CLI)."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import httpx
import uvicorn

from modelset.asgi import QuietH11
from modelset.sandbox.app import SUBMIT_PATH, Sandbox
from modelset.sandbox.config import SandboxConfig
from modelset.sandbox.store import Submission

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def _local_url(sockname: tuple[Any, ...]) -> str:
    """http URL of a bound socket; a wildcard bind is reached through loopback."""
    host, port = sockname[0], sockname[1]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Uvicorn(uvicorn.Server):
    """uvicorn, told about the sandbox so that shutdown is quick and the address is known."""

    def __init__(self, sandbox: Sandbox, on_started: Callable[[str], None]) -> None:
        super().__init__(
            uvicorn.Config(
                sandbox.app,
                host=sandbox.config.host,
                port=sandbox.config.port,
                lifespan="on",
                ws="none",
                http=QuietH11,
                access_log=False,  # the app logs its own line per request
                log_config=None,
                timeout_graceful_shutdown=1,
            )
        )
        self._sandbox = sandbox
        self._on_started = on_started

    @property
    def base_url(self) -> str:
        listener: socket.socket = self.servers[0].sockets[0]
        return _local_url(listener.getsockname())

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_started(self.base_url)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Stalled submits would otherwise hold the shutdown for the graceful timeout.
        self._sandbox.release_stalled()
        await super().shutdown(sockets)


class SandboxServer:
    """The sandbox served by uvicorn in a background thread of this process.

    ``SandboxServer(config)`` or ``SandboxServer(port=0, latency_ms=0, ...)`` (keyword
    arguments override fields of ``config``). Use as a context manager, or call
    ``start()`` and ``stop()``.
    """

    def __init__(self, config: SandboxConfig | None = None, /, **overrides: Any) -> None:
        base = config or SandboxConfig()
        self.config = (
            SandboxConfig.model_validate({**base.model_dump(), **overrides}) if overrides else base
        )
        self._sandbox = Sandbox(self.config)
        self.app = self._sandbox.app
        self._server: _Uvicorn | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` with the port actually bound."""
        if self._base_url is None:
            raise RuntimeError("the sandbox has not been started")
        return self._base_url

    def submissions(self) -> list[Submission]:
        """The accepted submissions so far, oldest first."""
        return self._sandbox.tasks.submissions()

    def callbacks(self) -> list[dict[str, Any]]:
        """The callbacks requested so far, as ``/_sandbox/callbacks`` lists them."""
        return self._sandbox.callbacks()

    def in_flight(self, path: str | None = None) -> int:
        """Requests the sandbox has begun and not yet ended, to ``path`` (e.g.
        ``SUBMIT_PATH``) or to any. One abandoned by its client counts until the sandbox
        is done with it: a test waits for 0 to know what such a request left behind."""
        return self._sandbox.in_flight(path)

    def start(self) -> Self:
        """Start serving; returns once the server answers."""
        if self._server is not None:
            raise RuntimeError("a SandboxServer can be started only once")
        started = threading.Event()
        self._server = _Uvicorn(self._sandbox, on_started=lambda _: started.set())
        self._thread = threading.Thread(
            target=self._server.run, name="modelset-sandbox", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not started.wait(0.02):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                where = f"{self.config.host}:{self.config.port}"
                raise RuntimeError(f"the sandbox did not start on {where} (see the uvicorn log)")
        self._base_url = self._server.base_url
        self._wait_until_healthy(deadline)
        return self

    def _wait_until_healthy(self, deadline: float) -> None:
        with httpx.Client(base_url=self.base_url, trust_env=False, timeout=1.0) as client:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/_sandbox/health").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the sandbox does not answer at {self.base_url}")
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop serving; quick even with stalled requests open. Safe to call twice."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(STOP_TIMEOUT_S)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(STOP_TIMEOUT_S)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def serve(config: SandboxConfig) -> None:
    """Serve in the foreground until SIGTERM or Ctrl-C (for ``modelset sandbox``)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )

    def announce(base_url: str) -> None:
        print(f"HiDream sandbox listening on {base_url}", flush=True)
        print(f"  submit: POST {base_url}{SUBMIT_PATH}", flush=True)
        print(f"  faults: {config.faults.model_dump()}", flush=True)

    # uvicorn traps SIGINT/SIGTERM, shuts down, then re-raises the signal: Ctrl-C ends
    # up as KeyboardInterrupt here, after a clean shutdown.
    with contextlib.suppress(KeyboardInterrupt):
        _Uvicorn(Sandbox(config), on_started=announce).run()
