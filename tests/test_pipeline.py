"""The batch flow end to end on a real Prefect server and the sandbox."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import http.server
import io
import json
import os
import random
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from prefect.client.schemas.objects import State

from modelset import layout
from modelset.batch.summary import THUMBNAIL_ROWS
from modelset.flows.generate import generate_model_sets
from modelset.options import RunOptions
from modelset.report import (
    MANIFEST_FIELDS,
    ManifestRow,
    Status,
    contact_sheet,
    not_collected_notice,
)
from modelset.sandbox import SandboxServer
from modelset.stages import download_image, jpeg_bytes, open_workspace
from modelset.tasks.artifacts import (
    ARTIFACT_MAX_BYTES,
    MARKDOWN_THUMBNAIL,
    picture_cells,
    results_table,
    set_cell,
    summary_markdown,
)
from tests.conftest import CORPUS, SandboxFactory, make_photo

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    make_photo(folder / "portrait.jpg", size=(600, 800), colour=(200, 40, 40))
    make_photo(folder / "landscape.jpg", size=(1200, 800), colour=(40, 200, 40))
    make_photo(folder / "nested" / "square.png", size=(900, 900), colour=(40, 40, 200))
    (folder / "broken.jpg").write_bytes(b"<html>not a photo</html>")
    return folder


def run(sources: list[str], templates: list[int], **options: Any) -> State[Any]:
    async def go() -> State[Any]:
        return await generate_model_sets(
            sources, templates, RunOptions(**options), return_state=True
        )

    return asyncio.run(go())


def manifest(out: Path) -> list[dict[str, Any]]:
    lines = (out / "manifest.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def by_item(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(row["item"], row["template_id"]): row for row in rows}


def test_batch_end_to_end_then_rerun_pays_nothing(
    env: dict[str, str], sandbox: SandboxServer, photos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    state = run([str(photos)], [20, 21], out=str(out))

    assert state.is_failed()
    assert "2 of 8 did not succeed" in (state.message or "")
    rows = manifest(out)
    assert len(rows) == 8
    assert all(list(row) == list(MANIFEST_FIELDS) for row in rows)
    table = by_item(rows)
    for item in ("portrait", "landscape", "square"):
        for template_id in (20, 21):
            row = table[(item, template_id)]
            assert row["status"] == "succeeded", row
            assert row["task_id"] and row["request_id"] and row["upload_sha256"]
            assert len(row["outputs"]) == 4
            for output in row["outputs"]:
                with Image.open(out / output) as image:
                    assert image.format == "JPEG"
                    assert abs(image.width / image.height - 0.75) <= 0.01
    broken = table[("broken", 20)]
    assert broken["status"] == "rejected"
    assert "not an image" in broken["reason"]
    assert (out / "manifest.csv").read_text().splitlines()[0] == ",".join(MANIFEST_FIELDS)
    sheet = (out / "index.html").read_text()
    assert "portrait" in sheet and "rejected" in sheet
    submitted = sandbox.submissions()
    assert len(submitted) == 6
    assert {(s["template_id"], s["request_id"]) for s in submitted} == {
        (table[(i, t)]["template_id"], table[(i, t)]["request_id"])
        for i in ("portrait", "landscape", "square")
        for t in (20, 21)
    }
    first_outputs = {p: p.stat().st_mtime_ns for p in out.glob("*/*/*.jpg")}

    rerun = run([str(photos)], [20, 21], out=str(out))

    assert rerun.is_failed()
    assert len(sandbox.submissions()) == 6, "a rerun must not submit again"
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*/*.jpg")} == first_outputs
    assert by_item(manifest(out)) == table


def test_refresh_pays_again_and_retry_failed_only_the_failed(
    env: dict[str, str],
    sandbox_factory: SandboxFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failing = sandbox_factory(faults={"fail": 1.0})
    monkeypatch.setenv("HIDREAM_BASE_URL", failing.base_url)
    good = make_photo(tmp_path / "in" / "good.jpg")
    out = tmp_path / "out"
    run([str(good)], [20], out=str(out))
    assert manifest(out)[0]["status"] == "failed"
    assert "generation failed" in manifest(out)[0]["reason"]

    run([str(good)], [20], out=str(out))
    assert len(failing.submissions()) == 1, "failed items are not resent without --retry-failed"

    run([str(good)], [20], out=str(out), retry_failed=True)
    assert len(failing.submissions()) == 2
    second = failing.submissions()[1]["request_id"]
    assert second != failing.submissions()[0]["request_id"]

    run([str(good)], [20], out=str(out), refresh=True)
    assert len(failing.submissions()) == 3


def test_unknown_template_is_a_usage_error_and_nothing_is_paid(
    env: dict[str, str], sandbox: SandboxServer, photos: Path, tmp_path: Path
) -> None:
    from modelset import UsageError

    state = run([str(photos)], [20, 999], out=str(tmp_path / "out"))
    assert state.is_failed()
    with pytest.raises(UsageError, match="999"):
        state.result()
    assert sandbox.submissions() == []


def test_identical_photos_are_processed_once(
    env: dict[str, str], sandbox: SandboxServer, tmp_path: Path
) -> None:
    original = make_photo(tmp_path / "in" / "a.jpg")
    (tmp_path / "in" / "copy-of-a.jpg").write_bytes(original.read_bytes())
    out = tmp_path / "out"
    state = run([str(tmp_path / "in")], [20], out=str(out))
    assert state.is_completed()
    rows = by_item(manifest(out))
    assert len(sandbox.submissions()) == 1
    assert rows[("copy-of-a", 20)]["task_id"] == rows[("a", 20)]["task_id"]
    assert "same photo as" in rows[("copy-of-a", 20)]["reason"]


def test_a_lost_submit_answer_is_never_sent_again_without_a_proven_lookup(
    env: dict[str, str],
    sandbox_factory: SandboxFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every answer is lost, so no accepted request can prove a request_id lookup: the
    photo is paid, not collected, and neither the run nor a rerun sends it again, even
    from a sandbox that would find it by request_id."""
    stalling = sandbox_factory(faults={"stall": 1.0}, lookup_by_request_id=True)
    monkeypatch.setenv("HIDREAM_BASE_URL", stalling.base_url)
    monkeypatch.setenv("HIDREAM_READ_TIMEOUT", "1")
    monkeypatch.setenv("HIDREAM_SUBMIT_TIMEOUT", "1")
    out = tmp_path / "out"
    photo = str(make_photo(tmp_path / "in" / "p.jpg"))
    for _ in range(2):
        state = run([photo], [20], out=str(out))
        assert state.is_failed()
        assert len(stalling.submissions()) == 1
        [row] = manifest(out)
        assert row["status"] == "outcome_unknown"
        assert row["reason"].startswith("paid, not collected"), row["reason"]
    assert not (out / ".modelset" / "lookup-proofs").exists(), "nothing accepted, no proof"


