"""Runs whose output location is a bucket (``s3://`` on the session's moto S3 server).

- several ``modelset run`` processes at once, from empty working directories, into one
  prefix: each photo+template is paid once, the report merges every run's rows, nothing
  lands in the working directories, and a last run pays nothing and links its report;
- a store that ignores conditional writes is refused before anything is paid (exit 2);
- the same picture with other bytes (other metadata) is paid once, in one run or two;
- a malformed location (``s3:/bucket/x``, ``ftp://x``) is a usage error (exit 2), not a
  folder named ``s3:``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
from PIL import Image

from modelset.images import prepare_image
from modelset.layout import MANIFEST_JSONL
from modelset.report import ManifestRow, Status, read_manifest, update_report
from modelset.sandbox import SandboxServer
from modelset.storage import Store, open_store
from modelset.storage.base import Blob
from modelset.storage.local import FolderStore
from tests.conftest import hidream_env, make_photo
from tests.test_pipeline import run
from tests.test_plan import cli

pytestmark = pytest.mark.usefixtures("prefect_server")

TEMPLATE = 20
PHOTOS = 12
IMAGES = 4  # the sandbox fixture's images_per_set
OUTPUT_KEY = re.compile(rf"^(?P<item>[^/]+)/{TEMPLATE}/(?P<n>\d+)\.jpg$")


def photo_folder(root: Path, count: int) -> list[Path]:
    """``count`` distinct small 3:4 photos, p00.jpg ..."""
    return [
        make_photo(root / f"p{index:02d}.jpg", size=(150, 200), colour=(index * 20, 80, 200))
        for index in range(count)
    ]


def subprocess_env(sandbox: SandboxServer) -> dict[str, str]:
    """This process's environment (AWS_* of the S3 server, PREFECT_API_URL) pointed at
    ``sandbox``; no HIDREAM_* of the parent's."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("HIDREAM_")}
    return {**inherited, **hidream_env(sandbox)}


def start_run(
    sources: list[Path], out: str, *, cwd: Path, env: dict[str, str]
) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "modelset", "run", *map(str, sources)]
    command += ["-t", str(TEMPLATE), "--out", out, "--yes"]
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(processes: list[subprocess.Popen[str]]) -> list[str]:
    """Wait for every process; their outputs. Each must exit 0."""
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    codes = [process.returncode for process in processes]
    assert codes == [0] * len(processes), "\n----\n".join(o[-3000:] for o in outputs)
    return outputs


def empty_folders(root: Path, count: int) -> list[Path]:
    folders = [root / f"cwd-{index}" for index in range(count)]
    for folder in folders:
        folder.mkdir(parents=True)
    return folders


def assert_empty(folders: list[Path]) -> None:
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir()) == [], f"{folder} was written to"


def accepted_once(sandbox: SandboxServer, expected: int) -> None:
    """The sandbox accepted ``expected`` photo+template pairs, each exactly once."""
    counts = Counter((s["sha256"], s["template_id"]) for s in sandbox.submissions())
    assert {pair: n for pair, n in counts.items() if n > 1} == {}, "accepted twice"
    assert len(counts) == expected
    assert len(sandbox.submissions()) == expected


def decodes(store: Store, key: str) -> None:
    with Image.open(io.BytesIO(store.read(key).data)) as image:
        assert image.format == "JPEG"
        image.verify()


def check_sets_and_report(out: str, items: set[str]) -> list[ManifestRow]:
    """Every item's set in the bucket (``<item>/20/<n>.jpg``, each decoding), and a
    report with exactly one succeeded row per photo+template pointing at it."""
    store = open_store(out)
    sets: dict[str, list[str]] = {}
    for key in store.list(""):
        if (match := OUTPUT_KEY.match(key)) is not None:
            sets.setdefault(match["item"], []).append(key)
    assert set(sets) == items
    for keys in sets.values():
        assert len(keys) == IMAGES, keys
        for key in keys:
            decodes(store, key)

    rows = read_manifest(out)
    assert len(rows) == len(items), [(row.item, row.status) for row in rows]
    assert len({row.row_key for row in rows}) == len(items), "a photo+template twice"
    for row in rows:
        assert row.status == "succeeded", (row.item, row.status, row.reason)
        assert sorted(row.outputs) == sorted(sets[row.item])
    assert {row.item for row in rows} == items
    csv = store.read("manifest.csv").data.decode()
    assert csv.count("\n") == len(items) + 1, csv
    sheet = store.read("index.html").data.decode()
    assert sheet.startswith("<!doctype html>")
    for item in items:
        assert f">{item}<" in sheet, f"{item} missing from index.html"
    return rows


# -- concurrent runs from empty working directories ---------------------------------------


