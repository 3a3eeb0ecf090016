"""The fault matrix: a batch of 50 photos through the whole pipeline against a faulty sandbox.

Each test runs ``generate_model_sets`` on 50 small photos (96x128) with one fault turned
up, and checks the same things:

- every photo ends ``succeeded``, or with a status and a reason a person can act on; where
  a fault can exhaust the client's retries, a rerun of the same batch finishes the rest;
- the sandbox's log of accepted submissions holds no photo+template twice (exactly once,
  across the rerun too);
- every succeeded set is in the output location (each image decodes) and the report
  lists every photo;
- neither the API token nor the callback secret shows in any output: captured logs,
  stdout/stderr, the run's logs on the Prefect server and every file of the report.

A test runs twice, with the output location a local folder and an ``s3://`` prefix on
the session's S3 server (``out_location``), where the fault leaves ledger state that is
resolved later (HTTP 500s, stalled submits, a restarted service, outages, URL refreshes);
the others, whose faults the client absorbs before the store is involved, run on a folder
(``folder_out``). The bucket's own faults are ``test_infrastructure_faults.py``. The
checks read through the storage seam (``open_store``), so they are the same for both.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from prefect.client.schemas.objects import State

from modelset.batch import InProcess
from modelset.batch.settle import settle_unknown
from modelset.flows.generate import generate_model_sets
from modelset.ledger.proof import read_proof
from modelset.options import RunOptions
from modelset.sandbox import SandboxServer
from modelset.sandbox.callbacks import mask_url, masked_urls
from modelset.storage import Store, open_store
from tests.conftest import TOKEN, SandboxFactory, make_photo

pytestmark = pytest.mark.usefixtures("prefect_server")

PHOTOS = 50
TEMPLATE = 20
CALLBACK_SECRET = "cb-secret-7Qx2vR9"  # a test value that must never be printed
MATRIX_SANDBOX: dict[str, Any] = {"generation_s": 0.3, "images_per_set": 2, "seed": 11}
# Where a test's faults lose answers, the sandbox finds tasks by request_id: the pipeline
# proves it from the first accepted request and resolves every lost answer by lookup.
# test_lost_answers_against_the_documented_contract_are_never_paid_twice runs without it.
FINDS_BY_REQUEST_ID: dict[str, Any] = {**MATRIX_SANDBOX, "lookup_by_request_id": True}


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 distinct small photos (96x128, so 3:4 already), shared by the module's tests."""
    folder = tmp_path_factory.mktemp("batch")
    for index in range(PHOTOS):
        colour = (index * 5 % 256, index * 37 % 256, index * 91 % 256)
        make_photo(folder / f"p{index:02d}.jpg", size=(96, 128), colour=colour)
    return folder


@dataclass
class Harness:
    """Runs the batch flow in this process with the matrix's settings, and checks it."""

    monkeypatch: pytest.MonkeyPatch
    caplog: pytest.LogCaptureFixture
    capsys: pytest.CaptureFixture[str]
    secrets: tuple[str, ...] = (TOKEN, CALLBACK_SECRET)

    def __post_init__(self) -> None:
        self.flow_run_ids: list[str] = []
        self.elapsed: list[float] = []

    def point_at(self, sandbox: SandboxServer, **extra: str) -> None:
        values = {
            "HIDREAM_BASE_URL": sandbox.base_url,
            "HIDREAM_API_TOKEN": TOKEN,
            "HIDREAM_CALLBACK_SECRET": CALLBACK_SECRET,
            "HIDREAM_ALLOW_PRIVATE_URLS": "true",
            "HIDREAM_POLL_INTERVAL": "0.1",
            "HIDREAM_POLL_MAX_INTERVAL": "0.3",
            "HIDREAM_MAX_RETRY_AFTER": "0.2",
            "HIDREAM_READ_TIMEOUT": "5",
            "HIDREAM_SUBMIT_TIMEOUT": "5",
            "HIDREAM_CONNECT_TIMEOUT": "2",
            **extra,
        }
        for key, value in values.items():
            self.monkeypatch.setenv(key, value)

    def run(self, sources: list[str], out: str, **options: Any) -> State[Any]:
        async def go() -> State[Any]:
            return await generate_model_sets(
                sources,
                [TEMPLATE],
                RunOptions(out=str(out), concurrency=16, **options),
                return_state=True,
            )

        started = time.monotonic()
        state = asyncio.run(go())
        self.elapsed.append(time.monotonic() - started)
        self.flow_run_ids.append(str(state.state_details.flow_run_id))
        return state

    def log_figures(self) -> None:
        """One line with what the test saw, for docs/reliability.md (``-o log_cli=true``)."""
        answers: Counter[str] = Counter()
        for record in self.caplog.records:
            message = record.getMessage()
            if record.name != "modelset.sandbox" or not message.startswith(("GET ", "POST ")):
                continue
            method, path, _, outcome = message.split(" ", 3)
            what = "image" if "/_sandbox/images/" in path else path.rsplit("/", 1)[-1]
            answers[f"{method} {what} {outcome.rsplit(' ', 2)[0]}"] += 1
        logging.getLogger("tests.reliability").info(
            "figures: runs %s s; sandbox answers %s",
            [round(seconds, 1) for seconds in self.elapsed],
            dict(sorted(answers.items())),
        )

    def assert_no_secrets(self, out: str) -> None:
        """Neither secret in captured logs, stdout/stderr, Prefect's run logs or any file of
        the output location (every object of the bucket)."""
        captured = self.capsys.readouterr()
        texts = {
            "captured log": self.caplog.text,
            "stdout": captured.out,
            "stderr": captured.err,
            "prefect run logs": prefect_run_logs(self.flow_run_ids),
        }
        assert "report written" in texts["prefect run logs"], "the run's logs were not read"
        texts.update(report_texts(out))
        for where, text in texts.items():
            for secret in self.secrets:
                assert secret not in text, f"a secret leaked into {where}"
        self.log_figures()


