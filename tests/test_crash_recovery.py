"""Crash recovery: ``kill -9`` of ``modelset run`` mid-batch, then the same command again.

The first run is killed once some sets are submitted (their receipts in the ledger) and
some submits are in flight (intent recorded, no receipt: the sandbox's ``stall`` fault
holds their answers), and before any result is in. The sandbox is then restarted with
its tasks kept (``--state``) and without the stall fault, so that the rerun's own
submits are answered, and the same command runs again:

- against a sandbox that finds tasks by request_id (which the pipeline proves from the
  first accepted request), nothing is paid twice and every set is downloaded;
- against the documented contract (results by task_id only; the proof taken shows the
  lookup does not work), the submits in flight at the kill end ``outcome_unknown``
  (never resent blindly) and nothing else is lost; ``--resubmit-unknown`` then finishes
  them, paying twice at most for those.

Both run with ``--out`` a local folder and an ``s3://`` prefix on the session's S3 server
(``out_location``); the checks read the ledger and the report through the storage seam.
On a bucket a claim is a lease (the default 20 minutes): the rerun takes the killed
run's leases over at once, because their holder was a process of this host that no
longer runs (from another host only their expiry would tell).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelset.sandbox import SandboxServer
from modelset.storage import Store, open_store, read_many
from tests.conftest import REPO, TOKEN, SandboxFactory, make_photo
from tests.test_reliability import assert_decodes, manifest, read_text, report_texts

pytestmark = pytest.mark.usefixtures("prefect_server")

PHOTOS = 16
TEMPLATE = 20
SECRET = "crash-callback-secret-0b9e"  # never sent anywhere: only grepped for
LEDGER = ".modelset/ledger"


@dataclass
class Crash:
    """What the ledger held when the first run was killed."""

    intents: dict[str, dict[str, Any]]  # request_id -> record: sent, receipt lost
    submitted: dict[str, dict[str, Any]]  # request_id -> record: receipt kept


def ledger_records(store: Store) -> list[dict[str, Any]]:
    """Every record of the ledger (``.modelset/ledger/<key>.json``; not its indexes)."""
    names = [
        key
        for key in store.list(LEDGER)
        if key.endswith(".json") and "/" not in key.removeprefix(f"{LEDGER}/")
    ]
    records = []
    for blob in read_many(store, names).values():
        if blob is None:  # gone since the listing
            continue
        try:
            records.append(json.loads(blob.data))
        except ValueError:  # replaced while being read: read it next time
            continue
    return records


def duplicates(sandbox: SandboxServer) -> set[tuple[str, int]]:
    counts = Counter((s["sha256"], s["template_id"]) for s in sandbox.submissions())
    return {pair for pair, count in counts.items() if count > 1}


class World:
    """Photos, a restartable sandbox and the ``modelset run`` command against them."""

    def __init__(
        self,
        factory: SandboxFactory,
        tmp_path: Path,
        prefect_server: str,
        out: str,
        *,
        lookup: bool,
    ) -> None:
        self.tmp_path = tmp_path
        self.photos = tmp_path / "photos"
        for index in range(PHOTOS):
            colour = (index * 9 % 256, 255 - index * 7, index * 53 % 256)
            make_photo(self.photos / f"c{index:02d}.jpg", size=(96, 128), colour=colour)
        self.out = out
        self.store = open_store(out)
        self.state = tmp_path / "sandbox" / "state.json"
        self.factory = factory
        self.lookup = lookup
        self.sandbox = factory(
            generation_s=2,
            images_per_set=2,
            state_file=self.state,
            lookup_by_request_id=lookup,
            faults={"stall": 0.4},
        )
        self.port = int(self.sandbox.base_url.rsplit(":", 1)[1])
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("HIDREAM_")}
        self.env = {
            **inherited,
            "PREFECT_API_URL": prefect_server,
            "HIDREAM_BASE_URL": self.sandbox.base_url,
            "HIDREAM_API_TOKEN": TOKEN,
            "HIDREAM_CALLBACK_SECRET": SECRET,  # no callback URL: it only must not leak
            "HIDREAM_ALLOW_PRIVATE_URLS": "true",
            "HIDREAM_POLL_INTERVAL": "0.2",
            "HIDREAM_POLL_MAX_INTERVAL": "0.5",
            "HIDREAM_READ_TIMEOUT": "30",  # stalled submits stay in flight until the kill
            "HIDREAM_SUBMIT_TIMEOUT": "30",
        }
        self.outputs: list[str] = []
        self.elapsed: list[float] = []

    def command(self, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "modelset",
            "run",
            str(self.photos),
            "-t",
            str(TEMPLATE),
            "--out",
            self.out,
            "--concurrency",
            "8",
            "--yes",
            *extra,
        ]

    def run_and_kill(self) -> Crash:
        """Start the run; kill -9 it once >= 3 sets are submitted and >= 2 submits are
        in flight, before any set is finished."""
        log = self.tmp_path / "killed-run.log"
        started = time.monotonic()
        with log.open("wb") as sink:
            process = subprocess.Popen(
                self.command(), cwd=REPO, env=self.env, stdout=sink, stderr=subprocess.STDOUT
            )
            try:
                deadline = time.monotonic() + 90
                while True:
                    states = Counter(r["state"] for r in ledger_records(self.store))
                    if states["intent"] >= 2 and states["submitted"] >= 3:
                        break
                    assert process.poll() is None, log.read_text()[-3000:]
                    assert time.monotonic() < deadline, f"never got there: {states}"
                    time.sleep(0.02)
                process.send_signal(signal.SIGKILL)
            finally:
                process.kill()
                process.wait(30)
        assert process.returncode == -signal.SIGKILL
        self.elapsed.append(time.monotonic() - started)
        self.outputs.append(log.read_text(errors="replace"))
        records = ledger_records(self.store)
        assert not [r for r in records if r["state"] == "finished"], "killed too late"
        return Crash(
            intents={r["request_id"]: r for r in records if r["state"] == "intent"},
            submitted={r["request_id"]: r for r in records if r["state"] == "submitted"},
        )

    def restart_sandbox_without_stalls(self) -> None:
        self.sandbox.stop()
        self.sandbox = self.factory(
            port=self.port,
            generation_s=2,
            images_per_set=2,
            state_file=self.state,
            lookup_by_request_id=self.lookup,
        )

    def rerun(self, *extra: str) -> int:
        started = time.monotonic()
        done = subprocess.run(
            self.command(*extra),
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        self.elapsed.append(time.monotonic() - started)
        self.outputs.append(done.stdout + done.stderr)
        return done.returncode

    def log_figures(self, crash: Crash) -> None:
        """One line for docs/reliability.md (``-o log_cli=true``)."""
        logging.getLogger("tests.crash").info(
            "figures: killed with %d in flight and %d submitted; runs %s s; %d accepted",
            len(crash.intents),
            len(crash.submitted),
            [round(seconds, 1) for seconds in self.elapsed],
            len(self.sandbox.submissions()),
        )

    def check_succeeded(self, row: dict[str, Any]) -> None:
        assert row["status"] == "succeeded", row
        assert len(row["outputs"]) == 2, row
        for output in row["outputs"]:
            assert_decodes(self.store, output)

    def check_report(self) -> list[dict[str, Any]]:
        rows = manifest(self.out)
        assert len(rows) == PHOTOS, "the report lists every photo"
        assert {row["item"] for row in rows} == {f"c{i:02d}" for i in range(PHOTOS)}
        assert read_text(self.store, "manifest.csv").count("\n") == PHOTOS + 1
        assert "<html" in read_text(self.store, "index.html")
        return rows

    def check_no_secrets(self) -> None:
        """Neither secret in the runs' output nor in any text file of the location (every
        .json, .jsonl, .csv, .html and suffix-less file or object, the report included)."""
        files = report_texts(self.out)
        assert {"manifest.csv", "index.html", "manifest.jsonl"} <= {
            name.rsplit("/", 1)[-1] for name in files
        }
        texts = {f"run {index}": text for index, text in enumerate(self.outputs)} | files
        for where, text in texts.items():
            assert TOKEN not in text, f"the token leaked into {where}"
            assert SECRET not in text, f"the callback secret leaked into {where}"


def test_kill_9_mid_batch_then_rerun_pays_nothing_twice(
    sandbox_factory: SandboxFactory, tmp_path: Path, prefect_server: str, out_location: str
) -> None:
    world = World(sandbox_factory, tmp_path, prefect_server, out_location, lookup=True)
    crash = world.run_and_kill()
    world.restart_sandbox_without_stalls()

    code = world.rerun()

    assert code == 0, world.outputs[-1][-3000:]
    assert duplicates(world.sandbox) == set(), "a photo+template was accepted twice"
    rows = world.check_report()
    for row in rows:
        world.check_succeeded(row)
    sent = Counter(s["request_id"] for s in world.sandbox.submissions())
    for request_id in [*crash.intents, *crash.submitted]:
        assert sent[request_id] == 1, f"{request_id} was accepted {sent[request_id]} times"
    by_request = {row["request_id"]: row for row in rows}
    for request_id, record in crash.submitted.items():
        assert by_request[request_id]["task_id"] == record["task_id"], "the receipt was reused"
    assert len(world.sandbox.submissions()) == PHOTOS
    world.check_no_secrets()
    world.log_figures(crash)


def test_kill_9_against_the_documented_contract_leaves_only_the_in_flight_unknown(
    sandbox_factory: SandboxFactory, tmp_path: Path, prefect_server: str, out_location: str
) -> None:
    world = World(sandbox_factory, tmp_path, prefect_server, out_location, lookup=False)
    crash = world.run_and_kill()
    world.restart_sandbox_without_stalls()

    assert world.rerun() == 1, world.outputs[-1][-3000:]

    assert duplicates(world.sandbox) == set()
    rows = world.check_report()
    unknown = [row for row in rows if row["request_id"] in crash.intents]
    assert len(unknown) == len(crash.intents) >= 2
    for row in unknown:
        assert row["status"] == "outcome_unknown", row
        assert "--resubmit-unknown" in row["reason"], row
    for row in rows:
        if row["request_id"] not in crash.intents:
            world.check_succeeded(row)
    assert "outcome_unknown" in world.outputs[-1]

    assert world.rerun("--resubmit-unknown") == 0, world.outputs[-1][-3000:]

    rows = world.check_report()
    for row in rows:
        world.check_succeeded(row)
    unknown_photos = {(row["upload_sha256"], TEMPLATE) for row in unknown}
    assert duplicates(world.sandbox) <= unknown_photos, "paid twice for a known item"
    assert len(world.sandbox.submissions()) <= PHOTOS + len(unknown)
    world.check_no_secrets()
    world.log_figures(crash)
