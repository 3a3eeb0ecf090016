"""The sandbox over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from modelset.sandbox import Faults, SandboxServer, parse_faults
from tests.conftest import WAIT_S

TOKEN = "test-token-0123456789"
SUBMIT = "/api-pub/ec/v3/image/variation/async"
RESULTS = f"{SUBMIT}/results"
TEMPLATES = "/api-pub/ec/v3/template/variation"

MakePhoto = Callable[..., bytes]


@pytest.fixture(scope="module")
def make_photo(tmp_path_factory: pytest.TempPathFactory) -> MakePhoto:
    """Write a photo-like test image with Pillow and return the file's bytes."""
    folder = tmp_path_factory.mktemp("photos")
    counter = iter(range(1_000_000))

    def make(size: tuple[int, int] = (600, 800), fmt: str = "JPEG", shade: int = 0) -> bytes:
        width, height = size
        img = Image.new("RGB", size, (230, 220 - shade, 200))
        pixels = img.load()
        assert pixels is not None
        for y in range(0, height, 4):
            for x in range(width // 3, 2 * width // 3, 4):
                pixels[x, y] = (40 + shade, 60, 140)
        path = folder / f"photo-{next(counter)}.{fmt.lower()}"
        img.save(path, format=fmt)
        return path.read_bytes()

    return make


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(port=0, latency_ms=0, generation_s=0.3, token=TOKEN, seed=7) as server:
        yield server


def api_client(server: SandboxServer, timeout: float = 5.0) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=timeout,
        trust_env=False,
    )


