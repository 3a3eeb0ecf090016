"""The async HiDream client: submit, query, wait, list templates; with the retry rule.

Retry rule:

- Reads (result queries, template pages) retry every transient failure: connect errors,
  timeouts, HTTP 5xx, malformed answers and throttling.
- A submit retries what certainly did not reach the service (connect errors) and
  throttling. A submit answered by a timeout, a broken connection, HTTP 5xx or code
  2004 may have created a task (and been billed): it is *outcome unknown*, and
  :class:`OutcomeUnknown` is raised. Only where the service has been shown to find a
  task by the ``request_id`` it was sent with (``request_id_lookup_proven``, set by the
  caller from a proof it took: ``modelset.ledger.proof``) is it looked up instead: found, that
  task is the answer; not found twice, a pause apart, it is sent again. The public docs
  promise results by ``task_id`` only, and a service that answers "not found" for every
  request_id would have every resend paid twice.
- A submit waits ``submit_timeout`` for its answer (default 180 s), longer than reads:
  a timeout cut short by the client is itself a lost answer.
- A rejected token, a full account or a rejected input are never retried.
- Throttling slows the whole client down: every request waits out the latest
  ``Retry-After`` (seconds or HTTP-date, capped by ``max_retry_after``).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from pydantic import SecretStr, ValidationError

from modelset.hidream._exceptions import (
    ConnectFailed,
    DeadlineExceeded,
    HiDreamError,
    NoCredits,
    OutcomeUnknown,
    RequestRejected,
    ServiceError,
    TaskNotFound,
    Throttled,
    TokenRejected,
)
from modelset.hidream.body import ImageFileBody
from modelset.hidream.models import Envelope, Gender, Receipt, TaskResult, Template, TemplatePage
from modelset.settings import Settings

SUBMIT_PATH = "/api-pub/ec/v3/image/variation/async"
RESULTS_PATH = f"{SUBMIT_PATH}/results"
TEMPLATES_PATH = "/api-pub/ec/v3/template/variation"

CODE_NO_CREDITS = 2007
CODE_BILLING_ERROR = 2004
CODE_MODEL_UNAVAILABLE = 2031
# The public docs give no codes for these; the values are the sandbox's (docs/sandbox.md),
# and the messages are matched too so another service's wording is understood.
CODES_TOKEN = frozenset({1002})
CODES_THROTTLED = frozenset({1009})
CODES_NOT_FOUND = frozenset({1003})
_TOKEN_WORDS = ("token", "unauthori", "authenticat")
_THROTTLE_WORDS = ("rate limit", "too many", "throttl")

TEMPLATE_PAGE_SIZE = 100
_BACKOFF_BASE = 0.5
_BACKOFF_CAP = 8.0
_THROTTLE_RETRIES = 20
_RECHECK_CAP = 5.0

log = logging.getLogger("modelset.hidream")

ImageInput = str | bytes | os.PathLike[str]


KEEPALIVE_EXPIRY_S = 4.0


class HiDreamClient:
    """Async client of the HiDream model image set API.

    ```python
    async with HiDreamClient.from_settings(Settings()) as client:
        receipt = await client.submit_variation(Path("photo.jpg"), template_id=20)
        result = await client.wait_for_result(receipt.task_id)
    ```
    """

    def __init__(
        self,
        token: SecretStr | str,
        *,
        base_url: str,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_attempts: int = 5,
        max_retry_after: float = 60.0,
        submit_timeout: float = 180.0,
        request_id_lookup_proven: bool = False,
        poll_interval: float = 1.0,
        poll_max_interval: float = 15.0,
        poll_deadline: float = 1800.0,
        user_id: str | None = None,
        language: str | None = None,
        max_connections: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        self.base_url = base_url.rstrip("/")
        self.max_attempts = max_attempts
        self.max_retry_after = max_retry_after
        self.request_id_lookup_proven = request_id_lookup_proven
        self._submit_timeout = httpx.Timeout(
            submit_timeout, connect=connect_timeout, write=submit_timeout
        )
        self.poll_interval = poll_interval
        self.poll_max_interval = poll_max_interval
        self.poll_deadline = poll_deadline
        headers = {"Content-Type": "application/json"}
        if user_id:
            headers["API-User-ID"] = user_id
        if language:
            headers["X-accept-language"] = language
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            # Idle connections are let go before a server's keep-alive (5 s for uvicorn,
            # the sandbox's) closes them: a submit sent on a connection the server is
            # closing gets no answer, and a submit without an answer may have been paid.
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=KEEPALIVE_EXPIRY_S,
            ),
            transport=transport,
            follow_redirects=False,
        )
        self._resume_at = 0.0
        self._recheck_delay = min(_RECHECK_CAP, read_timeout / 2)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        token: SecretStr | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Self:
        """A client configured from settings; ``token`` overrides the settings' one."""
        return cls(
            token or settings.require_token(),
            base_url=settings.base_url,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            max_attempts=settings.max_attempts,
            max_retry_after=settings.max_retry_after,
            submit_timeout=settings.submit_timeout,
            poll_interval=settings.poll_interval,
            poll_max_interval=settings.poll_max_interval,
            poll_deadline=settings.poll_deadline,
            user_id=settings.api_user_id,
            language=settings.language,
            max_connections=max(16, settings.concurrency * 2),
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"HiDreamClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- the API -----------------------------------------------------------------------

    async def submit_variation(
        self,
        image: ImageInput,
        template_id: int,
        request_id: str | None = None,
        notify_url: str | None = None,
    ) -> Receipt:
        """Submit a photo (URL, base64 text, raw bytes or a file path) for a template."""
        fields: dict[str, Any] = {"template_id": template_id}
        if request_id is not None:
            fields["request_id"] = request_id
        if notify_url is not None:
            fields["notify_url"] = notify_url
        # A file is streamed into the body as it is sent, never held whole (body.py).
        streamed = ImageFileBody(Path(image), fields) if isinstance(image, os.PathLike) else None
        body = None if streamed else {"image": encode_image(image), **fields}
        last_error: HiDreamError | None = None
        attempt = 0
        throttles = 0
        while attempt < self.max_attempts:
            try:
                envelope = await self._send(
                    "POST",
                    SUBMIT_PATH,
                    json=body,
                    content=streamed,
                    may_be_sent=True,
                    waits=self._submit_timeout,
                )
            except Throttled as exc:
                throttles += 1
                if throttles > _THROTTLE_RETRIES:
                    raise
                await self._wait_for_throttle(exc)
                continue
            except ConnectFailed as exc:
                last_error = exc
            except ServiceError as exc:
                if request_id is None or not self.request_id_lookup_proven:
                    raise OutcomeUnknown(
                        f"the submit may have reached the service and been paid for "
                        f"({exc.message}); the service is not known to find it by its "
                        "request_id, so it is not resent",
                        request_id=request_id,
                        cause=exc.message,
                    ) from exc
                # A short pause first, so a request still being processed has landed.
                await asyncio.sleep(_backoff(attempt + 1))
                found = await self.find_submission(request_id, cause=exc.message)
                if found is not None:
                    return found
                last_error = exc
                attempt += 1
                continue
            else:
                return _receipt(envelope, request_id)
            attempt += 1
            if attempt < self.max_attempts:
                await asyncio.sleep(_backoff(attempt))
        assert last_error is not None
        raise last_error

    async def get_result(
        self, task_id: str | None = None, request_id: str | None = None
    ) -> TaskResult:
        """The task's current state, by ``task_id`` or by the ``request_id`` it was sent with."""
        if task_id is None and request_id is None:
            raise ValueError("get_result needs a task_id or a request_id")
        params = {"task_id": task_id} if task_id is not None else {"request_id": request_id}
        try:
            envelope = await self._read(RESULTS_PATH, params)
        except RequestRejected as exc:
            if exc.code in CODES_NOT_FOUND or "not found" in exc.message.lower():
                raise TaskNotFound(exc.message, code=exc.code, status=exc.status) from None
            raise
        result = envelope.result if isinstance(envelope.result, dict) else {}
        try:
            parsed = TaskResult.model_validate(result)
        except ValidationError as exc:
            raise ServiceError(f"malformed task result: {_first_error(exc)}") from None
        if parsed.task_id is None and task_id is not None:
            parsed.task_id = task_id
        return parsed

    async def wait_for_result(
        self,
        task_id: str,
        deadline: float | None = None,
        *,
        on_progress: Callable[[TaskResult], None] | None = None,
        wake: asyncio.Event | None = None,
    ) -> TaskResult:
        """Poll until every sub-task is final, or raise :class:`DeadlineExceeded`.

        ``deadline`` is in seconds from now (default: the client's ``poll_deadline``).
        Polls start ``poll_interval`` apart and grow by half each time up to
        ``poll_max_interval``, never sleeping past the deadline. Setting ``wake`` (e.g.
        when a callback arrives) polls at once.
        """
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + (self.poll_deadline if deadline is None else deadline)
        interval = self.poll_interval
        result: TaskResult | None = None
        outage: HiDreamError | None = None
        progress = _Progress()
        while True:
            try:
                result = await self.get_result(task_id=task_id)
                progress.seen(loop.time(), result.completion)
                outage = None
            except (ConnectFailed, ServiceError, Throttled) as exc:
                # The task runs on regardless of our reads: an outage shorter than the
                # deadline must not cost the set.
                outage = exc
                log.info("result of %s unavailable (%s); still waiting", task_id, exc.message)
            if result is not None and outage is None:
                if on_progress is not None:
                    on_progress(result)
                if result.finished:
                    return result
            remaining = ends_at - loop.time()
            if remaining <= 0:
                if outage is not None:
                    detail = f"the service did not answer: {outage.message}"
                elif result is not None:
                    detail = f"{result.completion:.0%} done{_unknown_statuses(result)}"
                else:
                    detail = "no answer"
                raise DeadlineExceeded(
                    f"task {task_id} not finished by the deadline ({detail})",
                    last_result=result,
                )
            # A set that is ready but unnoticed holds a paid slot: where the progress
            # says it will be done sooner than the next poll, poll then instead.
            due = progress.due_in(floor=self.poll_interval)
            pause = interval if due is None else min(interval, due)
            await _sleep_or_wake(min(pause, remaining), wake)
            interval = min(interval * 1.5, self.poll_max_interval)

    async def list_templates(
        self, gender: Gender | None = None, *, page_size: int = TEMPLATE_PAGE_SIZE
    ) -> list[Template]:
        """Every template, walking all pages (``page_size`` at most 100)."""
        templates: list[Template] = []
        page_index = 1
        while True:
            params: dict[str, Any] = {"page_size": page_size, "page_index": page_index}
            if gender is not None:
                params["gender"] = gender
            envelope = await self._read(TEMPLATES_PATH, params)
            try:
                page = TemplatePage.model_validate(envelope.result or {})
            except ValidationError as exc:
                raise ServiceError(f"malformed template page: {_first_error(exc)}") from None
            templates.extend(page.templates)
            if not page.templates or page_index >= page.total_page:
                return templates
            page_index += 1

    # -- plumbing ----------------------------------------------------------------------

    async def find_submission(self, request_id: str, *, cause: str) -> Receipt | None:
        """Resolve an outcome-unknown submit by its request_id: its receipt, None if never
        created, else raise :class:`OutcomeUnknown`. Only meaningful where the service has
        been shown to find tasks by request_id (``request_id_lookup_proven``); ``cause``
        says why the outcome is unknown.

        "Not found" is asked twice, a pause apart: a request the service is still
        processing would be found by the second look, and must not be sent again.
        """
        try:
            try:
                result = await self.get_result(request_id=request_id)
            except TaskNotFound:
                await asyncio.sleep(self._recheck_delay)
                result = await self.get_result(request_id=request_id)
        except TaskNotFound:
            log.info("submit %s was not created; sending it again", request_id)
            return None
        except HiDreamError as exc:
            raise OutcomeUnknown(
                f"the submit may have reached the service ({cause}) and looking "
                f"its request_id up failed ({exc.message}); not resent",
                request_id=request_id,
                cause=f"{cause}; its lookup failed: {exc.message}",
            ) from exc
        if result.task_id is None:
            raise OutcomeUnknown(
                f"the submit may have reached the service ({cause}) and the "
                "service's lookup does not name a task; not resent",
                request_id=request_id,
                cause=f"{cause}; its lookup names no task",
            )
        log.info("submit %s was created as task %s (found by lookup)", request_id, result.task_id)
        return Receipt(
            task_id=result.task_id,
            sub_task_ids=[sub.sub_task_id for sub in result.sub_task_results],
            request_id=request_id,
            found_by_lookup=True,
        )

    async def _read(self, path: str, params: dict[str, Any]) -> Envelope:
        """A GET, retried on every transient failure."""
        attempt = 0
        throttles = 0
        while True:
            try:
                return await self._send("GET", path, params=params, may_be_sent=False)
            except Throttled as exc:
                throttles += 1
                if throttles > _THROTTLE_RETRIES:
                    raise
                await self._wait_for_throttle(exc)
            except (ConnectFailed, ServiceError):
                attempt += 1
                if attempt >= self.max_attempts:
                    raise
                await asyncio.sleep(_backoff(attempt))

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: dict[str, Any] | None = None,
        content: ImageFileBody | None = None,
        may_be_sent: bool,
        waits: httpx.Timeout | None = None,
    ) -> Envelope:
        delay = self._resume_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        headers = {"Authorization": f"Bearer {self._token.get_secret_value()}"}
        if content is not None:
            headers.update(content.headers)
        try:
            response = await self._http.request(
                method,
                path,
                params=params,
                json=json,
                content=content,
                headers=headers,
                timeout=waits or httpx.USE_CLIENT_DEFAULT,
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ConnectFailed(f"could not connect to {self.base_url}: {_describe(exc)}") from None
        except httpx.TransportError as exc:
            what = "submit" if may_be_sent else "request"
            raise ServiceError(f"{what} got no answer: {_describe(exc)}") from None
        envelope = _parse(response)
        log.debug("%s %s -> HTTP %s code %s", method, path, response.status_code, envelope.code)
        return envelope

    async def _wait_for_throttle(self, exc: Throttled) -> None:
        wait = min(exc.retry_after, self.max_retry_after)
        self._resume_at = max(self._resume_at, time.monotonic() + wait)
        log.info("throttled by the service; waiting %.1f s", wait)
        await asyncio.sleep(max(0.0, self._resume_at - time.monotonic()))


def encode_image(image: ImageInput) -> str:
    """The ``image`` field: a URL as is, otherwise base64 without a ``data:`` prefix."""
    if isinstance(image, bytes):
        return base64.b64encode(image).decode("ascii")
    if isinstance(image, os.PathLike):
        return base64.b64encode(Path(image).read_bytes()).decode("ascii")
    if image.startswith("data:") and ";base64," in image:
        return image.split(";base64,", 1)[1]
    return image


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _parse(response: httpx.Response) -> Envelope:
    status = response.status_code
    if status == 429:
        raise Throttled(
            "the service is throttling requests (HTTP 429)",
            retry_after=parse_retry_after(response.headers.get("Retry-After")) or _backoff(1),
            status=status,
        )
    if status in (401, 403):
        raise TokenRejected(_token_message(f"HTTP {status}"), status=status)
    if status >= 500:
        raise ServiceError(f"the service failed with HTTP {status}", status=status)
    try:
        envelope = Envelope.model_validate(response.json())
    except (ValueError, ValidationError):
        raise ServiceError(
            f"malformed answer (HTTP {status}, not a JSON envelope)", status=status
        ) from None
    if envelope.code != 0:
        raise _error_for_code(envelope, response)
    if status >= 400:
        raise RequestRejected(f"the service answered HTTP {status}", status=status)
    return envelope


def _error_for_code(envelope: Envelope, response: httpx.Response) -> HiDreamError:
    code, message, status = envelope.code, envelope.message, response.status_code
    lowered = message.lower()
    if code == CODE_NO_CREDITS:
        return NoCredits(
            f"the HiDream account has no credits left (code {code}: {message})",
            code=code,
            status=status,
        )
    if code in CODES_TOKEN or any(word in lowered for word in _TOKEN_WORDS):
        return TokenRejected(_token_message(f"code {code}: {message}"), code=code, status=status)
    if code in CODES_THROTTLED or any(word in lowered for word in _THROTTLE_WORDS):
        retry_after = parse_retry_after(response.headers.get("Retry-After")) or _backoff(1)
        return Throttled(
            f"the service is throttling requests (code {code}: {message})",
            retry_after=retry_after,
            code=code,
            status=status,
        )
    if code in (CODE_BILLING_ERROR, CODE_MODEL_UNAVAILABLE):
        return ServiceError(
            f"the service failed (code {code}: {message})", code=code, status=status
        )
    return RequestRejected(
        f"the service refused the request (code {code}: {message})", code=code, status=status
    )


def _receipt(envelope: Envelope, request_id: str | None) -> Receipt:
    result = envelope.result if isinstance(envelope.result, dict) else {}
    try:
        receipt = Receipt.model_validate(result)
    except ValidationError as exc:
        # The service accepted the submit but its answer is unreadable: a task may exist.
        raise OutcomeUnknown(
            f"the submit was accepted but its answer is malformed ({_first_error(exc)})",
            request_id=request_id,
            cause="an unreadable answer",
        ) from None
    if receipt.request_id is None:
        receipt.request_id = request_id or envelope.request_id or None
    return receipt


def _token_message(detail: str) -> str:
    return (
        f"HiDream rejected the API token ({detail}): it is invalid or expired; "
        "set a valid HIDREAM_API_TOKEN"
    )


def _backoff(attempt: int) -> float:
    ceiling = min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0 ** max(0, attempt - 1))
    return ceiling * random.uniform(0.5, 1.0)