def prefect_run_logs(flow_run_ids: list[str]) -> str:
    """Every log line the Prefect server holds for these flow runs (and their tasks)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)

    async def read() -> str:
        messages: list[str] = []
        log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=list(flow_run_ids)))
        async with get_client() as client:
            while True:
                page = await client.read_logs(
                    log_filter=log_filter, limit=200, offset=len(messages)
                )
                messages.extend(log.message for log in page)
                if len(page) < 200:
                    return "\n".join(messages)

    return asyncio.run(read())


@pytest.fixture
def folder_out(tmp_path: Path) -> str:
    return str(tmp_path / "out")


TEXT_SUFFIXES = (".json", ".jsonl", ".csv", ".html", "")


def report_texts(out: str) -> dict[str, str]:
    """Every text file of the location (.json, .jsonl, .csv, .html, no suffix), by name:
    each file below the folder, or each object of the bucket."""
    store = open_store(out)
    texts = {}
    if store.is_local:
        for path in Path(out).rglob("*"):
            if path.is_file() and path.suffix in TEXT_SUFFIXES:
                texts[str(path)] = path.read_text(encoding="utf-8", errors="replace")
        return texts
    keys = store.list("")
    assert keys, f"nothing in {out}"
    for key in keys:
        if Path(key).suffix in TEXT_SUFFIXES:
            texts[f"{out}/{key}"] = store.read(key).data.decode("utf-8", errors="replace")
    return texts


def read_text(store: Store, key: str) -> str:
    return store.read(key).data.decode("utf-8")


def manifest(out: str) -> list[dict[str, Any]]:
    text = read_text(open_store(out), "manifest.jsonl")
    return [json.loads(line) for line in text.splitlines()]


def assert_decodes(store: Store, key: str) -> None:
    with Image.open(io.BytesIO(store.read(key).data)) as image:
        image.verify()


def accepted_twice(sandbox: SandboxServer) -> list[tuple[str, int]]:
    """Photo+template pairs the sandbox accepted more than once."""
    counts = Counter((s["sha256"], s["template_id"]) for s in sandbox.submissions())
    return [pair for pair, count in counts.items() if count > 1]


RERUN_REASON_WORDS = ("rerun", "retry", "resubmit")


def check_batch(
    out: str,
    sandbox: SandboxServer,
    *,
    images: int = 2,
    allow_retryable: bool = False,
    photos: int = PHOTOS,
) -> list[dict[str, Any]]:
    """The checks every matrix test makes on a batch of ``photos`` named ``p00``...;
    returns the rows that did not succeed."""
    store = open_store(out)
    rows = manifest(out)
    assert len(rows) == photos, f"the report lists {len(rows)} of {photos} photos"
    assert {row["item"] for row in rows} == {f"p{i:02d}" for i in range(photos)}
    assert read_text(store, "manifest.csv").count("\n") == photos + 1
    assert "<html" in read_text(store, "index.html")
    assert accepted_twice(sandbox) == [], "a photo+template was accepted twice"
    open_rows = []
    for row in rows:
        if row["status"] == "succeeded":
            assert len(row["outputs"]) == images, row
            for output in row["outputs"]:
                assert_decodes(store, output)
            continue
        assert row["reason"], f"{row['item']} ended {row['status']} without a reason"
        assert allow_retryable, f"{row['item']} ended {row['status']}: {row['reason']}"
        assert row["status"] in ("failed", "outcome_unknown"), row
        assert any(word in row["reason"] for word in RERUN_REASON_WORDS), row["reason"]
        open_rows.append(row)
    succeeded = {row["upload_sha256"] for row in rows if row["status"] == "succeeded"}
    assert succeeded <= {s["sha256"] for s in sandbox.submissions()}
    return open_rows


def run_until_done(harness: Harness, batch: Path, out: str, sandbox: SandboxServer) -> int:
    """Run the batch; where faults exhausted some retries, rerun once. Returns the runs."""
    harness.run([str(batch)], out)
    if not check_batch(out, sandbox, allow_retryable=True):
        return 1
    harness.run([str(batch)], out)
    check_batch(out, sandbox)
    return 2


def sandbox_lines(caplog: pytest.LogCaptureFixture, needle: str) -> int:
    return sum(
        1
        for record in caplog.records
        if record.name == "modelset.sandbox" and needle in record.getMessage()
    )


# -- the matrix ------------------------------------------------------------------------


def test_throttle_bursts_with_retry_after(
    harness: Harness, sandbox_factory: SandboxFactory, batch: Path, folder_out: str
) -> None:
    sandbox = sandbox_factory(**MATRIX_SANDBOX, faults={"throttle": 0.5}, retry_after_s=1)
    harness.point_at(sandbox)
    out = folder_out
    state = harness.run([str(batch)], out)
    assert state.is_completed(), state.message
    check_batch(out, sandbox)
    assert sandbox_lines(harness.caplog, "-> 429 code=1009") >= 10
    assert len(sandbox.submissions()) == PHOTOS
    harness.assert_no_secrets(out)


def test_http_500s_on_submit(
    harness: Harness, sandbox_factory: SandboxFactory, batch: Path, out_location: str
) -> None:
    sandbox = sandbox_factory(**FINDS_BY_REQUEST_ID, faults={"server_error": 0.3})
    # A lookup that finds nothing is asked again after read_timeout / 2: keep it short.
    harness.point_at(sandbox, HIDREAM_READ_TIMEOUT="2", HIDREAM_SUBMIT_TIMEOUT="2")
    out = out_location
    run_until_done(harness, batch, out, sandbox)
    assert sandbox_lines(harness.caplog, "-> 500") >= 10
    assert len(sandbox.submissions()) == PHOTOS
    harness.assert_no_secrets(out)


def test_accept_then_stall_submits_are_found_by_a_proven_request_id_lookup(
    harness: Harness, sandbox_factory: SandboxFactory, batch: Path, out_location: str
) -> None:
    sandbox = sandbox_factory(**FINDS_BY_REQUEST_ID, faults={"stall": 0.3})
    harness.point_at(sandbox, HIDREAM_READ_TIMEOUT="1", HIDREAM_SUBMIT_TIMEOUT="1")
    out = out_location
    run_until_done(harness, batch, out, sandbox)
    assert sandbox_lines(harness.caplog, "-> no answer") >= 5
    assert len(sandbox.submissions()) == PHOTOS
    harness.assert_no_secrets(out)


def test_lost_answers_against_the_documented_contract_are_never_paid_twice(
    harness: Harness, sandbox_factory: SandboxFactory, tmp_path: Path, out_location: str
) -> None:
    """An upstream that follows HiDream's docs to the letter (results by task_id only: a
    lookup by request_id answers "task not found") and loses the answer to 30 % of the
    submits after creating their tasks (a 502 from a proxy): every photo is paid once,
    the lost ones are reported paid, not collected, and a rerun pays nothing."""
    folder = tmp_path / "in"
    for index in range(12):
        make_photo(folder / f"p{index:02d}.jpg", size=(96, 128), colour=(index * 20, 90, 160))
    sandbox = sandbox_factory(**MATRIX_SANDBOX, faults={"lost_answer": 0.3})
    harness.point_at(sandbox)

    first = harness.run([str(folder)], out_location)

    lost = sandbox_lines(harness.caplog, "-> 502")
    assert lost >= 2, "seed 11 loses some answers"
    assert accepted_twice(sandbox) == [], "a photo was paid twice"
    assert len(sandbox.submissions()) == 12
    rows = manifest(out_location)
    unknown = [row for row in rows if row["status"] == "outcome_unknown"]
    assert len(unknown) == lost
    assert all(row["reason"].startswith("paid, not collected") for row in unknown), unknown
    assert sum(row["status"] == "succeeded" for row in rows) == 12 - lost
    assert first.is_failed()
    assert f"{lost} sets paid, not collected" in (first.message or "")
    assert f"modelset settle {out_location}" in read_text(open_store(out_location), "index.html")
    proof = read_proof(open_store(out_location), sandbox.base_url)
    assert proof is not None and not proof.finds_by_request_id, proof
    assert proof.answer == "'task not found'"

    harness.run([str(folder)], out_location)

    assert len(sandbox.submissions()) == 12, "a rerun resent a lost answer"
    assert [row["status"] for row in manifest(out_location)].count("outcome_unknown") == lost

    # Someone reads the task id of one lost set off HiDream's console and settles it.
    row = unknown[0]
    [task_id] = [
        s["task_id"] for s in sandbox.submissions() if s["request_id"] == row["request_id"]
    ]
    named = {(row["item"], TEMPLATE): task_id}
    settled = asyncio.run(settle_unknown(out_location, named, InProcess()))
    assert sorted(s.record.item for s in settled) == sorted(r["item"] for r in unknown)
    after = {r["item"]: r for r in manifest(out_location)}
    assert after[row["item"]]["status"] == "succeeded"
    assert after[row["item"]]["task_id"] == task_id
    assert len(after[row["item"]]["outputs"]) == 2
    assert [r["status"] for r in after.values()].count("outcome_unknown") == lost - 1
    assert len(sandbox.submissions()) == 12
    harness.assert_no_secrets(out_location)


def test_malformed_json_answers(
    harness: Harness, sandbox_factory: SandboxFactory, batch: Path, folder_out: str
) -> None:
    sandbox = sandbox_factory(**FINDS_BY_REQUEST_ID, faults={"malformed": 0.25})
    harness.point_at(sandbox)
    out = folder_out
    run_until_done(harness, batch, out, sandbox)
    assert sandbox_lines(harness.caplog, "code=malformed") >= 10
    assert len(sandbox.submissions()) == PHOTOS
    harness.assert_no_secrets(out)


def test_unknown_task_statuses_are_waited_out(
    harness: Harness, sandbox_factory: SandboxFactory, batch: Path, folder_out: str
) -> None:
    sandbox = sandbox_factory(**MATRIX_SANDBOX, faults={"unknown_status": 0.5})
    harness.point_at(sandbox)
    out = folder_out
    state = harness.run([str(batch)], out)
    assert state.is_completed(), state.message
    check_batch(out, sandbox)
    harness.assert_no_secrets(out)


def test_expired_result_urls_are_fetched_again(
    harness: Harness, sandbox_factory: SandboxFactory, batch: Path, folder_out: str
) -> None:
    sandbox = sandbox_factory(**MATRIX_SANDBOX, faults={"expire": 0.5})
    harness.point_at(sandbox)
    out = folder_out
    state = harness.run([str(batch)], out)
    assert state.is_completed(), state.message
    check_batch(out, sandbox)
    assert sandbox_lines(harness.caplog, "/_sandbox/images/") >= 2 * PHOTOS + 10
    harness.assert_no_secrets(out)


class Restarter:
    """Stops a sandbox once it has accepted ``after`` submissions, and after ``down_s``
    starts a new one on the same port with the same state file (``--state``)."""

    def __init__(self, factory: SandboxFactory) -> None:
        self._factory = factory
        self._threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self.restarted: list[SandboxServer] = []

    def start(self, *, after: int, down_s: float, state_file: Path, **config: Any) -> SandboxServer:
        first = self._factory(state_file=state_file, **config)
        port = int(first.base_url.rsplit(":", 1)[1])

        def restart() -> None:
            try:
                deadline = time.monotonic() + 60
                while len(first.submissions()) < after and time.monotonic() < deadline:
                    time.sleep(0.01)
                first.stop()
                time.sleep(down_s)
                self.restarted.append(self._factory(state_file=state_file, port=port, **config))
            except BaseException as exc:  # re-raised by the fixture
                self.errors.append(exc)

        thread = threading.Thread(target=restart, name="sandbox-restarter")
        thread.start()
        self._threads.append(thread)
        return first

    def join(self) -> SandboxServer:
        """Wait for the restart; the new sandbox."""
        for thread in self._threads:
            thread.join(90)
        assert not self.errors, self.errors
        assert self.restarted, "the sandbox was not restarted"
        return self.restarted[-1]


@pytest.fixture
def restarter(sandbox_factory: SandboxFactory) -> Iterator[Restarter]:
    helper = Restarter(sandbox_factory)
    yield helper
    helper.join()


def test_sandbox_stopped_and_restarted_mid_batch(
    harness: Harness,
    restarter: Restarter,
    batch: Path,
    tmp_path: Path,
    out_location: str,
) -> None:
    """Connections refused while it is down, connections reset and stalled submits cut
    when it stops; the restarted sandbox keeps its tasks (--state)."""
    state_file = tmp_path / "sandbox" / "state.json"
    first = restarter.start(
        after=20, down_s=1.5, state_file=state_file, **FINDS_BY_REQUEST_ID, faults={"stall": 0.1}
    )
    harness.point_at(first, HIDREAM_READ_TIMEOUT="3", HIDREAM_SUBMIT_TIMEOUT="3")
    out = out_location
    harness.run([str(batch)], out)
    second = restarter.join()
    assert second.base_url == first.base_url
    assert len(first.submissions()) >= 20
    assert second.submissions()[: len(first.submissions())] == first.submissions()
    open_rows = check_batch(out, second, allow_retryable=True)
    if open_rows:
        harness.run([str(batch)], out)
        check_batch(out, second)
    assert len(second.submissions()) == PHOTOS
    log = harness.caplog.text
    assert "could not connect" in log or "ConnectError" in log or "All connection attempts" in log
    harness.assert_no_secrets(out)


def test_an_outage_longer_than_the_read_retries_is_waited_out_until_the_deadline(
    harness: Harness,
    restarter: Restarter,
    batch: Path,
    tmp_path: Path,
    out_location: str,
) -> None:
    """8 sets are being generated (1 s) when the sandbox goes away for 2.5 s: more than
    the read retries cover (HIDREAM_MAX_ATTEMPTS=2 keeps the outage short), far less
    than the poll deadline. Waiting on is right: nothing is lost by it."""
    folder = tmp_path / "in"
    for index in range(8):
        make_photo(folder / f"o{index}.jpg", size=(96, 128), colour=(index * 30, 60, 200))
    state_file = tmp_path / "sandbox" / "state.json"
    first = restarter.start(
        after=8, down_s=2.5, state_file=state_file, **{**MATRIX_SANDBOX, "generation_s": 1}
    )
    harness.point_at(first, HIDREAM_MAX_ATTEMPTS="2", HIDREAM_POLL_DEADLINE="60")
    out = out_location
    state = harness.run([str(folder)], out)
    second = restarter.join()
    rows = manifest(out)
    assert [row["status"] for row in rows] == ["succeeded"] * 8, [row["reason"] for row in rows]
    assert accepted_twice(second) == []
    assert state.is_completed(), state.message


def test_a_failing_url_refresh_fails_that_set_not_the_batch(
    harness: Harness,
    sandbox_factory: SandboxFactory,
    tmp_path: Path,
    out_location: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every result URL has expired and the re-query for fresh ones fails (a 5xx streak):
    those sets end failed with the reason, the batch still writes its report, and a rerun
    downloads them without paying again. (Found by this test: the failing re-query used
    to escape collect_set and fail the whole batch with no report.)"""
    from modelset.hidream import HiDreamClient, ServiceError, TaskResult

    folder = tmp_path / "in"
    for index in range(6):
        make_photo(folder / f"p{index}.jpg", size=(96, 128), colour=(index * 40, 90, 30))
    sandbox = sandbox_factory(**MATRIX_SANDBOX, faults={"expire": 1.0})
    harness.point_at(sandbox)
    collected: set[str] = set()
    wait_for_result = HiDreamClient.wait_for_result
    get_result = HiDreamClient.get_result

    async def waited(self: HiDreamClient, task_id: str, *args: Any, **kwargs: Any) -> TaskResult:
        result = await wait_for_result(self, task_id, *args, **kwargs)
        collected.add(task_id)
        return result

    async def failing_refresh(
        self: HiDreamClient, task_id: str | None = None, request_id: str | None = None
    ) -> TaskResult:
        if task_id in collected:
            raise ServiceError("the service failed with HTTP 503", status=503)
        return await get_result(self, task_id=task_id, request_id=request_id)

    monkeypatch.setattr(HiDreamClient, "wait_for_result", waited)
    monkeypatch.setattr(HiDreamClient, "get_result", failing_refresh)
    out = out_location
    harness.run([str(folder)], out)
    rows = manifest(out)
    assert len(rows) == 6
    for row in rows:
        assert row["status"] == "failed", row
        assert "404" in row["reason"] and "rerun" in row["reason"], row

    monkeypatch.setattr(HiDreamClient, "get_result", get_result)
    harness.run([str(folder)], out)
    assert [row["status"] for row in manifest(out)] == ["succeeded"] * 6
    assert len(sandbox.submissions()) == 6, "the rerun paid for nothing again"


