"""The sandbox's Starlette app: the HiDream endpoints plus the test-only ``/_sandbox`` ones."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelset.sandbox._exceptions import ApiError, PhotoError
from modelset.sandbox.callbacks import CallbackRecord, deliver, masked_urls, strip_query
from modelset.sandbox.config import SandboxConfig
from modelset.sandbox.imagery import check_photo, render_template_preview
from modelset.sandbox.protocol import (
    MAX_IMAGE_BYTES,
    NO_CREDITS,
    OK,
    RATE_LIMITED,
    TASK_NOT_FOUND,
    TOKEN_INVALID,
    SubmitForm,
    int_param,
    invalid,
    parse_submission,
)
from modelset.sandbox.store import (
    FAILED,
    REJECTED,
    SUCCEEDED,
    TEMPLATES,
    PhotoStore,
    StateFile,
    SubTask,
    Task,
    TaskStore,
    labelled_as_upstream,
)

logger = logging.getLogger("modelset.sandbox")

SUBMIT_PATH = "/api-pub/ec/v3/image/variation/async"
RESULTS_PATH = f"{SUBMIT_PATH}/results"
TEMPLATES_PATH = "/api-pub/ec/v3/template/variation"
FETCH_TIMEOUT_S = 10.0
_CODE_KEY = "modelset.sandbox.code"
"""Scope key where a handler leaves the envelope code for the request log line."""
_BAD_GATEWAY_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body>bad gateway</body>"


class _NoAnswer(Response):
    """Sends nothing: the client has gone away."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return None