@pytest.fixture
def client(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    with api_client(sandbox) as http:
        yield http


def submit(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post(SUBMIT, json=body)
    assert response.status_code == 200
    answer: dict[str, Any] = response.json()
    return answer


def wait_final(http: httpx.Client, task_id: str, timeout: float = WAIT_S) -> list[dict[str, Any]]:
    """Poll the results until every sub-task is final."""
    deadline = time.monotonic() + timeout
    while True:
        answer = http.get(RESULTS, params={"task_id": task_id}).json()
        assert answer["code"] == 0, answer
        results: list[dict[str, Any]] = answer["result"]["sub_task_results"]
        if all(r["task_status"] in (1, 3, 4) for r in results):
            return results
        assert time.monotonic() < deadline, results
        time.sleep(0.05)


def download_jpeg(url: str) -> tuple[bytes, Image.Image]:
    response = httpx.get(url, trust_env=False)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(response.content))
    img.load()
    assert img.format == "JPEG"
    assert img.width * 4 == img.height * 3
    return response.content, img


@pytest.mark.parametrize("field", ["image", "person"])
def test_official_example_bodies_succeed(
    client: httpx.Client, make_photo: MakePhoto, field: str
) -> None:
    answer = submit(client, **{field: b64(make_photo()), "template_id": 20})
    assert answer["code"] == 0
    assert answer["message"] == "Success"
    assert answer["request_id"]
    assert answer["result"]["task_id"]
    assert len(answer["result"]["sub_task_ids"]) == 4


def test_task_progresses_then_all_images_download(
    sandbox: SandboxServer, client: httpx.Client, make_photo: MakePhoto
) -> None:
    photo = make_photo(shade=10)
    answer = submit(client, image=b64(photo), template_id=20, request_id="req-progress")
    assert answer["request_id"] == "req-progress"
    task_id = answer["result"]["task_id"]

    early = client.get(RESULTS, params={"task_id": task_id}).json()["result"]
    assert early["task_id"] == task_id
    assert early["request_id"] == "req-progress"
    for result in early["sub_task_results"]:
        assert result["task_status"] in (0, 2)
        assert result["task_completion"] < 1.0
        assert result["image"] == ""

    results = wait_final(client, task_id)
    assert [r["sub_task_id"] for r in results] == answer["result"]["sub_task_ids"]
    poses: list[bytes] = []
    for n, result in enumerate(results, start=1):
        assert result["task_status"] == 1
        assert result["task_completion"] == 1.0
        assert result["image"] == f"{sandbox.base_url}/_sandbox/images/{task_id}/{n}.jpg"
        data, img = download_jpeg(result["image"])
        assert img.size == (768, 1024)
        assert download_jpeg(result["image"])[0] == data
        poses.append(data)
    assert len(set(poses)) == len(poses)

    again = submit(client, image=b64(photo), template_id=20)["result"]["task_id"]
    again_images = [download_jpeg(r["image"])[0] for r in wait_final(client, again)]
    assert again_images == poses


def test_lookup_by_request_id_is_an_option(make_photo: MakePhoto) -> None:
    with (
        SandboxServer(
            port=0, latency_ms=0, generation_s=0.2, token=TOKEN, lookup_by_request_id=True
        ) as server,
        api_client(server) as client,
    ):
        answer = submit(client, image=b64(make_photo()), template_id=3, request_id="req-lookup")
        task_id = answer["result"]["task_id"]
        found = client.get(RESULTS, params={"request_id": "req-lookup"}).json()
        assert found["code"] == 0
        assert found["result"]["task_id"] == task_id
        mismatch = client.get(RESULTS, params={"task_id": task_id, "request_id": "other"}).json()
        assert mismatch["code"] == 1003


def test_unknown_task_and_missing_query(client: httpx.Client) -> None:
    unknown = client.get(RESULTS, params={"task_id": "no-such-task"})
    assert unknown.status_code == 200
    assert unknown.json()["code"] == 1003
    assert unknown.json()["message"] == "task not found"
    missing = client.get(RESULTS).json()
    assert missing["code"] == 1001
    assert "task_id or request_id" in missing["message"]


def test_image_of_unknown_task_is_404(sandbox: SandboxServer) -> None:
    response = httpx.get(f"{sandbox.base_url}/_sandbox/images/nope/1.jpg", trust_env=False)
    assert response.status_code == 404


@pytest.mark.parametrize("header", [{"Authorization": "Bearer wrong-secret-xyz"}, {}])
def test_bad_token_is_1002_without_echo(
    sandbox: SandboxServer, make_photo: MakePhoto, header: dict[str, str]
) -> None:
    with httpx.Client(base_url=sandbox.base_url, headers=header, trust_env=False) as http:
        for response in (
            http.post(SUBMIT, json={"image": b64(make_photo()), "template_id": 20}),
            http.get(RESULTS, params={"task_id": "x"}),
            http.get(TEMPLATES),
        ):
            assert response.status_code == 200
            assert response.json()["code"] == 1002
            assert response.json()["message"] == "token invalid or expired"
            assert "wrong-secret-xyz" not in response.text
            assert TOKEN not in response.text


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (lambda p: {"image": "data:image/jpeg;base64," + b64(p()), "template_id": 20}, "prefix"),
        (lambda p: {"image": b64(p(size=(800, 800))), "template_id": 20}, "800x800"),
        (lambda p: {"image": b64(p(size=(1560, 2080))), "template_id": 20}, "at most 2048"),
        (lambda p: {"image": b64(b"not an image at all"), "template_id": 20}, "does not decode"),
        (lambda p: {"image": b64(p()[:3000]), "template_id": 20}, "does not decode"),
        (lambda p: {"image": b64(p(fmt="GIF")), "template_id": 20}, "format GIF"),
        (lambda p: {"image": "%%%", "template_id": 20}, "valid base64"),
        (lambda p: {"image": b64(p()), "template_id": 99}, "unknown template_id 99"),
        (lambda p: {"image": b64(p()), "template_id": "20"}, "template_id must be an integer"),
        (lambda p: {"template_id": 20}, "image is required"),
        (lambda p: {"image": b64(p())}, "template_id is required"),
        (lambda p: {"image": b64(p()), "template_id": 20, "notify_url": "ftp://x"}, "notify_url"),
    ],
)
def test_invalid_parameters_are_1001(
    sandbox: SandboxServer,
    client: httpx.Client,
    make_photo: MakePhoto,
    body: Callable[[MakePhoto], dict[str, Any]],
    expected: str,
) -> None:
    before = len(sandbox.submissions())
    answer = submit(client, **body(make_photo))
    assert answer["code"] == 1001
    assert answer["message"].startswith("invalid parameter: ")
    assert expected in answer["message"]
    assert len(sandbox.submissions()) == before