def test_duplicated_early_and_forged_callbacks_change_nothing(
    harness: Harness, sandbox_factory: SandboxFactory, batch: Path, folder_out: str
) -> None:
    """The real receiver in this process turns callbacks into events that wake the batch;
    the sandbox delivers every callback twice, half of them early (with the final body),
    and a forger posts callbacks with a wrong secret, for unknown tasks, and for real
    tasks with made-up image URLs. The batch polls slowly, so callbacks matter."""
    from modelset.deployments.callbacks import create_receiver_app
    from modelset.settings import CALLBACK_PATH, Settings
    from tests.test_callbacks import Receiver

    sandbox = sandbox_factory(**MATRIX_SANDBOX, faults={"callback_dup": 1.0, "callback_early": 0.5})
    harness.point_at(sandbox)
    receiver = Receiver(create_receiver_app(Settings())).start()
    forger_stop = threading.Event()
    forged: Counter[int] = Counter()

    def forge() -> None:
        trap = "http://127.0.0.1:9/forged.jpg"
        # The forger is this test: its own httpx log lines must not count as a leak.
        with (
            masked_urls(mask_url),
            httpx.Client(base_url=receiver.base_url, timeout=5, trust_env=False) as http,
        ):
            while not forger_stop.wait(0.05):
                real = [s["task_id"] for s in sandbox.submissions()][-3:]
                bodies = [{"main_task_id": "no-such-task", "sub_task_results": []}] + [
                    {
                        "main_task_id": task_id,
                        "sub_task_results": [{"sub_task_id": "x", "task_status": 1, "image": trap}],
                    }
                    for task_id in real
                ]
                for body in bodies:
                    answer = http.post(f"{CALLBACK_PATH}{CALLBACK_SECRET}", json=body)
                    forged[answer.status_code] += 1
                answer = http.post(f"{CALLBACK_PATH}guessed-secret", json=bodies[0])
                forged[answer.status_code] += 1

    forger = threading.Thread(target=forge, name="forger")
    try:
        harness.point_at(
            sandbox,
            HIDREAM_CALLBACK_URL=receiver.base_url,
            HIDREAM_POLL_INTERVAL="1",
            HIDREAM_POLL_MAX_INTERVAL="1",
        )
        forger.start()
        out = folder_out
        state = harness.run([str(batch)], out)
    finally:
        forger_stop.set()
        forger.join(10)
        receiver.stop()
    assert state.is_completed(), state.message
    check_batch(out, sandbox)
    callbacks = sandbox.callbacks()
    assert len(callbacks) == 2 * PHOTOS
    assert all(record["delivered"] for record in callbacks)
    assert forged[404] >= 5 and forged[200] >= 5, forged
    duplicates = sandbox_lines_of(harness.caplog, "modelset.callbacks", "(duplicate)")
    assert duplicates >= PHOTOS / 2
    assert sandbox_lines_of(harness.caplog, "modelset.callbacks", "emitted") >= PHOTOS
    harness.assert_no_secrets(out)


def sandbox_lines_of(caplog: pytest.LogCaptureFixture, logger: str, needle: str) -> int:
    return sum(
        1 for record in caplog.records if record.name == logger and needle in record.getMessage()
    )
