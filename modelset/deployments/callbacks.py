"""The callback receiver: HiDream's ``notify_url`` calls land here and become Prefect events.

``POST /hidream/callback/{secret}?out=<output location>``

- The secret is compared in constant time. A wrong secret, or none configured, gets the
  same 404 as a path that does not exist, and nothing else happens.
- ``out`` (optional) is the output location of the run that submitted the task, as its
  ``notify_url`` carries it; it goes into the event for the collector. So does
  ``request_id`` (optional), the request_id the task was sent with, which each send's
  ``notify_url`` names too, since the documented bodies name only the task: with it the
  collector finds a send whose answer was lost, which the ledger knows by request_id
  only. Without it in the URL, a ``request_id`` in the body (the v3 envelope's) is used.
- The body is read incrementally up to 64 KB (413 beyond), and must be a task result in
  one of the two documented shapes with a task id (400 otherwise).
- The answer is 200 at once (the service gives up after 5 s). Then, in the background,
  the task is re-queried, since the body is only a hint: once the service itself says the
  task is finished, the event ``hidream.task.finished`` is emitted, once per task id.
  Its id is derived from the task id and the final statuses, so that the same callback
  seen by several receivers (or by one after a restart) is one event to Prefect, which
  drops events whose id it has seen.

``GET /healthz`` answers ``{"ok": true}``. Logs go to ``modelset.callbacks``: one line
per callback and one per outcome, with the route template, never the path (it holds the
secret) nor the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, request_response
from starlette.types import Receive, Scope, Send

from modelset._exceptions import MissingTokenError, UsageError
from modelset.asgi import QuietH11
from modelset.batch import TASK_FINISHED_EVENT, TASK_RESOURCE_PREFIX
from modelset.deployments._exceptions import EmitFailed
from modelset.hidream import (
    DeadlineExceeded,
    HiDreamClient,
    HiDreamError,
    ServiceError,
    TaskNotFound,
    TaskResult,
    parse_callback_body,
)
from modelset.settings import (
    CALLBACK_PATH,
    OUT_PARAMETER,
    REQUEST_ID_PARAMETER,
    Settings,
)
from modelset.tasks.credentials import client_from_settings

CALLBACK_ROUTE = CALLBACK_PATH + "{secret}"
"""The route as logged: never the path itself, which holds the secret."""
EVENT_NAME = TASK_FINISHED_EVENT
EVENT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://modelset/events/" + EVENT_NAME)
"""The namespace of the events' deterministic (uuid5) ids."""
MAX_BODY_BYTES = 64 * 1024
FINISH_GRACE_S = 10.0
"""How long a task the callback announced may take to look finished when re-queried."""
SETTLE_TIMEOUT_S = 60.0
"""Cap on one callback's whole re-query, slow answers and retries included."""
REMEMBERED_TASKS = 10_000
MAX_IN_FLIGHT = 256
SHUTDOWN_GRACE_S = 5.0
MIN_SECRET_CHARS = 16
# Task ids are UUIDs upstream. Refusing anything else keeps log lines and Prefect
# resource ids free of injected text.
_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_OUT_CHARS = 1024
# An absolute path or a bucket URL: printable, no control characters.
_OUT = re.compile(rf"[^\x00-\x1f\x7f]{{1,{MAX_OUT_CHARS}}}")

logger = logging.getLogger("modelset.callbacks")


@dataclass(frozen=True)
class TaskFinished:
    """The event a finished task produces: ``hidream.task.finished`` on ``hidream.task.<id>``."""

    name: ClassVar[str] = EVENT_NAME

    task_id: str
    images: int
    statuses: tuple[str, ...]
    out: str | None = None
    """The output location of the submitting run, from its callback URL."""
    request_id: str | None = None
    """The request_id the task was sent with, from its callback URL (or its body)."""

    @classmethod
    def from_result(
        cls,
        task_id: str,
        result: TaskResult,
        out: str | None = None,
        request_id: str | None = None,
    ) -> TaskFinished:
        return cls(
            task_id=task_id,
            images=len(result.image_urls),
            statuses=tuple(sub.task_status.name.lower() for sub in result.sub_task_results),
            out=out,
            request_id=request_id,
        )

    @property
    def id(self) -> uuid.UUID:
        """The same for every emission of this task's final outcome, by any receiver."""
        return uuid.uuid5(EVENT_NAMESPACE, f"{self.task_id}\n{','.join(self.statuses)}")

    @property
    def resource(self) -> dict[str, str]:
        return {"prefect.resource.id": f"{TASK_RESOURCE_PREFIX}{self.task_id}"}

    @property
    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "task_id": self.task_id,
            "images": self.images,
            "statuses": list(self.statuses),
        }
        if self.out is not None:
            payload["out"] = self.out
        if self.request_id is not None:
            payload["request_id"] = self.request_id
        return payload


Emit = Callable[[TaskFinished], Awaitable[None]]
ClientFactory = Callable[[Settings], Awaitable[HiDreamClient]]


