"""The callback receiver over real HTTP on 127.0.0.1, fed by the sandbox's own callbacks."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import pytest_asyncio
import uvicorn
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from modelset import MissingTokenError, UsageError
from modelset.deployments.callbacks import (
    EVENT_NAME,
    MAX_BODY_BYTES,
    MAX_OUT_CHARS,
    TaskFinished,
    create_receiver_app,
    serve_receiver,
)
from modelset.hidream import HiDreamClient, TaskResult
from modelset.sandbox import SandboxServer
from modelset.settings import (
    CALLBACK_PATH,
    OUT_PARAMETER,
    Settings,
    naming_request,
)
from tests.conftest import (
    TOKEN,
    WAIT_S,
    SandboxFactory,
    events_caught_up,
    free_port,
    make_photo,
    stored_events,
    until,
    wait_for_events,
    wait_until,
)

SECRET = "cb-7Qx9Lm2Vt4Rz8Wp1Kd5Hs3Jf6"
SIMILAR_SECRETS = [SECRET[:-1], SECRET + "x", SECRET.upper(), SECRET[1:], "cb-7Qx9Lm2Vt4"]
BUCKET_OUT = "s3://catalogue-summer/out"


def receiver_settings(sandbox: SandboxServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "base_url": sandbox.base_url,
        "api_token": TOKEN,
        "callback_secret": SECRET,
        "poll_interval": 0.1,
        "poll_max_interval": 0.2,
        "max_attempts": 2,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


class Recorder:
    """An ``emit`` that keeps the events; it runs on the receiver's thread. ``probe``, if
    given, is awaited with each event as it is emitted; ``probed`` keeps what it gave."""

    def __init__(self, probe: Callable[[TaskFinished], Awaitable[object]] | None = None) -> None:
        self.events: list[TaskFinished] = []
        self.probed: list[object] = []
        self._probe = probe

    async def __call__(self, event: TaskFinished) -> None:
        if self._probe is not None:
            self.probed.append(await self._probe(event))
        self.events.append(event)

    async def wait_for(self, count: int, within: float = WAIT_S) -> list[TaskFinished]:
        deadline = time.monotonic() + within
        while len(self.events) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return list(self.events)


class Receiver:
    """The receiver app served by uvicorn on a free port, in a background thread."""

    def __init__(self, app: Starlette) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, access_log=False, log_config=None, ws="none"
        )
        self._server = uvicorn.Server(config)
        # The thread runs in a copy of this context: Prefect's settings (the test
        # server's API URL) follow it, as they would follow a child process's env.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._server.run,), name="receiver", daemon=True
        )
        self.base_url = ""

    def start(self) -> Receiver:
        self._thread.start()
        wait_until(
            lambda: self._server.started or not self._thread.is_alive(),
            every=0.01,
            what="the receiver did not start",
        )
        if not self._server.started:
            raise RuntimeError("the receiver did not start")
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        """Stop serving. Its shutdown first settles every callback the receiver took up
        (emitting what is due; only past a grace of seconds would it cancel one): once
        this returns, nothing more is emitted."""
        self._server.should_exit = True
        self._thread.join(WAIT_S)
        assert not self._thread.is_alive(), "the receiver did not stop"

    def url(self, secret: str = SECRET) -> str:
        return f"{self.base_url}{CALLBACK_PATH}{secret}"


ReceiverFactory = Callable[[Starlette], Receiver]


@pytest.fixture
def start_receiver() -> Iterator[ReceiverFactory]:
    started: list[Receiver] = []

    def start(app: Starlette) -> Receiver:
        receiver = Receiver(app).start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


@pytest_asyncio.fixture(loop_scope="function")  # the tests' loop, not the session's
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        yield client


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    return make_photo(tmp_path / "model.jpg")


async def finished_task(sandbox: SandboxServer, photo: Path) -> TaskResult:
    """A task the sandbox has finished, submitted without a notify_url."""
    async with HiDreamClient(TOKEN, base_url=sandbox.base_url, poll_interval=0.1) as client:
        receipt = await client.submit_variation(photo, template_id=20)
        return await client.wait_for_result(receipt.task_id, deadline=10)


def callback_body(result: TaskResult) -> dict[str, Any]:
    return {
        "main_task_id": result.task_id,
        "sub_task_results": [sub.model_dump(mode="json") for sub in result.sub_task_results],
    }


def expected_event(result: TaskResult) -> TaskFinished:
    assert result.task_id is not None
    return TaskFinished(
        task_id=result.task_id,
        images=len(result.image_urls),
        statuses=("succeeded",) * len(result.sub_task_results),
    )


async def sandbox_callbacks(http: httpx.AsyncClient, sandbox: SandboxServer) -> list[Any]:
    answer = await http.get(f"{sandbox.base_url}/_sandbox/callbacks")
    callbacks: list[Any] = answer.json()["callbacks"]
    return callbacks


def outcomes(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The receiver's outcome lines ("task <id>: ..." or "task <id> finished: ..."), one
    per callback it took up and settled; the test sets ``modelset.callbacks`` to INFO."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "modelset.callbacks" and record.getMessage().startswith("task ")
    ]


# -- the real path: the sandbox calls back --------------------------------------------


async def test_a_sandbox_callback_becomes_one_event(
    sandbox_factory: SandboxFactory,
    start_receiver: ReceiverFactory,
    http: httpx.AsyncClient,
    photo: Path,
) -> None:
    sandbox = sandbox_factory(generation_s=0.3)
    recorder = Recorder()
    receiver = start_receiver(create_receiver_app(receiver_settings(sandbox), emit=recorder))
    settings = receiver_settings(sandbox, callback_url=receiver.base_url + "/")
    notify_url = settings.notify_url()
    assert notify_url == receiver.url()

    async with HiDreamClient(TOKEN, base_url=sandbox.base_url) as client:
        receipt = await client.submit_variation(photo, template_id=20, notify_url=notify_url)
    events = await recorder.wait_for(1)

    assert events == [
        TaskFinished(receipt.task_id, images=4, statuses=("succeeded",) * 4),
    ]
    assert events[0].resource == {"prefect.resource.id": f"hidream.task.{receipt.task_id}"}
    assert events[0].payload == {
        "task_id": receipt.task_id,
        "images": 4,
        "statuses": ["succeeded"] * 4,
    }
    [delivery] = await sandbox_callbacks(http, sandbox)
    assert delivery["delivered"] is True
    assert delivery["attempts"] == 1
    await asyncio.to_thread(receiver.stop)  # all it took up is settled
    assert len(recorder.events) == 1


async def test_an_early_and_repeated_callback_still_gives_one_event_once_finished(
    sandbox_factory: SandboxFactory,
    start_receiver: ReceiverFactory,
    http: httpx.AsyncClient,
    photo: Path,
) -> None:
    # Halfway through generation, the sandbox posts the final body twice: a lie to
    # see through by re-querying, then a duplicate.
    faults = {"callback_early": 1.0, "callback_dup": 1.0}
    sandbox = sandbox_factory(generation_s=1.0, faults=faults)

    async def finished_as_emitted(event: TaskFinished) -> bool:
        """What the service says of the task as the receiver emits its event."""
        async with HiDreamClient(TOKEN, base_url=sandbox.base_url) as service:
            return (await service.get_result(task_id=event.task_id)).finished

    recorder = Recorder(probe=finished_as_emitted)
    receiver = start_receiver(create_receiver_app(receiver_settings(sandbox), emit=recorder))
    async with HiDreamClient(TOKEN, base_url=sandbox.base_url) as client:
        receipt = await client.submit_variation(photo, template_id=20, notify_url=receiver.url())
        [event] = await recorder.wait_for(1)
        result = await client.get_result(task_id=receipt.task_id)

    assert result.finished
    assert recorder.probed == [True], "emitted while the service said the task still ran"
    assert event == TaskFinished(receipt.task_id, images=4, statuses=("succeeded",) * 4)
    deliveries = await sandbox_callbacks(http, sandbox)
    assert [(d["delivered"], d["attempts"]) for d in deliveries] == [(True, 1)] * 2
    await asyncio.to_thread(receiver.stop)  # both deliveries are settled
    assert len(recorder.events) == 1


async def test_the_event_reports_failed_sub_tasks(
    sandbox_factory: SandboxFactory, start_receiver: ReceiverFactory, photo: Path
) -> None:
    sandbox = sandbox_factory(generation_s=0.2, faults={"fail": 1.0})
    recorder = Recorder()
    receiver = start_receiver(create_receiver_app(receiver_settings(sandbox), emit=recorder))
    async with HiDreamClient(TOKEN, base_url=sandbox.base_url) as client:
        receipt = await client.submit_variation(photo, template_id=20, notify_url=receiver.url())

    [event] = await recorder.wait_for(1)

    assert event == TaskFinished(receipt.task_id, images=0, statuses=("failed",) * 4)


async def test_the_output_location_in_the_callback_url_goes_into_the_event(
    sandbox_factory: SandboxFactory, start_receiver: ReceiverFactory, photo: Path
) -> None:
    sandbox = sandbox_factory(generation_s=0.2)
    recorder = Recorder()
    receiver = start_receiver(create_receiver_app(receiver_settings(sandbox), emit=recorder))
    settings = receiver_settings(sandbox, callback_url=receiver.base_url)
    notify_url = settings.notify_url(BUCKET_OUT)
    assert notify_url is not None
    assert parse_qs(urlsplit(notify_url).query) == {OUT_PARAMETER: [BUCKET_OUT]}

    async with HiDreamClient(TOKEN, base_url=sandbox.base_url) as client:
        receipt = await client.submit_variation(photo, template_id=20, notify_url=notify_url)
    [event] = await recorder.wait_for(1)

    assert event.out == BUCKET_OUT
    assert event.payload == {
        "task_id": receipt.task_id,
        "images": 4,
        "statuses": ["succeeded"] * 4,
        "out": BUCKET_OUT,
    }


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({OUT_PARAMETER: "/data/out\ninjected"}, "malformed out parameter"),
        ({OUT_PARAMETER: ""}, "malformed out parameter"),
        ({OUT_PARAMETER: "s3://b/" + "x" * MAX_OUT_CHARS}, "malformed out parameter"),
        ([(OUT_PARAMETER, "/a"), (OUT_PARAMETER, "/b")], "more than one out parameter"),
    ],
)
async def test_a_malformed_output_location_is_a_400(
    sandbox_factory: SandboxFactory,
    start_receiver: ReceiverFactory,
    http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    query: Any,
    reason: str,
) -> None:
    caplog.set_level(logging.INFO, logger="modelset.callbacks")
    sandbox = sandbox_factory()
    recorder = Recorder()
    receiver = start_receiver(create_receiver_app(receiver_settings(sandbox), emit=recorder))

    answer = await http.post(receiver.url(), params=query, json={"main_task_id": "t-1"})

    assert answer.status_code == 400
    assert answer.json() == {"ok": False, "error": reason}
    await asyncio.to_thread(receiver.stop)  # anything it took up is settled
    assert outcomes(caplog) == [], "the refused callback's task was taken up"
    assert recorder.events == []


def test_an_event_id_depends_on_the_task_and_its_outcome_only() -> None:
    finished = TaskFinished("t-1", images=4, statuses=("succeeded",) * 4, out="/data/out")

    assert finished.id == TaskFinished("t-1", images=4, statuses=("succeeded",) * 4).id
    assert finished.id != TaskFinished("t-2", images=4, statuses=("succeeded",) * 4).id
    assert finished.id != TaskFinished("t-1", images=3, statuses=("succeeded",) * 3).id
    assert finished.id.version == 5


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server")
async def test_the_real_emit_reaches_the_prefect_server(
    sandbox_factory: SandboxFactory, start_receiver: ReceiverFactory, photo: Path
) -> None:
    sandbox = sandbox_factory(generation_s=0.2)
    receiver = start_receiver(create_receiver_app(receiver_settings(sandbox)))
    async with HiDreamClient(TOKEN, base_url=sandbox.base_url) as client:
        receipt = await client.submit_variation(photo, template_id=20, notify_url=receiver.url())
    resource_id = f"hidream.task.{receipt.task_id}"

    events = await wait_for_events(EVENT_NAME, resource_id)

    [event] = events
    assert event.event == EVENT_NAME
    assert event.resource.id == resource_id
    assert event.payload == {
        "task_id": receipt.task_id,
        "images": 4,
        "statuses": ["succeeded"] * 4,
    }


# -- who may call, and what -------------------------------------------------------------


async def test_a_forged_callback_is_a_404_like_any_unknown_path(
    sandbox_factory: SandboxFactory,
    start_receiver: ReceiverFactory,
    http: httpx.AsyncClient,
    photo: Path,
) -> None:
    sandbox = sandbox_factory(generation_s=0.1)
    result = await finished_task(sandbox, photo)
    recorder = Recorder()
    receiver = start_receiver(create_receiver_app(receiver_settings(sandbox), emit=recorder))
    unknown = await http.post(f"{receiver.base_url}/nothing/here", json={})

    for secret in SIMILAR_SECRETS:
        for method in ("POST", "GET", "PUT"):
            forged = await http.request(method, receiver.url(secret), json=callback_body(result))
            assert (forged.status_code, forged.content) == (404, unknown.content)
    trailing = await http.post(receiver.url(SECRET[:-1]) + "/", json=callback_body(result))
    assert trailing.status_code == 404
    assert trailing.content == unknown.content
    for bare in (receiver.url(""), receiver.url("").rstrip("/")):
        answer = await http.post(bare, json=callback_body(result))
        assert (answer.status_code, answer.content) == (404, unknown.content)

    await asyncio.to_thread(receiver.stop)  # anything it took up is settled
    assert recorder.events == []


@pytest.mark.parametrize("secret", [None, ""])
async def test_without_a_configured_secret_every_callback_is_a_404(
    sandbox_factory: SandboxFactory,
    start_receiver: ReceiverFactory,
    http: httpx.AsyncClient,
    photo: Path,
    secret: str | None,
) -> None:
    sandbox = sandbox_factory(generation_s=0.1)
    result = await finished_task(sandbox, photo)
    recorder = Recorder()
    settings = receiver_settings(sandbox, callback_secret=secret)
    receiver = start_receiver(create_receiver_app(settings, emit=recorder))

    for tried in (SECRET, "", "None"):
        answer = await http.post(receiver.url(tried), json=callback_body(result))
        assert answer.status_code == 404

    await asyncio.to_thread(receiver.stop)  # anything it took up is settled
    assert recorder.events == []
    assert settings.model_copy(update={"callback_url": "https://x"}).notify_url() is None


async def test_with_the_secret_other_methods_are_405(
    sandbox_factory: SandboxFactory, start_receiver: ReceiverFactory, http: httpx.AsyncClient
) -> None:
    sandbox = sandbox_factory()
    receiver = start_receiver(create_receiver_app(receiver_settings(sandbox), emit=Recorder()))

    answer = await http.get(receiver.url())

    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "body is not JSON"),
        (b"\xff\xfe\x00garbage", "body is not JSON"),
        (b"", "body is not JSON"),
        (b"[" * 5000 + b"]" * 5000, "body is not JSON"),
        (b"[]", "body is not a task result"),
        (b'["main_task_id", "abc"]', "body is not a task result"),
        (b'"abc"', "body is not a task result"),
        (b'{"main_task_id": "abc", "sub_task_results": "all good"}', "body is not a task result"),
        (b'{"code": 0, "result": [1, 2]}', "body is not a task result"),
        (b'{"main_task_id": 12345}', "body is not a task result"),
        (b'{"sub_task_results": []}', "body names no task id"),
        (b'{"main_task_id": ""}', "body names no task id"),
        (b'{"main_task_id": "abc\\ninjected log line"}', "malformed task id"),
        (b'{"main_task_id": "../../etc"}', "malformed task id"),
        (json.dumps({"main_task_id": "a" * 200}).encode(), "malformed task id"),
    ],
)
async def test_a_body_that_is_not_a_callback_is_a_400(
    sandbox_factory: SandboxFactory,
    start_receiver: ReceiverFactory,
    http: httpx.AsyncClient,
    body: bytes,
    reason: str,
) -> None:
    sandbox = sandbox_factory()
    recorder = Recorder()
    receiver = start_receiver(create_receiver_app(receiver_settings(sandbox), emit=recorder))

    answer = await http.post(receiver.url(), content=body)

    assert answer.status_code == 400
    assert answer.json() == {"ok": False, "error": reason}
    assert recorder.events == []


# -- body size ---------------------------------------------------------------------------


async def chunks(total: int, size: int = 4096) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        sent += piece
        yield b" " * piece


async def test_an_oversized_body_is_a_413_with_or_without_content_length(
    sandbox_factory: SandboxFactory, start_receiver: ReceiverFactory, http: httpx.AsyncClient
) -> None:
    sandbox = sandbox_factory()
    recorder = Recorder()
    receiver = start_receiver(create_receiver_app(receiver_settings(sandbox), emit=recorder))
    # Valid JSON of 65 KB: only its size is wrong.
    body = json.dumps({"main_task_id": "abc", "pad": "x" * 65 * 1024}).encode()

    sized = await http.post(receiver.url(), content=body)
    chunked = await http.post(receiver.url(), content=chunks(65 * 1024))
    just_fits = await http.post(receiver.url(), content=chunks(MAX_BODY_BYTES))

    assert sized.status_code == 413
    assert chunked.status_code == 413
    assert just_fits.status_code == 400  # read in full: 64 KB of spaces is no JSON
    assert recorder.events == []


async def raw_status(receiver: Receiver, head: str, body: bytes) -> int:
    """Send a request that never completes; return the status of the early answer."""
    where = urlsplit(receiver.base_url)
    assert where.hostname is not None and where.port is not None
    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    try:
        path = urlsplit(receiver.url()).path
        writer.write(f"POST {path} HTTP/1.1\r\nHost: receiver\r\n{head}\r\n".encode() + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    finally:
        writer.close()
    return int(status_line.split()[1])


async def test_the_413_comes_before_the_body_has_been_sent(
    sandbox_factory: SandboxFactory, start_receiver: ReceiverFactory
) -> None:
    sandbox = sandbox_factory()
    receiver = start_receiver(create_receiver_app(receiver_settings(sandbox), emit=Recorder()))

    # Announces 100 MB, sends nothing of it.
    assert await raw_status(receiver, "Content-Length: 100000000\r\n", b"") == 413
    # One chunk just over the limit, then no end of the chunked body.
    size = MAX_BODY_BYTES + 1
    chunk = f"{size:x}\r\n".encode() + b" " * size + b"\r\n"
    assert await raw_status(receiver, "Transfer-Encoding: chunked\r\n", chunk) == 413


# -- the body is only a hint --------------------------------------------------------------


async def test_a_task_unknown_to_the_service_gives_no_event(
    sandbox_factory: SandboxFactory,
    start_receiver: ReceiverFactory,
    http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="modelset.callbacks")
    sandbox = sandbox_factory()
    recorder = Recorder()
    receiver = start_receiver(create_receiver_app(receiver_settings(sandbox), emit=recorder))
    forged_id = "0b9c6a1e-0000-4000-8000-000000000000"
    claim = {
        "main_task_id": forged_id,
        "sub_task_results": [
            {"sub_task_id": "s1", "task_status": 1, "task_completion": 1.0, "image": "https://x"}
        ],
    }

    answer = await http.post(receiver.url(), json=claim)
    await until(lambda: outcomes(caplog), what="the callback was never settled")

    assert answer.status_code == 200  # a hint is acknowledged; it is checked afterwards
    assert outcomes(caplog) == [f"task {forged_id}: unknown to the service; callback ignored"]
    assert recorder.events == []


async def test_a_callback_that_arrives_early_waits_for_the_task_to_finish(
    sandbox_factory: SandboxFactory,
    start_receiver: ReceiverFactory,
    http: httpx.AsyncClient,
    photo: Path,
) -> None:
    sandbox = sandbox_factory(generation_s=0.8)
    recorder = Recorder()
    receiver = start_receiver(create_receiver_app(receiver_settings(sandbox), emit=recorder))
    async with HiDreamClient(TOKEN, base_url=sandbox.base_url) as client:
        receipt = await client.submit_variation(photo, template_id=20)

    early = await http.post(receiver.url(), json={"main_task_id": receipt.task_id})
    events = await recorder.wait_for(1)

    assert early.status_code == 200
    assert events == [TaskFinished(receipt.task_id, images=4, statuses=("succeeded",) * 4)]


async def test_a_task_not_finished_within_the_grace_gives_no_event_until_called_again(
    sandbox_factory: SandboxFactory,
    start_receiver: ReceiverFactory,
    http: httpx.AsyncClient,
    photo: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="modelset.callbacks")
    sandbox = sandbox_factory(generation_s=1.0)
    recorder = Recorder()
    app = create_receiver_app(receiver_settings(sandbox), emit=recorder, finish_grace_s=0.2)
    receiver = start_receiver(app)
    async with HiDreamClient(TOKEN, base_url=sandbox.base_url, poll_interval=0.1) as client:
        receipt = await client.submit_variation(photo, template_id=20)
        await http.post(receiver.url(), json={"main_task_id": receipt.task_id})
        [settled] = await until(lambda: outcomes(caplog), what="the callback was never settled")
        assert settled.startswith(f"task {receipt.task_id}: not finished "), settled
        assert recorder.events == []
        await client.wait_for_result(receipt.task_id, deadline=10)

    again = await http.post(receiver.url(), json={"main_task_id": receipt.task_id})

    assert again.json() == {"ok": True, "duplicate": False}
    assert len(await recorder.wait_for(1)) == 1


async def test_the_envelope_shaped_body_works_too(
    sandbox_factory: SandboxFactory,
    start_receiver: ReceiverFactory,
    http: httpx.AsyncClient,
    photo: Path,
) -> None:
    sandbox = sandbox_factory(generation_s=0.1)
    result = await finished_task(sandbox, photo)
    recorder = Recorder()
    receiver = start_receiver(create_receiver_app(receiver_settings(sandbox), emit=recorder))
    body = callback_body(result)
    envelope = {
        "code": 0,
        "message": "Success",
        "request_id": "r-1",
        "result": {"task_id": body["main_task_id"], "sub_task_results": body["sub_task_results"]},
    }

    answer = await http.post(receiver.url(), json=envelope)

    assert answer.status_code == 200
    # The envelope's request_id goes along: the collector matches it to a send whose
    # answer was lost, if the ledger holds one with that request_id.
    expected = replace(expected_event(result), request_id="r-1")
    assert await recorder.wait_for(1) == [expected]


async def test_the_request_id_the_callback_url_names_goes_into_the_event(
    sandbox_factory: SandboxFactory,
    start_receiver: ReceiverFactory,
    http: httpx.AsyncClient,
    photo: Path,
) -> None:
    sandbox = sandbox_factory(generation_s=0.1)
    result = await finished_task(sandbox, photo)
    recorder = Recorder()
    receiver = start_receiver(create_receiver_app(receiver_settings(sandbox), emit=recorder))
    url = naming_request(receiver.url(), "0b9c7d1e-5f6a-4b8c-9d0e-1f2a3b4c5d6e")
    assert url is not None

    answer = await http.post(url, json=callback_body(result))
    refused = await http.post(f"{url}&request_id=again", json=callback_body(result))
    forged = await http.post(f"{receiver.url()}?request_id=%0Ainjected", json=callback_body(result))

    assert answer.status_code == 200
    assert (refused.status_code, forged.status_code) == (400, 400)
    expected = replace(expected_event(result), request_id="0b9c7d1e-5f6a-4b8c-9d0e-1f2a3b4c5d6e")
    assert await recorder.wait_for(1) == [expected]


# -- exactly one event per task -------------------------------------------------------------


async def test_duplicate_deliveries_emit_one_event(
    sandbox_factory: SandboxFactory,
    start_receiver: ReceiverFactory,
    http: httpx.AsyncClient,
    photo: Path,
) -> None:
    sandbox = sandbox_factory(generation_s=0.1)
    result = await finished_task(sandbox, photo)
    recorder = Recorder()
    receiver = start_receiver(create_receiver_app(receiver_settings(sandbox), emit=recorder))
    body = callback_body(result)

    concurrent = await asyncio.gather(*(http.post(receiver.url(), json=body) for _ in range(8)))
    await recorder.wait_for(1)
    sequential = [await http.post(receiver.url(), json=body) for _ in range(3)]
    await asyncio.to_thread(receiver.stop)  # all it took up is settled

    assert [answer.status_code for answer in concurrent + sequential] == [200] * 11
    duplicates = [answer.json()["duplicate"] for answer in concurrent]
    assert duplicates.count(False) == 1
    assert all(answer.json()["duplicate"] for answer in sequential)
    assert recorder.events == [expected_event(result)]


async def test_two_receivers_give_the_same_callback_the_same_event_id(
    sandbox_factory: SandboxFactory,
    start_receiver: ReceiverFactory,
    http: httpx.AsyncClient,
    photo: Path,
) -> None:
    sandbox = sandbox_factory(generation_s=0.1)
    result = await finished_task(sandbox, photo)
    recorders = [Recorder(), Recorder()]
    receivers = [
        start_receiver(create_receiver_app(receiver_settings(sandbox), emit=recorder))
        for recorder in recorders
    ]
    params = {OUT_PARAMETER: BUCKET_OUT}

    for receiver in receivers:
        answer = await http.post(receiver.url(), params=params, json=callback_body(result))
        assert answer.json() == {"ok": True, "duplicate": False}
    [first], [second] = [await recorder.wait_for(1) for recorder in recorders]

    assert first == second
    assert first.id == second.id
    assert first.out == BUCKET_OUT


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server")
async def test_prefect_keeps_one_event_of_a_callback_two_receivers_emitted(
    sandbox_factory: SandboxFactory,
    start_receiver: ReceiverFactory,
    http: httpx.AsyncClient,
    photo: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="modelset.callbacks")
    sandbox = sandbox_factory(generation_s=0.1)
    result = await finished_task(sandbox, photo)
    assert result.task_id is not None
    receivers = [start_receiver(create_receiver_app(receiver_settings(sandbox))) for _ in (1, 2)]
    for receiver in receivers:
        await http.post(
            receiver.url(), params={OUT_PARAMETER: BUCKET_OUT}, json=callback_body(result)
        )
    resource_id = f"hidream.task.{result.task_id}"
    emitted = f"task {result.task_id} finished: emitted"
    await until(lambda: caplog.text.count(emitted) >= 2, what=lambda: caplog.text)
    assert caplog.text.count(emitted) == 2  # each receiver emitted its own

    await events_caught_up()  # the server has stored, or dropped, both emissions
    events = await stored_events(EVENT_NAME, resource_id)

    expected = TaskFinished.from_result(result.task_id, result, BUCKET_OUT)
    assert [(event.id, event.payload) for event in events] == [(expected.id, expected.payload)]


async def test_an_event_that_could_not_be_emitted_is_tried_again_on_redelivery(
    sandbox_factory: SandboxFactory,
    start_receiver: ReceiverFactory,
    http: httpx.AsyncClient,
    photo: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="modelset.callbacks")
    sandbox = sandbox_factory(generation_s=0.1)
    result = await finished_task(sandbox, photo)
    emitted: list[TaskFinished] = []
    attempts = 0

    async def flaky_emit(event: TaskFinished) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("events API down")
        emitted.append(event)

    receiver = start_receiver(create_receiver_app(receiver_settings(sandbox), emit=flaky_emit))
    await http.post(receiver.url(), json=callback_body(result))
    # Logged as the receiver lets the task go: the redelivery below comes after that.
    [failed] = await until(lambda: outcomes(caplog), what="the callback was never settled")
    assert failed == f"task {result.task_id}: no event (RuntimeError: events API down)"

    again = await http.post(receiver.url(), json=callback_body(result))
    await until(lambda: emitted, what="the redelivery emitted nothing")

    assert attempts == 2
    assert again.json() == {"ok": True, "duplicate": False}
    assert emitted == [expected_event(result)]


async def test_too_many_callbacks_in_flight_is_a_503(
    sandbox_factory: SandboxFactory, start_receiver: ReceiverFactory, http: httpx.AsyncClient
) -> None:
    sandbox = sandbox_factory(latency_ms=800)  # keeps the first re-query in flight
    app = create_receiver_app(receiver_settings(sandbox), emit=Recorder(), max_in_flight=1)
    receiver = start_receiver(app)

    first = await http.post(receiver.url(), json={"main_task_id": "task-1"})
    second = await http.post(receiver.url(), json={"main_task_id": "task-2"})

    assert first.status_code == 200
    assert second.status_code == 503


# -- logs, health, notify_url ----------------------------------------------------------------


async def test_the_secret_never_reaches_the_logs(
    sandbox_factory: SandboxFactory,
    start_receiver: ReceiverFactory,
    http: httpx.AsyncClient,
    photo: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sandbox = sandbox_factory(generation_s=0.2)
    recorder = Recorder()
    receiver = start_receiver(create_receiver_app(receiver_settings(sandbox), emit=recorder))
    async with HiDreamClient(TOKEN, base_url=sandbox.base_url) as client:
        receipt = await client.submit_variation(photo, template_id=20, notify_url=receiver.url())
    await recorder.wait_for(1)
    for secret in SIMILAR_SECRETS:
        await http.post(receiver.url(secret), json={"main_task_id": receipt.task_id})
    await http.post(receiver.url(), content=b"{oops")
    await http.post(receiver.url(), content=b" " * (MAX_BODY_BYTES + 1))
    await http.post(receiver.url(), json={"main_task_id": receipt.task_id})

    # httpx's own INFO line names every URL it requests: those are the callers' logs
    # (this test's client and the sandbox's delivery), not the receiver's.
    receiver_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    text = "\n".join(caplog.handler.format(record) for record in receiver_side)
    callback_lines = [r.getMessage() for r in receiver_side if r.name == "modelset.callbacks"]
    assert f"callback /hidream/callback/{{secret}} task={receipt.task_id} -> 200" in text
    assert len([line for line in callback_lines if "-> 404" in line]) == len(SIMILAR_SECRETS)
    for secret in [SECRET, *SIMILAR_SECRETS]:
        assert secret not in text
    assert TOKEN not in text


def test_serve_receiver_needs_a_secret_and_a_token(sandbox: SandboxServer) -> None:
    with pytest.raises(UsageError, match="HIDREAM_CALLBACK_SECRET"):
        serve_receiver("127.0.0.1", 0, receiver_settings(sandbox, callback_secret=None))
    with pytest.raises(MissingTokenError):
        serve_receiver("127.0.0.1", 0, receiver_settings(sandbox, api_token=None))


def test_serve_receiver_keeps_the_secret_out_of_its_output(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "HIDREAM_CALLBACK_SECRET": SECRET,
        "HIDREAM_API_TOKEN": TOKEN,
        "HIDREAM_BASE_URL": sandbox.base_url,
    }
    script = (
        "from modelset.deployments.callbacks import serve_receiver\n"
        "from modelset.settings import Settings\n"
        f"serve_receiver('127.0.0.1', {port}, Settings())\n"
    )
    log = tmp_path / "receiver.log"

    def said() -> str:
        return log.read_text(errors="replace")

    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", script], cwd=tmp_path, env=env, stdout=sink, stderr=sink
        )
    try:
        with httpx.Client(base_url=base_url, trust_env=False, timeout=5) as client:

            def healthy() -> bool:
                assert process.poll() is None, said()
                with contextlib.suppress(httpx.TransportError):
                    return client.get("/healthz").status_code == 200
                return False

            wait_until(healthy, every=0.1, what=said)
            forged = client.post(f"{CALLBACK_PATH}{SECRET[:-1]}", json={"main_task_id": "t-1"})
            real = client.post(f"{CALLBACK_PATH}{SECRET}", json={"main_task_id": "t-1"})
        # The re-query finds no such task, and the receiver says so.
        wait_until(lambda: "task t-1: unknown to the service" in said(), what=said)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)
    output = said()

    assert (forged.status_code, real.status_code) == (404, 200)
    assert process.returncode == 0, output
    assert "callback /hidream/callback/{secret} task=t-1 -> 200" in output
    assert "task t-1: unknown to the service" in output
    assert "/healthz" not in output  # no access log
    assert SECRET[:-1] not in output
    assert TOKEN not in output


async def test_health(
    sandbox_factory: SandboxFactory, start_receiver: ReceiverFactory, http: httpx.AsyncClient
) -> None:
    receiver = start_receiver(create_receiver_app(receiver_settings(sandbox_factory())))

    answer = await http.get(f"{receiver.base_url}/healthz")

    assert answer.status_code == 200
    assert answer.json() == {"ok": True}


@pytest.mark.parametrize(
    ("callback_url", "secret", "expected"),
    [
        ("https://hooks.example.com", "abc", "https://hooks.example.com/hidream/callback/abc"),
        ("https://h.example.com/base/", "abc", "https://h.example.com/base/hidream/callback/abc"),
        ("https://h.example.com", "a/b c?", "https://h.example.com/hidream/callback/a%2Fb%20c%3F"),
        (None, "abc", None),
        ("https://hooks.example.com", None, None),
        ("https://hooks.example.com", "", None),
    ],
)
def test_notify_url(callback_url: str | None, secret: str | None, expected: str | None) -> None:
    settings = Settings(_env_file=None, callback_url=callback_url, callback_secret=secret)

    assert settings.notify_url() == expected


def test_a_quoted_secret_matches_its_route(
    sandbox: SandboxServer, start_receiver: ReceiverFactory
) -> None:
    settings = receiver_settings(sandbox, callback_secret="a/b c?é")
    receiver = start_receiver(create_receiver_app(settings, emit=Recorder()))
    notify_url = settings.model_copy(update={"callback_url": receiver.base_url}).notify_url()
    assert notify_url is not None

    answer = httpx.post(notify_url, json={"sub_task_results": []}, trust_env=False)

    assert answer.status_code == 400  # past the secret check: the body names no task


# -- whatever arrives, never a 5xx ------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
task_ids = st.text(max_size=20) | st.uuids().map(str) | json_values
callback_like = st.fixed_dictionaries(
    {"main_task_id": task_ids},
    optional={"sub_task_results": st.lists(json_values, max_size=3) | json_values},
) | st.fixed_dictionaries({"code": json_values, "result": json_values})
bodies = (
    st.binary(max_size=512)
    | json_values.map(lambda value: json.dumps(value).encode())
    | callback_like.map(lambda value: json.dumps(value).encode())
)


def test_no_body_gets_a_5xx(sandbox: SandboxServer, start_receiver: ReceiverFactory) -> None:
    recorder = Recorder()
    receiver = start_receiver(create_receiver_app(receiver_settings(sandbox), emit=recorder))
    statuses: set[int] = set()

    with httpx.Client(trust_env=False, timeout=10) as client:

        @settings(
            max_examples=100,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(body=bodies)
        # Both answers the assertion below expects, whatever hypothesis draws besides.
        @example(body=b'{"main_task_id": "t-1", "sub_task_results": []}')
        @example(body=b"\x00not json")
        def post(body: bytes) -> None:
            answer = client.post(receiver.url(), content=body)
            statuses.add(answer.status_code)
            assert 200 <= answer.status_code < 500, (answer.status_code, body)

        post()

    assert {200, 400} <= statuses
    assert recorder.events == []