async def _sleep_or_wake(seconds: float, wake: asyncio.Event | None) -> None:
    if wake is None:
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait_for(wake.wait(), timeout=seconds)
    except TimeoutError:
        return
    wake.clear()


def _describe(exc: httpx.HTTPError) -> str:
    return str(exc) or type(exc).__name__


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "body"
    return f"{where}: {error['msg']}"


def _unknown_statuses(result: TaskResult) -> str:
    unknown = sorted(
        {int(s.task_status) for s in result.sub_task_results if not s.task_status.is_known}
    )
    return f"; unknown task_status {unknown}" if unknown else ""


class _Progress:
    """The rate a task's completion grows at, from two polls, and when it will be done."""

    _MARGIN = 1.05

    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None
        self._rate: float | None = None

    def seen(self, now: float, completion: float) -> None:
        if self._last is not None and completion > self._last[1] and now > self._last[0]:
            self._rate = (completion - self._last[1]) / (now - self._last[0])
        if self._last is None or completion != self._last[1]:
            self._last = (now, completion)

    def due_in(self, *, floor: float) -> float | None:
        """Seconds until the task should be done (never under ``floor``), if known."""
        if self._last is None or self._rate is None or not 0 < self._last[1] < 1:
            return None
        return max(floor, (1 - self._last[1]) / self._rate * self._MARGIN)