async def emit_to_prefect(event: TaskFinished) -> None:
    """Hand the event to Prefect's events worker, which delivers it to the Prefect API."""
    if not await asyncio.to_thread(_emit_event, event):
        raise EmitFailed(f"Prefect did not accept the event {event.name}")


def _emit_event(event: TaskFinished) -> bool:
    from prefect.events import emit_event

    sent = emit_event(event=event.name, resource=event.resource, payload=event.payload, id=event.id)
    return sent is not None


def _secret_of(settings: Settings) -> str | None:
    if settings.callback_secret is None:
        return None
    return settings.callback_secret.get_secret_value() or None


def _digest(text: str) -> bytes:
    # Comparing digests keeps compare_digest's time independent of the secret's length.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class _Refused(Exception):
    """A callback answered with a 4xx/503 and a short public reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _not_found() -> Response:
    # Byte for byte what Starlette answers for a path no route matches.
    return PlainTextResponse("Not Found", status_code=404)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _Refused(413, f"body larger than {limit} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _Refused(413, f"body larger than {limit} bytes")
    except ClientDisconnect:
        raise _Refused(400, "client went away") from None
    return bytes(body)


def _callback_of(request: Request, body: bytes) -> tuple[str, str | None]:
    """The task id the body names, and the request_id the task was sent with: from the
    URL (modelset names each send's in its notify_url), else from the body, if it has one
    (the documented bodies do not promise it)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise _Refused(400, "body is not JSON") from None
    try:
        task_id = parse_callback_body(data).task_id
    except ServiceError:
        raise _Refused(400, "body is not a task result") from None
    if not task_id:
        raise _Refused(400, "body names no task id")
    if not _TASK_ID.fullmatch(task_id):
        raise _Refused(400, "malformed task id")
    named = _single_parameter(request, REQUEST_ID_PARAMETER, _TASK_ID)
    return task_id, named or _request_id_in(data)


def _request_id_in(data: Any) -> str | None:
    inner = data.get("result") if isinstance(data.get("result"), dict) else {}
    for value in (inner.get("request_id"), data.get("request_id")):
        if isinstance(value, str) and _TASK_ID.fullmatch(value):
            return value
    return None


def _single_parameter(request: Request, name: str, shape: re.Pattern[str]) -> str | None:
    values = request.query_params.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise _Refused(400, f"more than one {name} parameter")
    if not shape.fullmatch(values[0]):
        raise _Refused(400, f"malformed {name} parameter")
    return values[0]


class _AnyMethod:
    """An endpoint for every HTTP method, so that a 405 cannot reveal the route to a caller
    without the secret (Starlette gives a plain function route GET only)."""

    def __init__(self, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        self._app = request_response(endpoint)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


class _Receiver:
    """The receiver's state: the client, the tasks in flight and those already emitted."""

    def __init__(
        self,
        settings: Settings,
        emit: Emit,
        client_factory: ClientFactory,
        finish_grace_s: float,
        remember: int,
        max_in_flight: int,
    ) -> None:
        secret = _secret_of(settings)
        self._secret_digest = None if secret is None else _digest(secret)
        self._settings = settings
        self._emit = emit
        self._client_factory = client_factory
        self._finish_grace_s = finish_grace_s
        self._remember = remember
        self._max_in_flight = max_in_flight
        self._client: HiDreamClient | None = None
        self._client_lock = asyncio.Lock()
        self._emitted: OrderedDict[str, None] = OrderedDict()
        self._in_flight: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self.app = Starlette(
            routes=[
                # ":path" so that a secret with a "/" in it (quoted in the URL) matches.
                Route(CALLBACK_PATH + "{secret:path}", _AnyMethod(self._callback)),
                Route("/healthz", self._health, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )
        # Otherwise "/hidream/callback" would answer a redirect instead of a 404.
        self.app.router.redirect_slashes = False

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            pending = set(self._background)
            if pending:
                await asyncio.wait(pending, timeout=SHUTDOWN_GRACE_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if self._client is not None:
                await self._client.aclose()

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    def _authorised(self, given: str) -> bool:
        if self._secret_digest is None:
            return False
        return hmac.compare_digest(_digest(given), self._secret_digest)

    async def _callback(self, request: Request) -> Response:
        # The secret is checked before anything else, the method included, so that
        # nothing tells a caller without it that this route exists.
        if not self._authorised(request.path_params["secret"]):
            logger.info("callback %s -> 404 (wrong secret)", CALLBACK_ROUTE)
            return _not_found()
        if request.method != "POST":
            return PlainTextResponse(
                "Method Not Allowed", status_code=405, headers={"Allow": "POST"}
            )
        try:
            out = _single_parameter(request, OUT_PARAMETER, _OUT)
            body = await _read_body(request, MAX_BODY_BYTES)
            task_id, request_id = _callback_of(request, body)
            duplicate = self._accept(task_id, out, request_id)
        except _Refused as refused:
            logger.info("callback %s -> %d (%s)", CALLBACK_ROUTE, refused.status, refused.reason)
            return JSONResponse({"ok": False, "error": refused.reason}, status_code=refused.status)
        except Exception as exc:
            logger.error(
                "callback %s -> 503 (unexpected %s)",
                CALLBACK_ROUTE,
                type(exc).__name__,
                exc_info=True,
            )
            return JSONResponse({"ok": False, "error": "temporarily unavailable"}, status_code=503)
        logger.info(
            "callback %s task=%s -> 200%s",
            CALLBACK_ROUTE,
            task_id,
            " (duplicate)" if duplicate else "",
        )
        return JSONResponse({"ok": True, "duplicate": duplicate})

    def _accept(self, task_id: str, out: str | None, request_id: str | None) -> bool:
        """Start settling ``task_id`` unless it is emitted or in flight; True for a duplicate.

        Check and claim happen with no ``await`` between them: on one event loop, two
        concurrent deliveries cannot both claim the task.
        """
        if task_id in self._emitted:
            self._emitted.move_to_end(task_id)
            return True
        if task_id in self._in_flight:
            return True
        if len(self._in_flight) >= self._max_in_flight:
            raise _Refused(503, "too many callbacks in flight; retry later")
        self._in_flight.add(task_id)
        task = asyncio.create_task(
            self._settle(task_id, out, request_id), name=f"callback-{task_id}"
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return False

    async def _settle(self, task_id: str, out: str | None, request_id: str | None) -> None:
        """Re-query the task; emit its event once the service says it is finished."""
        try:
            result = await self._finished_result(task_id)
            if result is None:
                return
            event = TaskFinished.from_result(task_id, result, out, request_id)
            await self._emit(event)
            self._emitted[task_id] = None
            while len(self._emitted) > self._remember:
                self._emitted.popitem(last=False)
            logger.info(
                "task %s finished: emitted %s (%d images)", task_id, event.name, event.images
            )
        except Exception as exc:
            # Not remembered: a later delivery of the same callback tries again.
            logger.error("task %s: no event (%s: %s)", task_id, type(exc).__name__, exc)
        finally:
            self._in_flight.discard(task_id)

    async def _finished_result(self, task_id: str) -> TaskResult | None:
        client = await self._get_client()
        try:
            async with asyncio.timeout(max(SETTLE_TIMEOUT_S, self._finish_grace_s)):
                return await client.wait_for_result(task_id, deadline=self._finish_grace_s)
        except TimeoutError:
            logger.warning("task %s: re-query timed out; no event", task_id)
        except TaskNotFound:
            logger.warning("task %s: unknown to the service; callback ignored", task_id)
        except DeadlineExceeded:
            logger.warning(
                "task %s: not finished %.0f s after its callback; no event",
                task_id,
                self._finish_grace_s,
            )
        except HiDreamError as exc:
            logger.warning("task %s: re-query failed (%s); no event", task_id, exc.message)
        return None

    async def _get_client(self) -> HiDreamClient:
        async with self._client_lock:
            if self._client is None:
                self._client = await self._client_factory(self._settings)
            return self._client


def create_receiver_app(
    settings: Settings,
    *,
    emit: Emit | None = None,
    client_factory: ClientFactory = client_from_settings,
    finish_grace_s: float = FINISH_GRACE_S,
    remember: int = REMEMBERED_TASKS,
    max_in_flight: int = MAX_IN_FLIGHT,
) -> Starlette:
    """The receiver as an ASGI app. Run its lifespan: shutdown closes the client.

    ``emit`` defaults to :func:`emit_to_prefect`. ``client_factory`` builds the client
    that re-queries tasks, once, at the first callback. ``remember`` bounds the task ids
    kept to recognise duplicates; ``max_in_flight`` bounds concurrent re-queries (503
    beyond, so the service retries).
    """
    return _Receiver(
        settings,
        emit or emit_to_prefect,
        client_factory,
        finish_grace_s,
        remember,
        max_in_flight,
    ).app


def serve_receiver(host: str, port: int, settings: Settings) -> None:
    """Serve the receiver in the foreground until SIGTERM or Ctrl-C (``modelset callbacks``).

    Raises :class:`~modelset.UsageError` when no secret or no token is configured.
    """
    secret = _secret_of(settings)
    if secret is None:
        raise UsageError("no callback secret: set HIDREAM_CALLBACK_SECRET")
    if not (settings.api_token and settings.api_token.get_secret_value()) and not (
        settings.api_token_block
    ):
        raise MissingTokenError()
    import uvicorn
    from prefect.settings import get_current_settings

    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    if len(secret) < MIN_SECRET_CHARS:
        logger.warning(
            "HIDREAM_CALLBACK_SECRET has fewer than %d characters: use a long random one",
            MIN_SECRET_CHARS,
        )
    if not get_current_settings().api.url:
        logger.warning(
            "PREFECT_API_URL is not set: events go to a temporary Prefect server "
            "and trigger nothing"
        )
    logger.info("callback receiver: POST %s on %s:%d", CALLBACK_ROUTE, host, port)
    # uvicorn's access log would print each request's path, which holds the secret.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(
            create_receiver_app(settings),
            host=host,
            port=port,
            access_log=False,
            http=QuietH11,
            log_config=None,
            lifespan="on",
            ws="none",
            server_header=False,
            timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S),
        )
