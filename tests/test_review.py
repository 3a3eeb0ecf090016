"""Review before publishing, outside deployments: runs leave their sets pending, the shell
decides, approved sets are published complete and once, declined ones can be paid again.
(Suspended deployment runs: tests/test_review_deployments.py.)"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.objects import State
from typer.testing import CliRunner

from modelset import layout
from modelset.cli import app
from modelset.flows.generate import generate_model_sets
from modelset.flows.review import PUBLISHED_EVENT
from modelset.labels import Labelling
from modelset.options import RunOptions
from modelset.report import read_manifest
from modelset.review import (
    Review,
    decide,
    latest_decisions,
    publish,
    publish_target,
)
from modelset.sandbox import SandboxServer
from modelset.storage import BucketStore, Store, open_store
from tests.conftest import events_caught_up, make_photo, wait_for_events

pytestmark = pytest.mark.usefixtures("prefect_server")
runner = CliRunner()


def run(sources: list[str], **options: Any) -> State[Any]:
    async def go() -> State[Any]:
        return await generate_model_sets(sources, [20], RunOptions(**options), return_state=True)

    return asyncio.run(go())


def review(*args: str) -> Any:
    return runner.invoke(app, ["review", *args])


def reviews(out: Path) -> dict[str, tuple[str, str, str, list[str]]]:
    return {
        f"{row.item}/{row.template_id}": (row.review, row.review_note, row.reviewer, row.published)
        for row in read_manifest(out)
    }


async def published_events(resource_id: str, out: Path, *, at_least: int = 1) -> list[Any]:
    """The modelset.set.published events of a set in ``out``, once Prefect has stored
    every event this process emitted: all of them, not only the first (other tests
    publish sets of the same name from other output locations)."""
    await events_caught_up()
    return await wait_for_events(
        PUBLISHED_EVENT,
        resource_id,
        at_least=at_least,
        where=lambda event: event.payload.get("out") == str(out),
    )


def published_files(out: Path) -> list[str]:
    root = out / "published"
    if not root.exists():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture
def looks(tmp_path: Path) -> Path:
    folder = tmp_path / "looks"
    for index, colour in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        make_photo(folder / f"look-{index}.jpg", colour=colour)
    (folder / "broken.jpg").write_bytes(b"not a photo")
    return folder


def test_a_run_outside_a_deployment_leaves_its_sets_pending_and_the_shell_decides(
    env: dict[str, str], sandbox: SandboxServer, looks: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    state = run([str(looks)], out=str(out), review=True)

    assert f"3 sets wait for review: decide them with `modelset review {out}`" in (
        state.message or ""
    )
    assert {key: r[0] for key, r in reviews(out).items()} == {
        "look-0/20": "pending",
        "look-1/20": "pending",
        "look-2/20": "pending",
        "broken/20": "",  # rejected: nothing to review
    }
    assert published_files(out) == []
    listed = review(str(out))
    assert listed.exit_code == 0, listed.output
    assert all(f"look-{n}/20" in listed.output for n in range(3))

    decided = review(
        str(out), "--approve", "look-0/20", "--reject", "look-1/20", "--note", "hem",
        "--reviewer", "ana",
    )  # fmt: skip

    assert decided.exit_code == 0, decided.output
    [event] = asyncio.run(published_events("modelset.set.look-0.20", out))
    assert event.payload == {
        "item": "look-0",
        "template_id": 20,
        "out": str(out),
        "published": [str(out / "published" / "look-0" / "20" / f"{n}.jpg") for n in range(1, 5)],
        "reviewer": "ana",
    }
    assert published_files(out) == [
        "look-0/20/1.jpg",
        "look-0/20/2.jpg",
        "look-0/20/3.jpg",
        "look-0/20/4.jpg",
        f"look-0/20/{layout.PUBLISHED_MARKER}",
    ]
    for n in range(1, 5):
        published = out / "published" / "look-0" / "20" / f"{n}.jpg"
        assert published.read_bytes() == (out / "look-0" / "20" / f"{n}.jpg").read_bytes()
    marker = json.loads((out / "published" / "look-0" / "20" / layout.PUBLISHED_MARKER).read_text())
    assert marker["images"] == ["1.jpg", "2.jpg", "3.jpg", "4.jpg"]
    assert marker["reviewer"] == "ana"
    found = reviews(out)
    assert found["look-0/20"] == (
        "approved",
        "hem",
        "ana",
        [str(out / "published" / "look-0" / "20" / f"{n}.jpg") for n in range(1, 5)],
    )
    assert found["look-1/20"] == ("declined", "hem", "ana", [])
    assert found["look-2/20"][0] == "pending"
    sheet = (out / "index.html").read_text()
    assert "review: <b>approved</b> by ana" in sheet
    assert "review: <b>declined</b> by ana" in sheet
    csv_header = (out / "manifest.csv").read_text().splitlines()[0]
    assert csv_header.endswith("outputs,review,review_note,reviewer,published,near_duplicate_of")


def test_without_a_prefect_api_the_shell_says_no_event_was_sent(
    env: dict[str, str], sandbox: SandboxServer, looks: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from prefect.settings import PREFECT_API_URL, temporary_settings

    out = tmp_path / "out"
    run([str(looks)], out=str(out), review=True)
    monkeypatch.delenv("PREFECT_API_URL")
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = review(str(out), "--approve", "look-0/20")

    assert result.exit_code == 0, result.output
    assert "no modelset.set.published event was sent" in result.output
    assert (out / "published" / "look-0" / "20" / layout.PUBLISHED_MARKER).is_file()


def test_unknown_and_conflicting_keys_exit_2_and_stay_undecided(
    env: dict[str, str], sandbox: SandboxServer, looks: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run([str(looks)], out=str(out), review=True)

    result = review(
        str(out), "--approve", "look-0/20", "--reject", "look-0/20", "--approve", "look-9/20",
        "--approve", "look-2/20",
    )  # fmt: skip

    assert result.exit_code == 2, result.output
    assert "look-0/20: named to approve and to reject" in result.output
    assert "look-9/20: not a pending set of this review" in result.output
    found = reviews(out)
    assert found["look-0/20"][0] == "pending"
    assert found["look-2/20"][0] == "approved"  # the good key of the same command
    assert published_files(out)[0].startswith("look-2/20/")


def test_deciding_again_and_rerunning_publish_nothing_twice(
    env: dict[str, str], sandbox: SandboxServer, looks: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run([str(looks)], out=str(out), review=True)
    assert review(str(out), "--approve-all", "--reject", "look-2/20").exit_code == 0
    published = out / "published" / "look-0" / "20" / "1.jpg"
    first = published.stat()
    paid = len(sandbox.submissions())

    again = review(str(out), "--approve", "look-0/20", "--approve-all")
    state = run([str(looks)], out=str(out), review=True)

    assert again.exit_code == 2
    assert "look-0/20: not pending: already approved" in again.output
    assert state.is_failed()  # the broken photo, as in the first run
    assert len(sandbox.submissions()) == paid
    assert published.stat().st_ino == first.st_ino
    assert published.stat().st_mtime_ns == first.st_mtime_ns
    assert {key: r[0] for key, r in reviews(out).items() if key != "broken/20"} == {
        "look-0/20": "approved",
        "look-1/20": "approved",
        "look-2/20": "declined",
    }
    assert not (out / "published" / "look-2").exists()


def test_regenerate_declined_pays_exactly_the_declined_sets(
    env: dict[str, str], sandbox: SandboxServer, looks: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run([str(looks)], out=str(out), review=True)
    assert review(str(out), "--reject", "look-1/20", "--approve", "look-0/20").exit_code == 0
    paid = sandbox.submissions()

    run([str(looks)], out=str(out), regenerate_declined=True, dry_run=True)
    planned = {row.item: row.reason for row in read_manifest(out) if row.status == "planned"}
    run([str(looks)], out=str(out), regenerate_declined=True, max_images=0)
    capped = {row.item: row.reason for row in read_manifest(out) if row.status == "skipped"}
    run([str(looks)], out=str(out), regenerate_declined=True)
    run([str(looks)], out=str(out), regenerate_declined=True)

    assert planned == {"look-1": "would be submitted"}
    assert list(capped) == ["look-1"]
    assert "the cap of 0 images is reached" in (capped["look-1"] or "")
    submissions = sandbox.submissions()
    assert [s["request_id"] for s in submissions[len(paid) :]] == [
        f"{row.request_id}" for row in read_manifest(out) if row.item == "look-1"
    ]  # one new attempt of look-1, whose request_id is the manifest's now
    rows = {row.item: row for row in read_manifest(out)}
    assert (rows["look-1"].request_id or "").endswith("-2")
    found = reviews(out)
    assert found["look-1/20"][0] == "pending"  # the new attempt starts pending
    assert found["look-0/20"][0] == "approved"
    assert found["look-2/20"][0] == "pending"


def test_an_item_named_published_gets_another_folder(
    env: dict[str, str], sandbox: SandboxServer, tmp_path: Path
) -> None:
    photo = make_photo(tmp_path / "in" / "published.jpg")
    out = tmp_path / "out"
    run([str(photo)], out=str(out), review=True)

    [row] = read_manifest(out)
    assert row.item == "published-2"
    assert review(str(out), "--approve", "published-2/20").exit_code == 0
    assert (out / "published" / "published-2" / "20" / "1.jpg").is_file()


class RecordingStore:
    """A real store that records the order of its writes."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.written: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def write(self, key: str, data: bytes) -> str:
        self.written.append(key)
        return self._store.write(key, data)

    def write_file(self, key: str, path: Path) -> str:
        self.written.append(key)
        return self._store.write_file(key, path)