class _RequestLog:
    """ASGI middleware: one log line per request, without query string, headers or body;
    ``in_flight`` counts, by path, the requests begun and not yet ended (answered, or
    given up on by their client)."""

    def __init__(self, app: ASGIApp, in_flight: Counter[str]) -> None:
        self.app = app
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.in_flight[scope["path"]] += 1
        try:
            await self._logged(scope, receive, send)
        finally:
            self.in_flight[scope["path"]] -= 1

    async def _logged(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status: int | None = None
        logged = False

        def log_line() -> None:
            nonlocal logged
            logged = True
            logger.info(
                "%s %s -> %s code=%s %.0f ms",
                scope["method"],
                scope["path"],
                status if status is not None else "no answer",
                scope.get(_CODE_KEY, "-"),
                (time.perf_counter() - started) * 1000,
            )

        async def send_logged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # Before the answer's last bytes leave: a client that has its answer can
                # count the line.
                log_line()
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            if not logged:
                log_line()


def _envelope(
    request: Request,
    code: int,
    message: str,
    result: dict[str, Any] | None = None,
    *,
    request_id: str | None = None,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    request.scope[_CODE_KEY] = code
    body = {
        "code": code,
        "message": message,
        "request_id": request_id or str(uuid.uuid4()),
        "result": result or {},
    }
    return JSONResponse(body, status_code=status_code, headers=headers)


def _base_url(request: Request) -> str:
    """The address this connection reached: the server's real bound host and port."""
    server = request.scope.get("server")
    if server is None:
        return str(request.base_url).rstrip("/")
    host, port = server
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _first_of(*waits: Coroutine[Any, Any, object]) -> None:
    """Wait until any of the coroutines finishes, then cancel the others."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def _client_gone(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


@asynccontextmanager
async def _masked_fetch() -> AsyncIterator[None]:
    with masked_urls(strip_query):
        yield


def _truncated(request: Request, body: dict[str, Any]) -> Response:
    """HTTP 200 with the first half of a JSON envelope: an answer cut off mid-way."""
    request.scope[_CODE_KEY] = "malformed"
    data = json.dumps(body).encode()
    return Response(data[: len(data) // 2], media_type="application/json")


class _Links:
    """Image URLs of sub-tasks drawn by the expire fault.

    Each results query (or callback) hands out ``...jpg?e=N`` with a fresh N. The first
    download of such an image answers 404 and expires every URL handed out so far; URLs
    handed out afterwards work. Like a CDN link that expired before it was used.
    """

    def __init__(self) -> None:
        self._issued: dict[tuple[str, int], int] = {}
        self._valid_from: dict[tuple[str, int], int] = {}

    def url(self, task: Task, pose: int) -> str:
        url = task.image_url(pose)
        if not task.sub_tasks[pose - 1].expires:
            return url
        key = (task.task_id, pose)
        self._issued[key] = self._issued.get(key, 0) + 1
        return f"{url}?e={self._issued[key]}"

    def usable(self, task: Task, pose: int, edition: str | None) -> bool:
        if not task.sub_tasks[pose - 1].expires:
            return True
        key = (task.task_id, pose)
        if key not in self._valid_from:
            self._valid_from[key] = self._issued.get(key, 0) + 1
            return False
        try:
            return int(edition or "") >= self._valid_from[key]
        except ValueError:
            return False


class Sandbox:
    """The sandbox's state and request handlers; ``.app`` is the ASGI app serving them."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.tasks = TaskStore()
        self._photos = PhotoStore(config.photo_dir)
        self._rng = random.Random(config.seed)
        self._callbacks: list[CallbackRecord] = []
        self._links = _Links()
        self._state = StateFile(config.state_file) if config.state_file else None
        self._restore()
        self._background: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()
        self._http = httpx.AsyncClient(trust_env=False)
        self._in_flight: Counter[str] = Counter()
        self.app = Starlette(
            routes=[
                Route(SUBMIT_PATH, self._submit, methods=["POST"]),
                Route(RESULTS_PATH, self._results, methods=["GET"]),
                Route(TEMPLATES_PATH, self._templates, methods=["GET"]),
                Route("/_sandbox/images/{task_id}/{pose:int}.jpg", self._image, methods=["GET"]),
                Route("/_sandbox/templates/{template_id:int}.jpg", self._preview, methods=["GET"]),
                Route("/_sandbox/submissions", self._submissions, methods=["GET"]),
                Route("/_sandbox/callbacks", self._callback_log, methods=["GET"]),
                Route("/_sandbox/health", self._health, methods=["GET"]),
            ],
            middleware=[Middleware(_RequestLog, in_flight=self._in_flight)],
            exception_handlers={ApiError: self._api_error},
            lifespan=self._lifespan,
        )

    def in_flight(self, path: str | None = None) -> int:
        """Requests begun and not yet ended, to ``path`` or to any: a request its client
        gave up on counts until the sandbox is done with it too."""
        counts = dict(self._in_flight)  # read from other threads: copied at once
        return counts.get(path, 0) if path is not None else sum(counts.values())

    def release_stalled(self) -> None:
        """Let stalled submit requests end; call on the server's event loop at shutdown."""
        self._closing.set()

    def _restore(self) -> None:
        """Reload tasks, submissions and callbacks from the state file, if there is one."""
        document = self._state.load() if self._state is not None else None
        if document is None:
            return
        self.tasks.restore(StateFile.tasks(document), StateFile.submissions(document))
        self._callbacks = [CallbackRecord(**record) for record in document.get("callbacks", [])]
        logger.info(
            "restored %d tasks and %d callbacks from the state file",
            len(self.tasks.tasks()),
            len(self._callbacks),
        )

    def _persist(self) -> None:
        """Write the state file (on the event loop, after every change)."""
        if self._state is not None:
            self._state.save(self.tasks, [record.to_json() for record in self._callbacks])

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        background = asyncio.create_task(work)
        self._background.add(background)
        background.add_done_callback(self._background.discard)

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # Callbacks restored from the state file that were never attempted are still due.
        for record in self._callbacks:
            restored = self.tasks.find(record.task_id)
            if restored is not None and record.attempts == 0:
                self._in_background(self._notify(restored, [record]))
        try:
            yield
        finally:
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            await self._http.aclose()
            self._photos.close()

    async def _api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _envelope(request, exc.code, exc.message)

    async def _enter(self, request: Request) -> None:
        """Every API call: check the token, then add the configured latency."""
        expected = f"Bearer {self.config.token}".encode()
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise ApiError(TOKEN_INVALID, "token invalid or expired")
        await asyncio.sleep(self.config.latency_ms / 1000)

    def _draw(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    async def _submit(self, request: Request) -> Response:
        await self._enter(request)
        faults = self.config.faults
        if self._draw(faults.throttle):
            retry_after = max(1, math.ceil(self.config.retry_after_s))
            return _envelope(
                request,
                RATE_LIMITED,
                "rate limit exceeded",
                status_code=429,
                headers={"Retry-After": str(retry_after)},
            )
        if self._draw(faults.server_error):
            return PlainTextResponse("internal server error", status_code=500)
        if self._draw(faults.no_credits):
            return _envelope(request, NO_CREDITS, "insufficient credits")

        form = await run_in_threadpool(parse_submission, await request.body(), TEMPLATES)
        data = form.image if isinstance(form.image, bytes) else await self._fetch(form.image)
        sha256 = await run_in_threadpool(self._accept_photo, data)
        task = self._create_task(form, sha256, _base_url(request))

        if self._draw(faults.stall):
            await _first_of(_client_gone(request), self._closing.wait())
            if self._closing.is_set():
                return PlainTextResponse("sandbox shutting down", status_code=503)
            return _NoAnswer()
        if self._draw(faults.lost_answer):
            return Response(_BAD_GATEWAY_PAGE, status_code=502, media_type="text/html")
        result = {"task_id": task.task_id, "sub_task_ids": [s.sub_task_id for s in task.sub_tasks]}
        if self._draw(faults.malformed):
            envelope = {"code": OK, "message": "Success", "request_id": task.request_id}
            return _truncated(request, {**envelope, "result": result})
        return _envelope(request, OK, "Success", result, request_id=task.request_id)

    async def _fetch(self, url: str) -> bytes:
        """Download an image given by URL, at most MAX_IMAGE_BYTES within FETCH_TIMEOUT_S."""
        chunks: list[bytes] = []
        size = 0
        try:
            async with (
                asyncio.timeout(FETCH_TIMEOUT_S),
                _masked_fetch(),
                self._http.stream("GET", url, follow_redirects=True) as response,
            ):
                if response.status_code != 200:
                    raise invalid(f"image URL answered HTTP {response.status_code}")
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_IMAGE_BYTES:
                        raise invalid("image is larger than 30 MB")
                    chunks.append(chunk)
        except (httpx.HTTPError, TimeoutError) as exc:
            raise invalid(f"image URL could not be fetched ({type(exc).__name__})") from None
        return b"".join(chunks)

    def _accept_photo(self, data: bytes) -> str:
        """Check the photo and store it on disk; returns its sha256. Runs in a worker thread."""
        try:
            check_photo(data)
        except PhotoError as exc:
            raise invalid(str(exc)) from None
        return self._photos.save(data)

    def _fate(self) -> SubTask:
        faults = self.config.faults
        if self._draw(faults.fail):
            status, description = FAILED, "generation failed"
        elif self._draw(faults.reject):
            status, description = REJECTED, "rejected by content review"
        else:
            status, description = SUCCEEDED, ""
        return SubTask(
            str(uuid.uuid4()),
            status,
            description,
            unknown_status=self._draw(faults.unknown_status),
            expires=self._draw(faults.expire),
        )

    def _create_task(self, form: SubmitForm, sha256: str, base_url: str) -> Task:
        task = Task(
            task_id=str(uuid.uuid4()),
            request_id=form.request_id or str(uuid.uuid4()),
            template_id=form.template_id,
            sha256=sha256,
            sub_tasks=tuple(self._fate() for _ in range(self.config.images_per_set)),
            started=time.monotonic(),
            duration=self.config.generation_s,
            base_url=base_url,
        )
        self.tasks.add(task)
        if form.notify_url is not None:
            faults = self.config.faults
            early = self._draw(faults.callback_early)
            copies = 2 if self._draw(faults.callback_dup) else 1
            records = [
                CallbackRecord(task_id=task.task_id, url=form.notify_url, early=early)
                for _ in range(copies)
            ]
            self._callbacks.extend(records)
            self._in_background(self._notify(task, records))
        self._persist()
        return task

    async def _notify(self, task: Task, records: list[CallbackRecord]) -> None:
        """Deliver the callback(s) of a task: when it is final, or halfway if early."""
        due = task.started + task.duration / 2 if records[0].early else task.finished_at
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        # The final body even when early; max(): a timer may wake a hair early.
        now = max(time.monotonic(), task.finished_at)
        body = {
            "main_task_id": task.task_id,
            "sub_task_results": task.sub_task_results(now, self._links.url),
        }
        for record in records:
            await deliver(self._http, record, body)
            self._persist()

    async def _results(self, request: Request) -> Response:
        await self._enter(request)
        task_id = request.query_params.get("task_id")
        request_id = request.query_params.get("request_id")
        if self._draw(self.config.faults.malformed):
            if self._rng.random() < 0.5:
                request.scope[_CODE_KEY] = "malformed"
                return Response(_BAD_GATEWAY_PAGE, media_type="text/html")
            return _truncated(request, {"code": OK, "message": "Success", "result": {}})
        if not task_id and not request_id:
            raise invalid("task_id or request_id is required")
        if not task_id and not self.config.lookup_by_request_id:
            raise ApiError(TASK_NOT_FOUND, "task not found")
        task = self.tasks.find(task_id, request_id)
        if task is None:
            raise ApiError(TASK_NOT_FOUND, "task not found")
        result = {
            "task_id": task.task_id,
            "request_id": task.request_id,
            "sub_task_results": task.sub_task_results(time.monotonic(), self._links.url),
        }
        return _envelope(request, OK, "Success", result)

    async def _templates(self, request: Request) -> Response:
        await self._enter(request)
        params = request.query_params
        gender = params.get("gender")
        if gender not in (None, "man", "woman"):
            raise invalid("gender must be man or woman")
        page_size = int_param(params.get("page_size"), "page_size", 20, 1, 100)
        page_index = int_param(params.get("page_index"), "page_index", 1, 1, 1_000_000)
        matching = [i for i, g in TEMPLATES.items() if gender is None or g == gender]
        page = matching[(page_index - 1) * page_size : page_index * page_size]
        base_url = _base_url(request)
        result = {
            "templates": [
                {
                    "id": template_id,
                    "gender": TEMPLATES[template_id],
                    "show_image": f"{base_url}/_sandbox/templates/{template_id}.jpg",
                }
                for template_id in page
            ],
            "total_count": len(matching),
            "total_page": math.ceil(len(matching) / page_size),
        }
        return _envelope(request, OK, "Success", result)

    async def _image(self, request: Request) -> Response:
        task = self.tasks.find(request.path_params["task_id"])
        pose: int = request.path_params["pose"]
        if (
            task is None
            or not 1 <= pose <= len(task.sub_tasks)
            or task.status(pose - 1, time.monotonic())[0] != SUCCEEDED
        ):
            return PlainTextResponse("not found", status_code=404)
        if not self._links.usable(task, pose, request.query_params.get("e")):
            return PlainTextResponse("link expired", status_code=404)
        data = await run_in_threadpool(
            self._photos.render, task.sha256, task.template_id, pose, self.config.image_format
        )
        if self.config.upstream_label is not None:
            sub_task_id = task.sub_tasks[pose - 1].sub_task_id
            data = await run_in_threadpool(
                labelled_as_upstream, data, self.config.upstream_label, sub_task_id
            )
        return Response(data, media_type=f"image/{self.config.image_format.lower()}")

    async def _preview(self, request: Request) -> Response:
        template_id: int = request.path_params["template_id"]
        if template_id not in TEMPLATES:
            return PlainTextResponse("not found", status_code=404)
        data = await run_in_threadpool(render_template_preview, template_id, TEMPLATES[template_id])
        return Response(data, media_type="image/jpeg")

    async def _submissions(self, request: Request) -> Response:
        return JSONResponse({"submissions": self.tasks.submissions()})

    def callbacks(self) -> list[dict[str, Any]]:
        """The callbacks requested so far, secrets masked (``/_sandbox/callbacks``)."""
        return [record.public() for record in list(self._callbacks)]

    async def _callback_log(self, request: Request) -> Response:
        return JSONResponse({"callbacks": self.callbacks()})

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})


def create_app(config: SandboxConfig) -> Starlette:
    """The sandbox as an ASGI app (uvicorn must run its lifespan)."""
    return Sandbox(config).app