def test_concurrent_runs_from_empty_folders_pay_each_photo_once_into_one_prefix(
    sandbox: SandboxServer, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = photo_folder(tmp_path / "photos", PHOTOS)
    folders = empty_folders(tmp_path, 3)
    env = subprocess_env(sandbox)

    finish([start_run([photos[0].parent], bucket, cwd=folder, env=env) for folder in folders])

    accepted_once(sandbox, PHOTOS)
    check_sets_and_report(bucket, {photo.stem for photo in photos})
    assert_empty(folders)

    monkeypatch.chdir(folders[0])
    args = ["run", str(photos[0].parent), "-t", str(TEMPLATE), "--out", bucket, "--yes"]
    last = cli(*args, env=hidream_env(sandbox))
    assert last.returncode == 0, last.stdout + last.stderr
    assert len(sandbox.submissions()) == PHOTOS, "the last run paid again"
    assert f"report: {bucket}/index.html" in last.stdout, last.stdout
    links = re.findall(r"^report link \(valid 7 days\): (\S+)$", last.stdout, re.MULTILINE)
    assert len(links) == 1, last.stdout
    with httpx.Client(trust_env=False, timeout=10) as http:  # no credentials, no AWS_*
        page = http.get(links[0])
    assert page.status_code == 200, page.text[:500]
    assert page.headers["content-type"].startswith("text/html")
    assert all(f">{photo.stem}<" in page.text for photo in photos)
    assert_empty(folders)


def test_concurrent_runs_of_different_photos_merge_their_rows_into_one_report(
    sandbox: SandboxServer, bucket: str, tmp_path: Path
) -> None:
    """Each run has its own photos: a report writer that overwrote rather than merged
    would lose another run's rows."""
    photos = photo_folder(tmp_path / "photos", PHOTOS)
    folders = empty_folders(tmp_path, 3)
    env = subprocess_env(sandbox)
    shares = [photos[index :: len(folders)] for index in range(len(folders))]

    finish(
        [
            start_run(share, bucket, cwd=folder, env=env)
            for share, folder in zip(shares, folders, strict=True)
        ]
    )

    accepted_once(sandbox, PHOTOS)
    check_sets_and_report(bucket, {photo.stem for photo in photos})
    assert_empty(folders)


class RacedFolder(FolderStore):
    """A folder in which another run merges ``theirs`` into the report, and writes its
    views, just after this run merged its own rows (at its second read of the manifest):
    what a shard in another container did to a sharded batch's report."""

    def __init__(self, root: Path, theirs: list[ManifestRow]) -> None:
        super().__init__(root)
        self.theirs, self.manifest_reads = theirs, 0

    def read(self, key: str) -> Blob:
        if key == MANIFEST_JSONL:
            self.manifest_reads += 1
            if self.manifest_reads == 2:
                update_report(FolderStore(self.root), self.theirs)
        return super().read(key)


def test_a_report_written_after_another_runs_keeps_that_runs_rows(tmp_path: Path) -> None:
    def row(item: str) -> ManifestRow:
        return ManifestRow(
            source=f"/shoot/{item}.jpg", item=item, template_id=20, status=Status.SUCCEEDED
        )

    store = RacedFolder(tmp_path / "out", [row("theirs")])

    update_report(store, [row("mine")])

    assert sorted(r.item for r in read_manifest(str(store.root))) == ["mine", "theirs"]
    page = store.read("index.html").data.decode()
    assert ">mine<" in page and ">theirs<" in page


# -- a store that ignores conditional writes -------------------------------------------


def test_a_bucket_that_ignores_conditional_writes_is_refused_before_paying(
    sandbox: SandboxServer, careless_bucket: str, tmp_path: Path
) -> None:
    photo = make_photo(tmp_path / "in" / "p.jpg", size=(150, 200))
    args = ["run", str(photo), "-t", str(TEMPLATE), "--out", careless_bucket, "--yes"]
    done = cli(*args, env=hidream_env(sandbox))

    said = " ".join((done.stdout + done.stderr).split())  # undo the console's wrapping
    assert done.returncode == 2, said
    assert careless_bucket in said
    assert "conditional writes" in said
    assert "Traceback" not in said
    assert sandbox.submissions() == []
    assert open_store(careless_bucket).list("") == [], "the refused run left objects"


# -- the same picture with other bytes ---------------------------------------------------


def same_picture_twice(folder: Path) -> tuple[Path, Path]:
    """Two JPEGs of identical pixels (one encoding of them), the second with an EXIF
    block and a comment: other files, one upload once prepared (fix strips metadata)."""
    made = make_photo(folder / "made" / "made.jpg", size=(300, 400), colour=(30, 120, 90))
    with Image.open(made) as image:
        pixels = image.copy()
    first, second = folder / "first.jpg", folder / "second.jpg"
    pixels.save(first, "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x010E] = "the same picture, other metadata"  # ImageDescription
    exif[0x013B] = "a photographer"  # Artist
    pixels.save(second, "JPEG", quality=90, exif=exif.tobytes(), comment=b"re-saved")

    assert sha256_of(first) != sha256_of(second), "the files must differ"
    with Image.open(first) as one, Image.open(second) as other:
        assert one.tobytes() == other.tobytes(), "the pixels must be identical"
        assert "exif" in other.info and "exif" not in one.info
    uploads = {
        prepare_image(path, folder / "prepared" / f"{path.stem}.jpg").sha256
        for path in (first, second)
    }
    assert len(uploads) == 1, "fix must prepare both to one upload"
    return first, second


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_paid_once(rows: list[ManifestRow], first: Path, second: Path, out: str) -> None:
    by_source = {row.source: row for row in rows}
    assert set(by_source) == {str(first), str(second)}
    original, copy = by_source[str(first)], by_source[str(second)]
    assert original.status == "succeeded", original
    assert len(original.outputs) == IMAGES
    assert all(key.startswith(f"first/{TEMPLATE}/") for key in original.outputs), original
    assert copy.status == "succeeded", copy
    assert copy.outputs == original.outputs
    assert copy.reason is not None and "same picture" in copy.reason, copy.reason
    assert copy.upload_sha256 == original.upload_sha256
    assert original.source_sha256 == sha256_of(first)
    store = open_store(out)
    for key in original.outputs:
        decodes(store, key)
    assert not [key for key in store.list("") if key.startswith("second/")], "a second set"


@pytest.mark.usefixtures("env")
def test_the_same_picture_with_other_metadata_in_a_later_run_is_paid_once(
    sandbox: SandboxServer, bucket: str, tmp_path: Path
) -> None:
    first, second = same_picture_twice(tmp_path / "in")

    assert run([str(first)], [TEMPLATE], out=bucket).is_completed()
    assert len(sandbox.submissions()) == 1
    state = run([str(second)], [TEMPLATE], out=bucket)

    assert state.is_completed(), state.message
    assert len(sandbox.submissions()) == 1, "the same picture was paid twice"
    rows = read_manifest(bucket)
    check_paid_once(rows, first, second, bucket)
    copy = next(row for row in rows if row.source == str(second))
    assert copy.source_sha256 == sha256_of(second), "the copy's row names its own file"


@pytest.mark.usefixtures("env")
def test_the_same_picture_with_other_metadata_in_one_run_is_paid_once(
    sandbox: SandboxServer, bucket: str, tmp_path: Path
) -> None:
    first, second = same_picture_twice(tmp_path / "in")

    state = run([str(first), str(second)], [TEMPLATE], out=bucket)

    assert state.is_completed(), state.message
    assert len(sandbox.submissions()) == 1, "the same picture was paid twice"
    check_paid_once(read_manifest(bucket), first, second, bucket)


@pytest.mark.usefixtures("env")
def test_the_same_picture_in_one_run_records_each_file_s_own_sha256(
    sandbox: SandboxServer, bucket: str, tmp_path: Path
) -> None:
    first, second = same_picture_twice(tmp_path / "in")
    assert run([str(first), str(second)], [TEMPLATE], out=bucket).is_completed()
    by_source = {row.source: row for row in read_manifest(bucket)}
    assert by_source[str(first)].source_sha256 == sha256_of(first)
    assert by_source[str(second)].source_sha256 == sha256_of(second)


# -- malformed locations ---------------------------------------------------------------

MALFORMED = ["s3:/bucket/x", "s3:bucket/x", "s3://", "ftp://x"]


@pytest.mark.parametrize("given_as", ["--out", "HIDREAM_OUTPUT_DIR"])
@pytest.mark.parametrize("location", MALFORMED)
def test_a_malformed_location_is_a_usage_error_not_a_folder(
    sandbox: SandboxServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    location: str,
    given_as: str,
) -> None:
    photo = make_photo(tmp_path / "in" / "p.jpg", size=(150, 200))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    args = ["run", str(photo), "-t", str(TEMPLATE), "--yes"]
    extra: dict[str, str] = {}
    if given_as == "--out":
        args += ["--out", location]
    else:
        extra["HIDREAM_OUTPUT_DIR"] = location

    done = cli(*args, env={**hidream_env(sandbox), **extra}, timeout=120)

    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, said
    assert location in said and "location" in said, said
    assert "Traceback" not in said
    assert sandbox.submissions() == []
    assert sorted(p.name for p in cwd.iterdir()) == [], "the location became a folder"


def test_a_malformed_bucket_url_says_what_a_location_looks_like(
    sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    photo = make_photo(tmp_path / "in" / "p.jpg", size=(150, 200))
    args = ["run", str(photo), "-t", str(TEMPLATE), "--out", "s3:/bucket/x", "--yes"]
    done = cli(*args, env=hidream_env(sandbox), timeout=120)
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, said
    assert "s3://bucket/prefix" in said, said