def test_two_concurrent_runs_submit_each_photo_once(
    env: dict[str, str], sandbox: SandboxServer, tmp_path: Path, prefect_server: str
) -> None:
    folder = tmp_path / "in"
    for index in range(6):
        make_photo(folder / f"p{index}.jpg", colour=(index * 40, 100, 150))
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "modelset",
        "run",
        str(folder),
        "-t",
        "20",
        "-t",
        "21",
        "--out",
        str(out),
        "--concurrency",
        "4",
    ]
    child_env = {**os.environ, "PREFECT_API_URL": prefect_server}
    runs = [
        subprocess.Popen(command, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=240)[0].decode() for process in runs]
    assert [process.returncode for process in runs] == [0, 0], outputs
    submitted = [(s["sha256"], s["template_id"]) for s in sandbox.submissions()]
    assert len(submitted) == 12
    assert len(set(submitted)) == 12
    assert all(row["status"] == "succeeded" for row in manifest(out))


def test_refresh_replaces_the_older_sets_images(
    env: dict[str, str], sandbox: SandboxServer, tmp_path: Path
) -> None:
    photo = make_photo(tmp_path / "in" / "p.jpg")
    out = tmp_path / "out"
    run([str(photo)], [20], out=str(out))
    first = manifest(out)[0]
    run([str(photo)], [20], out=str(out), refresh=True)
    second = manifest(out)[0]
    assert len(sandbox.submissions()) == 2
    assert second["task_id"] != first["task_id"]
    assert second["status"] == "succeeded"
    assert (out / "p" / "20" / ".task_id").read_text() == second["task_id"]


