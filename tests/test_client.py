"""The HiDream client against the sandbox over 127.0.0.1: every success and error path."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest
from PIL import Image

from modelset.hidream import (
    ConnectFailed,
    DeadlineExceeded,
    HiDreamClient,
    NoCredits,
    OutcomeUnknown,
    RequestRejected,
    ServiceError,
    TaskNotFound,
    TaskResult,
    TaskStatus,
    TokenRejected,
    parse_callback_body,
    parse_retry_after,
)
from modelset.sandbox import SandboxServer
from tests.conftest import TOKEN, SandboxFactory, free_port, make_photo


def client_for(server: SandboxServer, token: str = TOKEN, **options: object) -> HiDreamClient:
    defaults: dict[str, object] = {"poll_interval": 0.1, "poll_max_interval": 0.3}
    defaults.update(options)
    return HiDreamClient(token, base_url=server.base_url, **defaults)  # type: ignore[arg-type]


def sandbox_requests(caplog: pytest.LogCaptureFixture, method: str) -> int:
    return sum(
        1
        for record in caplog.records
        if record.name == "modelset.sandbox" and record.getMessage().startswith(method)
    )


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    return make_photo(tmp_path / "model.jpg")


async def test_submit_wait_and_download_a_set(sandbox: SandboxServer, photo: Path) -> None:
    async with client_for(sandbox) as client:
        receipt = await client.submit_variation(photo, template_id=20, request_id="req-1")
        assert receipt.task_id
        assert len(receipt.sub_task_ids) == 4
        assert receipt.request_id == "req-1"
        result = await client.wait_for_result(receipt.task_id, deadline=10)
    assert result.finished
    assert [s.task_status for s in result.sub_task_results] == [TaskStatus.SUCCEEDED] * 4
    assert len(result.image_urls) == 4
    async with httpx.AsyncClient() as http:
        for url in result.image_urls:
            response = await http.get(url)
            assert response.status_code == 200
            image = Image.open(io.BytesIO(response.content))
            assert image.format == "JPEG"
            assert abs(image.width / image.height - 0.75) <= 0.01


async def test_official_example_bodies_both_succeed(sandbox: SandboxServer, photo: Path) -> None:
    encoded = base64.b64encode(photo.read_bytes()).decode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    url = f"{sandbox.base_url}/api-pub/ec/v3/image/variation/async"
    async with httpx.AsyncClient() as http:
        for field in ("image", "person"):
            answer = (
                await http.post(url, json={field: encoded, "template_id": 20}, headers=headers)
            ).json()
            assert answer["code"] == 0, answer
            assert answer["result"]["task_id"]
            assert len(answer["result"]["sub_task_ids"]) == 4
    assert len(sandbox.submissions()) == 2


class Recording(httpx.AsyncBaseTransport):
    """The real transport, noting each request's headers and the chunks its body went in."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[tuple[httpx.Headers, list[int]]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        sizes: list[int] = []
        request.stream = _Noted(request.stream, sizes)
        self.sent.append((request.headers, sizes))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Noted(httpx.AsyncByteStream):
    """A request's body passed on unchanged, noting the size of each chunk."""

    def __init__(self, body: httpx.AsyncByteStream, sizes: list[int]) -> None:
        self.body = body
        self.sizes = sizes

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.body:
            self.sizes.append(len(chunk))
            yield chunk