def test_body_that_is_not_json_is_1001(client: httpx.Client) -> None:
    answer = client.post(SUBMIT, content=b"{not json").json()
    assert answer["code"] == 1001
    assert "JSON" in answer["message"]


def test_image_by_url_is_fetched(sandbox: SandboxServer, client: httpx.Client) -> None:
    url = f"{sandbox.base_url}/_sandbox/templates/20.jpg"
    answer = submit(client, image=url, template_id=20, request_id="req-url")
    assert answer["code"] == 0
    fetched = httpx.get(url, trust_env=False).content
    recorded = [s for s in sandbox.submissions() if s["request_id"] == "req-url"]
    assert recorded[0]["sha256"] == hashlib.sha256(fetched).hexdigest()

    missing = submit(client, image=f"{sandbox.base_url}/_sandbox/templates/999.jpg", template_id=20)
    assert missing["code"] == 1001
    assert "HTTP 404" in missing["message"]


def test_templates_paging_and_previews(sandbox: SandboxServer, client: httpx.Client) -> None:
    everything = client.get(TEMPLATES, params={"page_size": 100}).json()["result"]
    total = everything["total_count"]
    assert total >= 10
    assert everything["total_page"] == 1
    assert 20 in [t["id"] for t in everything["templates"]]
    assert {t["gender"] for t in everything["templates"]} == {"man", "woman"}

    first = client.get(TEMPLATES, params={"page_size": 5, "page_index": 1}).json()["result"]
    assert len(first["templates"]) == 5
    assert first["total_count"] == total
    assert first["total_page"] == -(-total // 5)
    pages = [
        client.get(TEMPLATES, params={"page_size": 5, "page_index": i}).json()["result"]
        for i in range(1, first["total_page"] + 1)
    ]
    assert [t for page in pages for t in page["templates"]] == everything["templates"]

    women = client.get(TEMPLATES, params={"gender": "woman", "page_size": 100}).json()["result"]
    assert women["total_count"] < total
    assert {t["gender"] for t in women["templates"]} == {"woman"}

    assert client.get(TEMPLATES, params={"page_size": 101}).json()["code"] == 1001
    assert client.get(TEMPLATES, params={"gender": "cat"}).json()["code"] == 1001

    show_image = first["templates"][0]["show_image"]
    assert show_image.startswith(f"{sandbox.base_url}/_sandbox/templates/")
    assert download_jpeg(show_image)[0] == download_jpeg(show_image)[0]


def faulty(**rates: float) -> SandboxServer:
    return SandboxServer(
        port=0,
        latency_ms=0,
        generation_s=0.2,
        token=TOKEN,
        retry_after_s=2.5,
        faults=Faults(**rates),
    )


def test_throttle_fault_is_429_with_retry_after(make_photo: MakePhoto) -> None:
    with faulty(throttle=1.0) as server, api_client(server) as http:
        response = http.post(SUBMIT, json={"image": b64(make_photo()), "template_id": 20})
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "3"
        assert response.json()["code"] == 1009
        assert response.json()["message"] == "rate limit exceeded"
        assert server.submissions() == []


def test_server_error_fault_is_500_before_any_task(make_photo: MakePhoto) -> None:
    with faulty(server_error=1.0) as server, api_client(server) as http:
        response = http.post(SUBMIT, json={"image": b64(make_photo()), "template_id": 20})
        assert response.status_code == 500
        assert response.text == "internal server error"
        assert server.submissions() == []
        assert http.get("/_sandbox/submissions").json() == {"submissions": []}


def test_no_credits_fault_is_2007(make_photo: MakePhoto) -> None:
    with faulty(no_credits=1.0) as server, api_client(server) as http:
        answer = submit(http, image=b64(make_photo()), template_id=20)
        assert answer["code"] == 2007
        assert answer["message"] == "insufficient credits"
        assert server.submissions() == []


def test_stall_fault_creates_the_task_but_never_answers(make_photo: MakePhoto) -> None:
    server = faulty(stall=1.0).start()
    try:
        body = {"image": b64(make_photo()), "template_id": 20, "request_id": "req-stall"}
        with api_client(server, timeout=0.5) as http, pytest.raises(httpx.ReadTimeout):
            http.post(SUBMIT, json=body)
        assert [s["request_id"] for s in server.submissions()] == ["req-stall"]
        with api_client(server) as http:
            task_id = server.submissions()[0]["task_id"]
            found = http.get(RESULTS, params={"task_id": task_id}).json()
            assert found["code"] == 0

        # A stalled request still open must not hold up stop().
        outcome: list[object] = []

        def stalled_request() -> None:
            with api_client(server, timeout=10) as http:
                try:
                    outcome.append(http.post(SUBMIT, json=body).status_code)
                except httpx.HTTPError as exc:
                    outcome.append(exc)

        thread = threading.Thread(target=stalled_request)
        thread.start()
        deadline = time.monotonic() + WAIT_S
        while len(server.submissions()) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        server.stop()
    thread.join(WAIT_S)
    # stop() answered it (rather than waiting for it, or cutting it off after uvicorn's
    # graceful second): that is what keeps stop() quick.
    assert outcome == [503], "stop() did not let the stalled request go"


@pytest.mark.parametrize(
    ("fault", "status", "description"),
    [("fail", 3, "generation failed"), ("reject", 4, "rejected by content review")],
)
def test_sub_task_faults_give_final_failure_statuses(
    make_photo: MakePhoto, fault: str, status: int, description: str
) -> None:
    with faulty(**{fault: 1.0}) as server, api_client(server) as http:
        task_id = submit(http, image=b64(make_photo()), template_id=20)["result"]["task_id"]
        results = wait_final(http, task_id)
        assert [r["task_status"] for r in results] == [status] * 4
        assert {r["description"] for r in results} == {description}
        assert {r["image"] for r in results} == {""}
        missing = httpx.get(f"{server.base_url}/_sandbox/images/{task_id}/1.jpg", trust_env=False)
        assert missing.status_code == 404


class CallbackReceiver:
    """A tiny HTTP server recording POSTed JSON; paths containing /fail/ answer 500."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                received.append((self.path, json.loads(self.rfile.read(length))))
                self.send_response(500 if "/fail/" in self.path else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    server = CallbackReceiver()
    yield server
    server.close()


def wait_callback(http: httpx.Client, task_id: str, attempts: int) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while True:
        for record in http.get("/_sandbox/callbacks").json()["callbacks"]:
            if record["task_id"] == task_id and (
                record["delivered"] or record["attempts"] >= attempts
            ):
                found: dict[str, Any] = record
                return found
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_callback_is_delivered(
    client: httpx.Client, make_photo: MakePhoto, receiver: CallbackReceiver
) -> None:
    notify_url = f"{receiver.base_url}/hooks/ok/secret-abc123"
    answer = submit(client, image=b64(make_photo()), template_id=20, notify_url=notify_url)
    task_id = answer["result"]["task_id"]
    record = wait_callback(client, task_id, attempts=1)
    assert record == {
        "task_id": task_id,
        "url": f"{receiver.base_url}/hooks/ok/***",
        "attempts": 1,
        "delivered": True,
    }
    assert "secret-abc123" not in client.get("/_sandbox/callbacks").text
    [(path, body)] = receiver.received
    assert path == "/hooks/ok/secret-abc123"
    assert body["main_task_id"] == task_id
    assert body["sub_task_results"] == wait_final(client, task_id)


def test_callback_is_retried_three_times(
    client: httpx.Client, make_photo: MakePhoto, receiver: CallbackReceiver
) -> None:
    notify_url = f"{receiver.base_url}/hooks/fail/secret-def456"
    answer = submit(client, image=b64(make_photo()), template_id=20, notify_url=notify_url)
    record = wait_callback(client, answer["result"]["task_id"], attempts=3)
    assert record["attempts"] == 3
    assert record["delivered"] is False
    assert len(receiver.received) == 3


def test_submissions_log_only_accepted_with_sha256(make_photo: MakePhoto, tmp_path: Path) -> None:
    photos = [make_photo(shade=1), make_photo(shade=2)]
    with (
        SandboxServer(port=0, latency_ms=0, token=TOKEN, state_dir=tmp_path) as server,
        api_client(server) as http,
    ):
        first = submit(http, image=b64(photos[0]), template_id=20, request_id="a")
        assert submit(http, image=b64(photos[0]), template_id=99)["code"] == 1001
        second = submit(http, person=b64(photos[1]), template_id=4)
        listed = http.get("/_sandbox/submissions").json()["submissions"]
        assert listed == server.submissions()
    assert [s["task_id"] for s in listed] == [
        first["result"]["task_id"],
        second["result"]["task_id"],
    ]
    assert [s["sha256"] for s in listed] == [hashlib.sha256(p).hexdigest() for p in photos]
    assert [s["template_id"] for s in listed] == [20, 4]
    assert listed[0]["request_id"] == "a"
    assert listed[1]["request_id"] == second["request_id"]
    assert all(s["time"].endswith("+00:00") for s in listed)
    stored = {p.name for p in (tmp_path / "photos").iterdir()}
    assert stored == {s["sha256"] for s in listed}


def test_request_log_lines_hide_secrets(
    client: httpx.Client, make_photo: MakePhoto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="modelset.sandbox")
    submit(
        client, image=b64(make_photo()), template_id=20, notify_url="http://127.0.0.1:9/x/s3cr3t"
    )
    client.get(RESULTS, params={"task_id": "missing"})
    deadline = time.monotonic() + WAIT_S
    while "code=1003" not in caplog.text:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert f"POST {SUBMIT} -> 200 code=0" in caplog.text
    assert f"GET {RESULTS} -> 200 code=1003" in caplog.text
    assert TOKEN not in caplog.text
    assert "s3cr3t" not in caplog.text


def test_parse_faults() -> None:
    assert parse_faults("") == Faults()
    faults = parse_faults("throttle=0.1, server_error=0.05,no_credits=0,stall=0,fail=0,reject=1")
    assert faults == Faults(throttle=0.1, server_error=0.05, reject=1.0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("explode=0.1", "unknown fault 'explode'"),
        ("throttle=1.5", "outside 0..1"),
        ("throttle=-0.1", "outside 0..1"),
        ("throttle=often", "not a number"),
        ("throttle", "name=rate"),
        ("throttle=0.1,throttle=0.2", "twice"),
    ],
)
def test_parse_faults_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_faults(spec)


def test_serve_prints_address_and_stops_on_sigterm() -> None:
    code = (
        "from modelset.sandbox import SandboxConfig, serve; "
        "serve(SandboxConfig(port=0, latency_ms=0))"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("HiDream sandbox listening on http://127.0.0.1:")
        base_url = line.split()[-1]
        assert httpx.get(f"{base_url}/_sandbox/health", trust_env=False).json() == {"ok": True}
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=5)
    finally:
        process.kill()
    assert process.returncode in (0, -signal.SIGTERM)


# -- faults for the reliability matrix, --state and the request_id lookup switch ------


def test_parse_faults_knows_the_reliability_keys() -> None:
    faults = parse_faults(
        "malformed=0.3,unknown_status=1,expire=0.5,callback_dup=1,callback_early=0.25"
    )
    assert faults == Faults(
        malformed=0.3, unknown_status=1.0, expire=0.5, callback_dup=1.0, callback_early=0.25
    )


def test_malformed_submit_answer_is_truncated_but_the_task_exists(make_photo: MakePhoto) -> None:
    with faulty(malformed=1.0) as server, api_client(server) as http:
        body = {"image": b64(make_photo()), "template_id": 20, "request_id": "req-malformed"}
        response = http.post(SUBMIT, json=body)
        assert response.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(response.content)
        assert response.text.startswith('{"code": 0')
        assert [s["request_id"] for s in server.submissions()] == ["req-malformed"]


def test_malformed_results_answers_are_not_json(make_photo: MakePhoto) -> None:
    with faulty(malformed=1.0) as server, api_client(server) as http:
        http.post(SUBMIT, json={"image": b64(make_photo()), "template_id": 20})
        task_id = server.submissions()[0]["task_id"]
        bodies = [http.get(RESULTS, params={"task_id": task_id}) for _ in range(12)]
        assert {response.status_code for response in bodies} == {200}
        for response in bodies:
            with pytest.raises(json.JSONDecodeError):
                json.loads(response.content)
        assert {r.headers["content-type"].split(";")[0] for r in bodies} == {
            "text/html",
            "application/json",
        }


def test_unknown_status_is_reported_while_processing_then_final(make_photo: MakePhoto) -> None:
    with (
        SandboxServer(
            port=0, latency_ms=0, generation_s=0.6, token=TOKEN, faults=Faults(unknown_status=1)
        ) as server,
        api_client(server) as http,
    ):
        task_id = submit(http, image=b64(make_photo()), template_id=20)["result"]["task_id"]
        seen: set[int] = set()
        deadline = time.monotonic() + WAIT_S
        while True:
            results = http.get(RESULTS, params={"task_id": task_id}).json()["result"]
            statuses = {r["task_status"] for r in results["sub_task_results"]}
            seen |= statuses
            if statuses == {1}:
                break
            assert time.monotonic() < deadline
            time.sleep(0.03)
        assert 7 in seen
        assert 2 not in seen
        assert seen <= {0, 7, 1}


def test_expired_image_url_404s_once_then_a_fresh_query_gives_a_working_url(
    make_photo: MakePhoto,
) -> None:
    with faulty(expire=1.0) as server, api_client(server) as http:
        task_id = submit(http, image=b64(make_photo()), template_id=20)["result"]["task_id"]
        first = wait_final(http, task_id)
        url = first[0]["image"]
        assert url.startswith(f"{server.base_url}/_sandbox/images/{task_id}/1.jpg?e=")
        assert httpx.get(url, trust_env=False).status_code == 404
        assert httpx.get(url, trust_env=False).status_code == 404, "an expired URL stays expired"
        fresh = wait_final(http, task_id)[0]["image"]
        assert fresh != url
        download_jpeg(fresh)
        download_jpeg(fresh)
        # Every pose expires on its own first download.
        assert httpx.get(wait_final(http, task_id)[1]["image"], trust_env=False).status_code == 404


def test_callback_dup_delivers_twice(make_photo: MakePhoto, receiver: CallbackReceiver) -> None:
    with faulty(callback_dup=1.0) as server, api_client(server) as http:
        notify_url = f"{receiver.base_url}/hooks/ok/secret-dup"
        answer = submit(http, image=b64(make_photo()), template_id=20, notify_url=notify_url)
        task_id = answer["result"]["task_id"]
        # The sandbox marks a delivery once the receiver's answer is back, after the
        # receiver has the body: wait on the sandbox's records, not the receiver's list.
        deadline = time.monotonic() + WAIT_S
        while True:
            records = http.get("/_sandbox/callbacks").json()["callbacks"]
            if sum(record["delivered"] for record in records) >= 2:
                break
            assert time.monotonic() < deadline, records
            time.sleep(0.02)
        assert [(r["task_id"], r["delivered"]) for r in records] == [(task_id, True)] * 2
        assert [body for _, body in receiver.received] == [receiver.received[0][1]] * 2
        assert receiver.received[0][1]["sub_task_results"] == wait_final(http, task_id)


def test_callback_early_arrives_before_the_task_is_final_with_the_final_body(
    make_photo: MakePhoto, receiver: CallbackReceiver
) -> None:
    with (
        SandboxServer(
            port=0, latency_ms=0, generation_s=1.0, token=TOKEN, faults=Faults(callback_early=1)
        ) as server,
        api_client(server) as http,
    ):
        notify_url = f"{receiver.base_url}/hooks/ok/secret-early"
        answer = submit(http, image=b64(make_photo()), template_id=20, notify_url=notify_url)
        task_id = answer["result"]["task_id"]
        deadline = time.monotonic() + WAIT_S
        while not receiver.received:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        now = http.get(RESULTS, params={"task_id": task_id}).json()["result"]
        assert {r["task_status"] for r in now["sub_task_results"]} <= {0, 2}
        [(_, body)] = receiver.received
        assert {r["task_status"] for r in body["sub_task_results"]} == {1}
        early_url = body["sub_task_results"][0]["image"]
        assert httpx.get(early_url, trust_env=False).status_code == 404
        assert wait_final(http, task_id) == body["sub_task_results"]


def test_by_default_a_request_id_alone_finds_no_task_as_the_docs_promise(
    client: httpx.Client, make_photo: MakePhoto
) -> None:
    answer = submit(client, image=b64(make_photo()), template_id=20, request_id="req-nolookup")
    task_id = answer["result"]["task_id"]
    missed = client.get(RESULTS, params={"request_id": "req-nolookup"}).json()
    assert (missed["code"], missed["message"]) == (1003, "task not found")
    by_id = client.get(RESULTS, params={"task_id": task_id}).json()
    assert by_id["code"] == 0
    assert by_id["result"]["task_id"] == task_id


def test_a_lost_answer_leaves_a_task_behind_a_502(make_photo: MakePhoto) -> None:
    with (
        SandboxServer(
            port=0, latency_ms=0, generation_s=0.2, token=TOKEN, faults={"lost_answer": 1.0}
        ) as server,
        api_client(server) as client,
    ):
        answer = client.post(
            SUBMIT, json={"image": b64(make_photo()), "template_id": 20, "request_id": "lost"}
        )
        assert answer.status_code == 502
        assert [s["request_id"] for s in server.submissions()] == ["lost"]


def test_state_file_keeps_tasks_submissions_photos_and_callbacks_across_a_restart(
    make_photo: MakePhoto, tmp_path: Path, receiver: CallbackReceiver
) -> None:
    state = tmp_path / "sandbox-state.json"
    first = SandboxServer(port=0, latency_ms=0, generation_s=2.5, token=TOKEN, state_file=state)
    first.start()
    try:
        port = int(first.base_url.rsplit(":", 1)[1])
        with api_client(first) as http:
            done = submit(http, image=b64(make_photo(shade=3)), template_id=20, request_id="r1")
            pending = submit(
                http,
                image=b64(make_photo(shade=4)),
                template_id=21,
                request_id="r2",
                notify_url=f"{receiver.base_url}/hooks/ok/secret-restart",
            )
        before = first.submissions()
    finally:
        first.stop()
    assert not receiver.received, "the callback was not yet due when the sandbox stopped"
    saved = state.read_text()
    assert TOKEN not in saved
    assert (tmp_path / "sandbox-state.json.d" / "photos").is_dir()

    with (
        SandboxServer(
            port=port, latency_ms=0, token=TOKEN, state_file=state, lookup_by_request_id=True
        ) as second,
        api_client(second) as http,
    ):
        assert second.base_url == first.base_url
        assert second.submissions() == before
        assert http.get("/_sandbox/submissions").json()["submissions"] == before
        for results in (
            wait_final(http, done["result"]["task_id"]),
            wait_final(http, pending["result"]["task_id"]),
        ):
            for result in results:
                download_jpeg(result["image"])
        found = http.get(RESULTS, params={"request_id": "r2"}).json()["result"]
        assert found["task_id"] == pending["result"]["task_id"]
        deadline = time.monotonic() + WAIT_S
        while not receiver.received:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert receiver.received[0][1]["main_task_id"] == pending["result"]["task_id"]
        new = submit(http, image=b64(make_photo(shade=5)), template_id=20)
        assert [s["task_id"] for s in second.submissions()][-1] == new["result"]["task_id"]
    reloaded = json.loads(state.read_text())
    assert len(reloaded["submissions"]) == 3
    assert reloaded["callbacks"][0]["delivered"] is True


def test_callback_and_fetch_urls_are_masked_in_httpx_log_lines(
    sandbox: SandboxServer,
    client: httpx.Client,
    make_photo: MakePhoto,
    receiver: CallbackReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    notify_url = f"{receiver.base_url}/hooks/ok/secret-in-httpx-log"
    answer = submit(client, image=b64(make_photo()), template_id=20, notify_url=notify_url)
    preview = f"{sandbox.base_url}/_sandbox/templates/20.jpg?signature=presigned-credential"
    assert submit(client, image=preview, template_id=20)["code"] == 0
    wait_callback(client, answer["result"]["task_id"], attempts=1)
    deadline = time.monotonic() + WAIT_S
    while f"{receiver.base_url}/hooks/ok/***" not in caplog.text:
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.02)
    assert "secret-in-httpx-log" not in caplog.text
    assert "presigned-credential" not in caplog.text