@pytest.mark.corpus
def test_every_corpus_image_succeeds_or_says_why(
    env: dict[str, str], sandbox: SandboxServer, tmp_path: Path
) -> None:
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus is absent")
    out = tmp_path / "out"
    run([str(CORPUS)], [20], out=str(out), concurrency=8)
    rows = manifest(out)
    assert len(rows) == len([p for p in CORPUS.iterdir() if p.is_file()])
    for row in rows:
        assert row["status"] in ("succeeded", "rejected", "skipped"), row
        if row["status"] == "rejected":
            assert row["reason"], row
        elif row["status"] == "skipped":
            assert_near_duplicate_of_a_paid_photo(row, rows)
        else:
            assert len(row["outputs"]) == 4
    # The corpus's colour Hopper files are one picture, turned and re-encoded: paid once.
    hoppers = [row for row in rows if row["item"].startswith("hopper_orientation")]
    assert len(hoppers) == 4 and all(row["status"] == "skipped" for row in hoppers)
    accepted = {s["sha256"] for s in sandbox.submissions()}
    assert accepted == {row["upload_sha256"] for row in rows if row["status"] == "succeeded"}


def assert_near_duplicate_of_a_paid_photo(row: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """A skipped row is a near-duplicate of a photo the same batch paid for."""
    assert "near-duplicate of " in row["reason"], row  # maybe an identical upload of one
    paid = {r["source_sha256"] for r in rows if r["status"] == "succeeded"}
    assert row["near_duplicate_of"] in paid, row
    assert not row["task_id"], row


async def test_artifacts_show_results_in_the_prefect_ui(
    env: dict[str, str], sandbox: SandboxServer, photos: Path, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    state = await generate_model_sets(
        [str(photos)], [20], RunOptions(out=str(tmp_path / "out")), return_state=True
    )
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    kinds = {artifact.type: artifact for artifact in artifacts}
    assert set(kinds) >= {"progress", "table", "markdown"}
    assert kinds["progress"].data == 100.0
    rows = manifest(tmp_path / "out")
    succeeded = [row for row in rows if row["status"] == "succeeded"]
    markdown = str(kinds["markdown"].data)
    pictures = re.findall(r"!\[([^\]]*)\]\(data:image/jpeg;base64,([^)]+)\)", markdown)
    # Each succeeded row shows its input beside its four generated images (one strip of
    # four thumbnails), all small.
    assert len([alt for alt, _ in pictures if alt == "input"]) >= len(succeeded)
    strips = [data for alt, data in pictures if alt == "4 generated"]
    assert len(strips) == len(succeeded)
    for _, data in pictures:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.height <= 96, image.size
    with Image.open(io.BytesIO(base64.b64decode(strips[0]))) as strip:
        assert strip.width >= 4 * 60, "the four generated thumbnails sit side by side"
    assert "report:" in markdown and "index.html" in markdown
    data = kinds["table"].data
    table: list[dict[str, Any]] = json.loads(data) if isinstance(data, str) else data  # type: ignore[assignment]
    assert list(table[0])[:5] == ["item", "template_id", "status", "reason", "outputs"]
    assert list(table[0])[-3:] == ["source_sha256", "upload_sha256", "near_duplicate_of"]
    assert "broken" in str(table)


def succeeded_rows(count: int) -> list[ManifestRow]:
    """Rows of a batch whose every set succeeded, with every field a catalogue's holds."""
    return [
        ManifestRow(
            source=f"/catalogue/photos/{n}.jpg",
            item=f"photo-{n:05d}",
            template_id=20,
            status=Status.SUCCEEDED,
            source_sha256=f"{n:064x}",
            upload_sha256=f"{n + 1:064x}",
            request_id=f"{n:032x}",
            task_id=f"{n:032x}",
            thumbnail=f"thumb-{n}",
            outputs=[f"photo-{n:05d}/20/{i}.jpg" for i in range(1, 5)],
        )
        for n in range(count)
    ]


def test_the_summary_stays_small_enough_for_prefects_events() -> None:
    rows = succeeded_rows(THUMBNAIL_ROWS)
    noise = random.Random(7)

    def picture(width: int) -> bytes:  # noise: as large as a thumbnail of that size gets
        image = Image.frombytes("RGB", (width, 96), noise.randbytes(width * 96 * 3))
        return jpeg_bytes(image)

    cells = {}
    for row in rows:
        cells[row.thumbnail or ""] = picture(72)
        cells[set_cell(row)] = picture(4 * 72)
    markdown = summary_markdown(rows, cells, out="/out", sheet="/out/index.html")

    # As it travels in the artifact's event: Prefect's server refuses events over 1.5 MB.
    assert len(json.dumps(markdown)) <= ARTIFACT_MAX_BYTES < 1_500_000
    table = [line for line in markdown.splitlines() if line.startswith("| ") and "photo-" in line]
    assert [line.split(" | ")[2] for line in table] == [row.item for row in rows]
    pictured = ["data:image/jpeg" in line for line in table]
    first_bare = pictured.index(False)
    assert first_bare > 0 and not any(pictured[first_bare:]), "the first rows are pictured"
    note = f"The last {len(rows) - first_bare} rows shown are without pictures"
    assert markdown.index(note) < markdown.index("| input |"), "said before the table"

    few = summary_markdown(rows[:3], cells, out="/out", sheet="/out/index.html")
    assert few.count("data:image/jpeg") == 6 and "without pictures" not in few


def test_the_results_table_stops_within_what_prefects_events_carry() -> None:
    rows = succeeded_rows(5000)
    table = results_table(rows)

    assert len(json.dumps(json.dumps(table))) <= ARTIFACT_MAX_BYTES  # its text, in an event
    assert 1000 < len(table) < len(rows)
    assert [entry["item"] for entry in table] == [row.item for row in rows[: len(table)]]
    assert len(results_table(rows[:100])) == 100
    summary = summary_markdown(rows, {}, out="/out", sheet="/out/index.html", tabled=len(table))
    assert (
        f"{len(rows) - THUMBNAIL_ROWS} more rows are in the table artifact (up to row " in summary
    )


@pytest.fixture
def photo_server(tmp_path: Path) -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 serving tmp_path/web."""
    web = tmp_path / "web"
    web.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(web))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_the_summarys_sets_are_pictured_as_they_download_and_only_those(
    tmp_path: Path, photo_server: str
) -> None:
    make_photo(tmp_path / "web" / "generated.jpg", size=(768, 1024))
    url = f"{photo_server}/generated.jpg"
    shown, other = "shown/20/1.jpg", "other/20/1.jpg"
    with open_workspace(tmp_path / "out") as workspace:
        workspace.pictures.want(["shown/20"])
        async with httpx.AsyncClient() as http:
            for target in (shown, other):
                assert (
                    await download_image(http, url, workspace.store, target, workspace.pictures)
                    is None
                )
        assert set(workspace.pictures.made) == {shown}
        with Image.open(io.BytesIO(workspace.pictures.made[shown])) as picture:
            assert picture.height <= 128
        # The summary takes the picture made on arrival: with the image itself gone from the
        # folder, its set still has a cell, and only from that picture.
        (tmp_path / "out" / shown).unlink()
        row = ManifestRow(
            source="look.jpg",
            item="shown",
            template_id=20,
            status=Status.SUCCEEDED,
            outputs=[shown],
        )
        made = workspace.pictures.made
        cells = picture_cells(workspace.store, [row], MARKDOWN_THUMBNAIL, made)
        assert set_cell(row) in cells
        # The same rows again (a rerun that changed nothing): the cells kept beside the
        # report, with nothing read or decoded.
        assert picture_cells(workspace.store, [row], MARKDOWN_THUMBNAIL) == cells
        # Without those and without the picture, nothing is left to make the cell from.
        (tmp_path / "out" / layout.SUMMARY_THUMBNAILS).unlink()
        assert set_cell(row) not in picture_cells(workspace.store, [row], MARKDOWN_THUMBNAIL)


def test_valid_url_photos_pass_through_unchanged_when_asked(
    env: dict[str, str], sandbox: SandboxServer, tmp_path: Path, photo_server: str
) -> None:
    valid = make_photo(tmp_path / "web" / "valid.jpg", size=(768, 1024))
    make_photo(tmp_path / "web" / "wide.jpg", size=(1024, 768))
    out = tmp_path / "out"
    sources = [f"{photo_server}/valid.jpg", f"{photo_server}/wide.jpg"]
    state = run(sources, [20], out=str(out), pass_urls=True)
    assert state.is_completed(), state.message
    rows = by_item(manifest(out))
    valid_sha = hashlib.sha256(valid.read_bytes()).hexdigest()
    assert rows[("valid", 20)]["upload_sha256"] == valid_sha
    assert rows[("wide", 20)]["upload_sha256"] != rows[("wide", 20)]["source_sha256"]
    accepted = {s["sha256"] for s in sandbox.submissions()}
    assert accepted == {rows[("valid", 20)]["upload_sha256"], rows[("wide", 20)]["upload_sha256"]}


def test_photos_with_the_same_name_never_share_an_output_folder(
    env: dict[str, str], sandbox: SandboxServer, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    make_photo(folder / "look.jpg", colour=(200, 10, 10))
    make_photo(folder / "look.png", colour=(10, 200, 10))
    make_photo(folder / "look-2.jpg", colour=(10, 10, 200))
    out = tmp_path / "out"
    assert run([str(folder)], [20], out=str(out)).is_completed()
    rows = manifest(out)
    assert len({row["item"] for row in rows}) == 3
    for row in rows:
        assert len(row["outputs"]) == 4
        assert all((out / path).exists() for path in row["outputs"])
    assert run([str(folder)], [20], out=str(out)).is_completed()
    assert {row["source"]: row["item"] for row in manifest(out)} == {
        row["source"]: row["item"] for row in rows
    }, "a rerun keeps every photo's folder"


def test_the_summary_says_which_sets_are_paid_not_collected_and_how_to_settle_them() -> None:
    rows = succeeded_rows(3)
    rows[1] = rows[1].model_copy(
        update={
            "status": Status.OUTCOME_UNKNOWN,
            "reason": "paid, not collected: ...",
            "outputs": [],
        }
    )
    markdown = summary_markdown(rows, {}, out="s3://shop/sets", sheet="s3://shop/sets/index.html")
    sheet = contact_sheet(rows, title="t", notice=not_collected_notice(rows, "s3://shop/sets"))
    expected = "1 set paid, not collected"
    assert expected in markdown and "modelset settle s3://shop/sets" in markdown
    assert expected in sheet and "modelset settle s3://shop/sets" in sheet
    assert not_collected_notice(succeeded_rows(3), "s3://shop/sets") is None


def test_the_contact_sheet_escapes_every_name_it_shows() -> None:
    [row] = succeeded_rows(1)
    row = row.model_copy(
        update={
            "item": "<script>alert(1)</script>",
            "source": "https://shop.example/a.jpg?x=1&y='2'",
            "reason": "a <b>bold</b> reason",
            "review": "declined",
            "reviewer": "<i>ana</i>",
            "outputs": ["a'/20/1.jpg"],
        }
    )
    sheet = contact_sheet([row], title="modelset: s3://shop/<sets>")
    assert sheet.startswith("<!doctype html>") and sheet.endswith("</html>\n")
    assert "<script>" not in sheet and ">&lt;script&gt;alert(1)&lt;/script&gt;<" in sheet
    assert "<title>modelset: s3://shop/&lt;sets&gt;</title>" in sheet
    assert "?x=1&amp;y=&#39;2&#39;" in sheet
    assert "a &lt;b&gt;bold&lt;/b&gt; reason" in sheet
    assert "review: <b>declined</b> by &lt;i&gt;ana&lt;/i&gt;" in sheet
    assert "<a href='a&#39;/20/1.jpg'>" in sheet