async def test_a_photo_file_is_streamed_into_the_submit_and_arrives_whole(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    """A send in flight holds a chunk of the photo, not the photo: the body goes out in
    chunks of about 64 KiB of the file, its length declared, and the service decodes the
    very bytes of the file (one whose size is no multiple of three, padding included)."""
    photo = tmp_path / "large.jpg"
    Image.effect_noise((1200, 1600), 80).convert("RGB").save(photo, "JPEG", quality=95)
    with photo.open("ab") as grown:  # bytes after the JPEG's end, which decoders ignore
        grown.write(b"\0" * (1 if photo.stat().st_size % 3 != 1 else 2))
    size = photo.stat().st_size
    assert size > 1_000_000 and size % 3

    transport = Recording()
    async with client_for(sandbox, transport=transport) as client:
        await client.submit_variation(photo, template_id=20, request_id="streamed")

    [accepted] = sandbox.submissions()
    assert accepted["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()
    [(headers, chunks)] = transport.sent
    assert int(headers["content-length"]) == sum(chunks)
    assert "transfer-encoding" not in headers
    assert len(chunks) > size // 65_536
    assert max(chunks) <= 4 * 65_538 // 3


async def test_lookup_by_task_and_request_id(sandbox_factory: SandboxFactory, photo: Path) -> None:
    sandbox = sandbox_factory(lookup_by_request_id=True)
    async with client_for(sandbox) as client:
        receipt = await client.submit_variation(photo, 20, request_id="lookup-me")
        by_request = await client.get_result(request_id="lookup-me")
        by_task = await client.get_result(task_id=receipt.task_id)
        with pytest.raises(TaskNotFound):
            await client.get_result(task_id="no-such-task")
    assert by_request.task_id == by_task.task_id == receipt.task_id


async def test_wrong_token_is_rejected_without_retry_or_leak(
    sandbox: SandboxServer, photo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "wrong-token-ab12cd34"
    async with client_for(sandbox, token=secret) as client:
        with pytest.raises(TokenRejected) as raised:
            await client.submit_variation(photo, 20)
        assert secret not in repr(client)
    assert "token" in str(raised.value)
    assert "HIDREAM_API_TOKEN" in str(raised.value)
    assert secret not in str(raised.value)
    assert secret not in repr(raised.value)
    assert sandbox_requests(caplog, "POST") == 1
    assert secret not in caplog.text
    assert TOKEN not in caplog.text
    assert sandbox.submissions() == []


async def test_bad_input_is_rejected_once_with_the_reason(
    sandbox: SandboxServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    wide = make_photo(tmp_path / "wide.jpg", size=(800, 600))
    async with client_for(sandbox) as client:
        with pytest.raises(RequestRejected) as raised:
            await client.submit_variation(wide, 20, request_id="wide")
        with pytest.raises(RequestRejected, match="template"):
            await client.submit_variation(make_photo(tmp_path / "ok.jpg"), 99999)
    assert "800" in str(raised.value)
    assert sandbox_requests(caplog, "POST") == 2
    assert sandbox.submissions() == []


async def test_throttling_is_survived_and_retry_after_honoured(
    sandbox_factory: SandboxFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = sandbox_factory(faults={"throttle": 0.5}, retry_after_s=1, seed=3)
    photos = [make_photo(tmp_path / f"p{i}.jpg", colour=(i * 40, 80, 90)) for i in range(4)]
    started = time.monotonic()
    async with client_for(server) as client:
        receipts = [
            await client.submit_variation(p, 20, request_id=f"t{i}") for i, p in enumerate(photos)
        ]
    elapsed = time.monotonic() - started
    throttled = sandbox_requests(caplog, "POST") - len(photos)
    assert throttled >= 1, "seed 3 at rate 0.5 should throttle at least once"
    assert elapsed >= throttled * 1.0, "each 429 must be followed by the Retry-After wait"
    assert len({r.task_id for r in receipts}) == 4
    assert len(server.submissions()) == 4


async def test_stalled_submit_is_resolved_by_a_lookup_proven_to_work(
    sandbox_factory: SandboxFactory, photo: Path
) -> None:
    server = sandbox_factory(faults={"stall": 1.0}, lookup_by_request_id=True)
    async with client_for(
        server, submit_timeout=1.0, read_timeout=1.0, request_id_lookup_proven=True
    ) as client:
        receipt = await client.submit_variation(photo, 20, request_id="stalled-1")
    assert receipt.found_by_lookup
    submissions = server.submissions()
    assert len(submissions) == 1
    assert submissions[0]["request_id"] == "stalled-1"
    assert submissions[0]["task_id"] == receipt.task_id


@pytest.mark.parametrize("fault", ["stall", "lost_answer", "server_error"])
async def test_a_lost_answer_without_a_proven_lookup_is_outcome_unknown_and_not_resent(
    sandbox_factory: SandboxFactory, photo: Path, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    caplog.set_level(logging.INFO)
    # The sandbox would find the task by request_id, but nobody has shown the client so.
    server = sandbox_factory(faults={fault: 1.0}, lookup_by_request_id=True)
    async with client_for(server, submit_timeout=1.0) as client:
        with pytest.raises(OutcomeUnknown) as raised:
            await client.submit_variation(photo, 20, request_id="lost-1")
    assert raised.value.request_id == "lost-1"
    assert "paid" in raised.value.message
    assert len(server.submissions()) == (0 if fault == "server_error" else 1)
    assert sandbox_requests(caplog, "POST") <= 1, "sent once, never again"
    assert sandbox_requests(caplog, "GET /api-pub") == 0, "no lookup without proof"


async def test_a_submit_waits_longer_than_a_read_for_its_answer(
    sandbox_factory: SandboxFactory, photo: Path
) -> None:
    server = sandbox_factory(latency_ms=1500)
    async with client_for(server, read_timeout=0.5, submit_timeout=5.0, max_attempts=1) as client:
        receipt = await client.submit_variation(photo, 20, request_id="slow-accept")
        with pytest.raises(ServiceError):
            await client.get_result(task_id=receipt.task_id)
    assert [s["request_id"] for s in server.submissions()] == ["slow-accept"]


async def test_server_errors_before_a_task_exists_are_resent_after_lookup(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    server = sandbox_factory(faults={"server_error": 0.5}, seed=11, lookup_by_request_id=True)
    photos = [make_photo(tmp_path / f"s{i}.jpg", colour=(30 * i, 60, 200)) for i in range(6)]
    # read_timeout sets the pause before "not found" is asked again: keep it short here.
    async with client_for(
        server, max_attempts=8, read_timeout=2.0, request_id_lookup_proven=True
    ) as client:
        for i, path in enumerate(photos):
            await client.submit_variation(path, 20, request_id=f"s{i}")
    request_ids = [s["request_id"] for s in server.submissions()]
    assert sorted(request_ids) == [f"s{i}" for i in range(6)]


async def test_persistent_server_errors_give_up_with_a_service_error(
    sandbox_factory: SandboxFactory, photo: Path
) -> None:
    server = sandbox_factory(faults={"server_error": 1.0}, lookup_by_request_id=True)
    async with client_for(
        server, max_attempts=2, read_timeout=2.0, request_id_lookup_proven=True
    ) as client:
        with pytest.raises(ServiceError, match="HTTP 500"):
            await client.submit_variation(photo, 20, request_id="e1")
    assert server.submissions() == []


async def test_no_credits_is_its_own_error(sandbox_factory: SandboxFactory, photo: Path) -> None:
    server = sandbox_factory(faults={"no_credits": 1.0})
    async with client_for(server) as client:
        with pytest.raises(NoCredits, match="no credits"):
            await client.submit_variation(photo, 20)


async def test_connect_failure_says_so(photo: Path) -> None:
    client = HiDreamClient(TOKEN, base_url=f"http://127.0.0.1:{free_port()}", max_attempts=2)
    async with client:
        with pytest.raises(ConnectFailed, match="could not connect"):
            await client.submit_variation(photo, 20)


@pytest.mark.parametrize(("fault", "status"), [("fail", 3), ("reject", 4)])
async def test_failed_and_rejected_sub_tasks_carry_their_reason(
    sandbox_factory: SandboxFactory, photo: Path, fault: str, status: int
) -> None:
    server = sandbox_factory(faults={fault: 1.0})
    async with client_for(server) as client:
        receipt = await client.submit_variation(photo, 20)
        result = await client.wait_for_result(receipt.task_id, deadline=10)
    assert {int(s.task_status) for s in result.sub_task_results} == {status}
    assert result.image_urls == []
    assert all(reason for reason in result.failure_reasons())


async def test_wait_stops_at_the_deadline(sandbox_factory: SandboxFactory, photo: Path) -> None:
    server = sandbox_factory(generation_s=30)
    async with client_for(server) as client:
        receipt = await client.submit_variation(photo, 20)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as raised:
            await client.wait_for_result(receipt.task_id, deadline=1.0)
    assert 1.0 <= time.monotonic() - started < 2.5
    assert raised.value.last_result is not None
    assert not raised.value.last_result.finished


async def test_templates_walk_every_page(sandbox: SandboxServer) -> None:
    async with client_for(sandbox) as client:
        every = await client.list_templates(page_size=3)
        women = await client.list_templates("woman")
        all_at_once = await client.list_templates()
    ids = [t.id for t in every]
    assert len(ids) >= 8
    assert 20 in ids
    assert ids == [t.id for t in all_at_once]
    assert women
    assert all(t.gender == "woman" for t in women)
    assert all(t.show_image.startswith("http") for t in every)


def test_unknown_task_status_is_kept_and_not_final() -> None:
    result = TaskResult.model_validate(
        {
            "sub_task_results": [
                {"sub_task_id": "a", "task_status": 7, "extra": "kept"},
                {"sub_task_id": "b", "task_status": 1, "image": "http://x/1.jpg"},
            ]
        }
    )
    unknown = result.sub_task_results[0].task_status
    assert int(unknown) == 7
    assert not unknown.is_known
    assert not unknown.is_final
    assert not result.finished
    assert TaskStatus(-1).is_final is False
    assert TaskStatus(1005).is_final is True


def test_callback_bodies_in_both_documented_shapes() -> None:
    subs = [{"sub_task_id": "s1", "task_status": 1, "image": "http://x/1.jpg"}]
    old = parse_callback_body({"main_task_id": "t1", "sub_task_results": subs})
    wrapped = parse_callback_body(
        {"code": 0, "message": "Success", "result": {"task_id": "t1", "sub_task_results": subs}}
    )
    assert old.task_id == wrapped.task_id == "t1"
    assert old.image_urls == wrapped.image_urls == ["http://x/1.jpg"]
    with pytest.raises(ServiceError):
        parse_callback_body(["not", "an", "object"])


def test_retry_after_in_seconds_and_http_date() -> None:
    assert parse_retry_after("3") == 3.0
    now = time.time()
    assert parse_retry_after(formatdate(now + 10, usegmt=True), now=now) == pytest.approx(10, abs=1)
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_polling_aims_at_when_the_progress_says_the_set_is_done() -> None:
    """A set that is ready but unnoticed holds a paid slot: the next poll comes when the
    completion's pace says it is done, if that is sooner than the backoff's."""
    from modelset.hidream.client import _Progress

    progress = _Progress()
    progress.seen(0.0, 0.0)
    assert progress.due_in(floor=1.0) is None  # no pace yet
    progress.seen(2.0, 0.2)
    progress.seen(4.0, 0.4)  # 10 % a second: done in 6 s
    due = progress.due_in(floor=1.0)
    assert due is not None and 6.0 <= due <= 6.5
    progress.seen(9.9, 0.99)
    assert progress.due_in(floor=1.0) == 1.0  # never sooner than the first interval
    progress.seen(10.5, 1.0)
    assert progress.due_in(floor=1.0) is None  # done: nothing to aim at