def test_publishing_into_a_bucket_writes_the_marker_last_and_replaces_a_smaller_set(
    env: dict[str, str], sandbox: SandboxServer, looks: Path, tmp_path: Path, bucket: str
) -> None:
    out = tmp_path / "out"
    run([str(looks)], out=str(out), review=True, publish_to=f"{bucket}/storefront")
    store = open_store(out)
    pending = [d for d in latest_decisions(store) if d.review is Review.PENDING]
    decided = decide(store, pending, approve=["look-0/20"], reviewer="ana")
    [approved] = decided.approved
    target = publish_target(store, approved)
    assert isinstance(target, BucketStore)
    target.write("look-0/20/5.jpg", b"left by an older, larger set")
    recording = RecordingStore(target)

    labelling = Labelling("sandbox")
    recorded, now = publish(store, approved, recording, labelling)
    again, twice = publish(store, recorded, recording, labelling)

    assert now and not twice
    assert recording.written == [
        *(f"look-0/20/{n}.jpg" for n in range(1, 5)),
        "look-0/20/published.json",
    ]
    assert sorted(target.list("look-0/20")) == [
        *(f"look-0/20/{n}.jpg" for n in range(1, 5)),
        "look-0/20/published.json",
    ]
    assert again.published == [f"{bucket}/storefront/look-0/20/{n}.jpg" for n in range(1, 5)]


def test_a_new_attempt_replaces_a_published_folder_whole(
    env: dict[str, str], sandbox: SandboxServer, looks: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run([str(looks)], out=str(out), review=True)
    assert review(str(out), "--approve", "look-0/20").exit_code == 0
    stale = out / "published" / "look-0" / "20" / "9.jpg"
    stale.write_bytes(b"from an older set")

    run([str(looks)], out=str(out), refresh=True)
    assert reviews(out)["look-0/20"][0] == "pending"  # a reviewed set's new attempt
    assert review(str(out), "--approve", "look-0/20").exit_code == 0

    assert not stale.exists()
    assert sorted(os.listdir(out / "published" / "look-0")) == ["20"]
    assert published_files(out)[:5] == [
        *(f"look-0/20/{n}.jpg" for n in range(1, 5)),
        f"look-0/20/{layout.PUBLISHED_MARKER}",
    ]
