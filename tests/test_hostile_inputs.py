"""Hostile inputs and unsafe sources through the whole pipeline, not just the image module.

``test_images.py`` and ``test_corpus.py`` check each file against ``prepare_image``;
``test_sources.py`` checks fetching and the address guard. Here the same kinds of input
go through ``generate_model_sets`` against the sandbox, as a person would run it: one
batch holding every generated hostile case and the whole shared corpus must finish in
bounded time and memory with each row ``succeeded`` or ``rejected`` with its reason; and
unsafe sources (``file://`` in a manifest, URLs on loopback) are refused with the reason
in the report, unless explicitly allowed.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import resource
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from prefect.client.schemas.objects import State

from modelset.flows.generate import generate_model_sets
from modelset.options import RunOptions
from modelset.sandbox import SandboxServer
from tests.conftest import CORPUS, TOKEN, make_photo
from tests.test_pipeline import assert_near_duplicate_of_a_paid_photo

pytestmark = pytest.mark.usefixtures("prefect_server")

BATCH_WALL_S = 90.0
"""Bound on the hostile batch's wall time (it takes about 10 s on 2 cores)."""
BATCH_RSS_GROWTH_MB = 600
"""Bound on how far the batch may raise this process's peak memory (a 50000x50000
bomb decoded would need 7.5 GB)."""


@dataclass(frozen=True)
class Expect:
    status: str
    reason: str | None = None
    """A substring of the row's reason (rejected rows)."""


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _jpeg(size: tuple[int, int], mode: str = "RGB", **save: Any) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, "#b46a3c" if mode == "RGB" else 90).save(buffer, "JPEG", **save)
    return buffer.getvalue()


def write_hostile_cases(folder: Path) -> dict[str, Expect]:
    """Write the generated hostile files into ``folder``; returns what each must give."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, tuple[bytes, Expect]] = {}

    cases["zero-bytes.jpg"] = (b"", Expect("rejected", "empty"))
    cases["html-saved-as.jpg"] = (
        b"<!DOCTYPE html><html><head><title>404</title></head><body>gone</body></html>",
        Expect("rejected", "HTML"),
    )
    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    cases["png-header-50000x50000.png"] = (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"x\x9c"),
        Expect("rejected", "decompression bomb"),
    )
    whole = _jpeg((600, 800), quality=90)
    cases["truncated.jpg"] = (whole[: len(whole) // 3], Expect("rejected", "truncated"))
    cases["polyglot-jpeg-zip.jpg"] = (
        whole + b"PK\x03\x04" + b"payload-that-must-not-be-uploaded" * 20,
        Expect("succeeded"),
    )
    cases["polyglot-gif-js.gif"] = (
        b"GIF89a/*\x00\x00\x00\x00*/=alert(document.domain);//" + b"\x00" * 32,
        Expect("rejected", "corrupt image"),
    )
    frames = [Image.new("RGB", (300, 400), colour) for colour in ("red", "green", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    cases["animated.gif"] = (buffer.getvalue(), Expect("succeeded"))
    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000  # ImageDescription: a 60 kB EXIF block
    cases["huge-exif.jpg"] = (_jpeg((300, 400), exif=exif.tobytes()), Expect("succeeded"))
    buffer = io.BytesIO()
    Image.new("I;16", (300, 400), 40_000).save(buffer, "PNG")
    cases["16-bit.png"] = (buffer.getvalue(), Expect("succeeded"))
    cases["cmyk.jpg"] = (_jpeg((300, 400), mode="CMYK"), Expect("succeeded"))
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), "white").save(buffer, "PNG")
    cases["one-pixel.png"] = (buffer.getvalue(), Expect("rejected", "too small"))
    cases["one-pixel.jpg"] = (_jpeg((1, 1)), Expect("rejected", "too small"))

    for name, (data, _) in cases.items():
        (folder / name).write_bytes(data)
    return {name: expect for name, (_, expect) in cases.items()}


def corpus_expectations() -> dict[str, Expect]:
    """What the corpus files must give, from test_corpus's recorded expectations."""
    from tests.test_corpus import EXPECTED, Rejected

    return {
        name: Expect("rejected", e.reason) if isinstance(e, Rejected) else Expect("succeeded")
        for name, e in EXPECTED.items()
    }


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer) -> SandboxServer:
    values = {
        "HIDREAM_BASE_URL": sandbox.base_url,
        "HIDREAM_API_TOKEN": TOKEN,
        "HIDREAM_ALLOW_PRIVATE_URLS": "true",
        "HIDREAM_POLL_INTERVAL": "0.1",
        "HIDREAM_POLL_MAX_INTERVAL": "0.3",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HIDREAM_ALLOW_FILE_URLS", raising=False)
    return sandbox


def run(sources: list[str], out: Path, **options: Any) -> State[Any]:
    async def go() -> State[Any]:
        return await generate_model_sets(
            sources, [20], RunOptions(out=str(out), **options), return_state=True
        )

    return asyncio.run(go())


def manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def test_every_hostile_case_and_the_corpus_in_one_batch(env: SandboxServer, tmp_path: Path) -> None:
    folder = tmp_path / "hostile"
    expected = write_hostile_cases(folder)
    if CORPUS.is_dir():
        expected |= corpus_expectations()
        for path in CORPUS.iterdir():
            if path.is_file():
                (folder / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"
    before = peak_rss_mb()
    started = time.monotonic()

    run([str(folder)], out, concurrency=16)

    elapsed = time.monotonic() - started
    grown = peak_rss_mb() - before
    logging.getLogger("tests.hostile").info(
        "figures: %d files in %.1f s; peak RSS grew %.0f MB", len(expected), elapsed, grown
    )
    assert elapsed < BATCH_WALL_S, f"the batch took {elapsed:.0f} s"
    assert grown < BATCH_RSS_GROWTH_MB, f"peak memory grew by {grown:.0f} MB"
    rows = {Path(row["source"]).name: row for row in manifest(out)}
    assert set(rows) == set(expected), "every file has exactly one row"
    for name, expect in expected.items():
        row = rows[name]
        if expect.status == "succeeded" and row["status"] == "skipped":
            # The same picture as another case (another container, other metadata).
            assert_near_duplicate_of_a_paid_photo(row, list(rows.values()))
            continue
        assert row["status"] == expect.status, (name, row)
        if expect.status == "rejected":
            assert row["reason"], (name, row)
            assert "\n" not in row["reason"], (name, row)
            if expect.reason:
                assert expect.reason in row["reason"], (name, row)
            assert not row["task_id"], "a rejected photo was submitted"
        else:
            assert len(row["outputs"]) == 4, (name, row)
    succeeded = [row for row in rows.values() if row["status"] == "succeeded"]
    # Files whose uploads come out byte-identical (the same picture with other metadata)
    # share one paid set: their rows carry the same request_id.
    assert sorted(s["request_id"] for s in env.submissions()) == sorted(
        {row["request_id"] for row in succeeded}
    ), "only the succeeded photos were submitted, each once"
    assert {s["sha256"] for s in env.submissions()} == {row["upload_sha256"] for row in succeeded}
    # What was sent is the re-encoded photo: no appended payload, no EXIF.
    polyglot = rows["polyglot-jpeg-zip.jpg"]
    uploads = list((out / ".modelset" / "uploads").glob(f"{polyglot['source_sha256']}-*"))
    assert len(uploads) == 1
    assert b"PK\x03\x04" not in uploads[0].read_bytes()
    huge_exif = rows["huge-exif.jpg"]
    [upload] = (out / ".modelset" / "uploads").glob(f"{huge_exif['source_sha256']}-*")
    with Image.open(upload) as image:
        assert not image.getexif()
        assert image.size[1] * 3 == image.size[0] * 4


def test_file_url_in_a_manifest_is_refused_unless_allowed(
    env: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelset import UsageError

    photo = make_photo(tmp_path / "in" / "local.jpg", size=(96, 128))
    listing = tmp_path / "in" / "manifest.csv"
    listing.write_text(f"image,item\n{photo.as_uri()},via-file-url\n")
    out = tmp_path / "out"

    state = run([str(listing)], out)

    assert state.is_failed()
    with pytest.raises(UsageError, match="file:// URLs are not allowed in manifests"):
        state.result()
    assert env.submissions() == []

    monkeypatch.setenv("HIDREAM_ALLOW_FILE_URLS", "true")
    state = run([str(listing)], out)
    assert state.is_completed(), state.message
    [row] = manifest(out)
    assert row["item"] == "via-file-url"
    assert row["status"] == "succeeded"


def test_urls_on_loopback_are_refused_unless_allowed(
    env: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sandbox's template previews stand in for photos on a private web server."""
    port = env.base_url.rsplit(":", 1)[1]
    by_ip = f"http://127.0.0.1:{port}/_sandbox/templates/20.jpg"
    by_name = f"http://localhost:{port}/_sandbox/templates/22.jpg?token=presigned-secret"
    monkeypatch.delenv("HIDREAM_ALLOW_PRIVATE_URLS")
    out = tmp_path / "out"

    run([by_ip, by_name], out)

    rows = {row["source"]: row for row in manifest(out)}
    assert len(rows) == 2
    for row in rows.values():
        assert row["status"] == "rejected", row
        assert "fetch failed" in row["reason"], row
        assert "loopback" in row["reason"], row
        assert "presigned-secret" not in row["reason"]
    assert env.submissions() == []

    monkeypatch.setenv("HIDREAM_ALLOW_PRIVATE_URLS", "true")
    run([by_ip, by_name], out)
    assert [row["status"] for row in manifest(out)] == ["succeeded", "succeeded"]
    assert len(env.submissions()) == 2
