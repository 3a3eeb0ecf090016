"""Every file given is accounted for: a dry run over a mixed shoot, on a folder and a
bucket, names each file in one place: planned, a near-duplicate, or passed over."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from modelset.images.rules import heif_formats
from modelset.report import ManifestRow, Status, remember_passed_over, update_report
from modelset.sandbox import SandboxServer
from modelset.sources import PassedOver
from modelset.sources.models import NOT_AN_IMAGE
from modelset.storage import Store, open_store
from modelset.tasks.artifacts import summary_markdown
from tests.test_near_duplicates import DEMO, with_logo
from tests.test_plan import cli


def mixed_shoot(folder: Path) -> dict[str, str]:
    """Originals, a storefront's copy, another product shot alike, an AVIF, a camera's
    HEIF, a RAW file and a note; each file with where the dry run must name it."""
    folder.mkdir(parents=True)
    shutil.copy(DEMO / "denim-jacket.jpg", folder / "denim-jacket.jpg")
    shutil.copy(DEMO / "studio-red-dress.jpg", folder / "studio-red-dress.jpg")
    with Image.open(DEMO / "denim-jacket.jpg") as jacket:
        jacket.save(folder / "denim-jacket-web.jpg", quality=60)
    (folder / "denim-jacket-logo.jpg").write_bytes(with_logo(DEMO / "denim-jacket.jpg"))
    heif_formats()  # pillow-heif's encoder writes the .hif; Pillow's own the AVIF
    with Image.open(DEMO / "square-lookbook.jpg") as lookbook:
        lookbook.convert("RGB").save(folder / "lookbook.avif", "AVIF", quality=80)
    with Image.open(DEMO / "phone-rotated.jpg") as phone:
        phone.convert("RGB").save(folder / "DSC0001.HIF", "HEIF", quality=90)
    (folder / "IMG_0002.dng").write_bytes(b"II*\x00" + bytes(60))
    (folder / "notes.txt").write_text("call the studio about the jacket")
    return {
        "denim-jacket.jpg": "planned",
        "studio-red-dress.jpg": "planned",
        "denim-jacket-logo.jpg": "planned",
        "lookbook.avif": "planned",
        "DSC0001.HIF": "planned",
        "denim-jacket-web.jpg": "near-duplicate",
        "IMG_0002.dng": "passed over",
        "notes.txt": "passed over",
    }


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("shape", ["folder", "bucket"])
def test_a_dry_run_over_a_mixed_shoot_names_every_file_in_exactly_one_place(
    env: dict[str, str],
    sandbox: SandboxServer,
    tmp_path: Path,
    shape: str,
    request: pytest.FixtureRequest,
) -> None:
    folder = tmp_path / "shoot"
    where = mixed_shoot(folder)
    source = str(folder)
    if shape == "bucket":
        source = f"{request.getfixturevalue('bucket')}/shoot"
        store = open_store(source)
        for path in folder.iterdir():
            store.write_file(path.name, path)
    out = tmp_path / "out"

    dry = cli(
        "run", source, "-t", "20", "--out", str(out), "--dry-run", env={**env, "COLUMNS": "200"}
    )

    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert sandbox.submissions() == []
    lines = dry.stdout.splitlines()
    passed_over = lines.index("passed over: 2 files")
    for name, place in where.items():
        # A row names its photo by the item (the stem); what was passed over by its name.
        shown = f"│ {Path(name).stem} " if place != "passed over" else f" ({name})"
        [line] = [line for line in lines if shown in line]
        if place == "planned":
            assert "│ planned │ would be submitted" in line, line
        elif place == "near-duplicate":
            assert "│ skipped │ near-duplicate of denim-jacket" in line, line
        else:
            assert lines.index(line) in (passed_over + 1, passed_over + 2), dry.stdout
    assert "  not an image: 1 (notes.txt)" in lines
    assert (
        "  RAW camera file (.dng, .cr2, .nef, .arw...): export a JPEG or HEIC: 1 (IMG_0002.dng)"
        in lines
    )
    sheet = (out / "index.html").read_text()
    assert "passed over: 2 files" in sheet
    assert "IMG_0002.dng" in sheet and "notes.txt" in sheet


def test_every_writing_of_the_report_shows_what_the_last_scan_passed_over(
    out_location: str,
) -> None:
    store = open_store(out_location)
    planned = [ManifestRow(source="/shoot/a.jpg", item="a", template_id=20, status=Status.PLANNED)]
    passed = PassedOver()
    passed.add(NOT_AN_IMAGE, "notes.txt")

    remember_passed_over(store, passed)
    update_report(store, planned)
    assert "passed over: 1 file" in sheet(store) and "notes.txt" in sheet(store)
    done = [planned[0].model_copy(update={"status": Status.SUCCEEDED})]
    update_report(store, done)  # as a callback's collector or a review writes it
    assert "notes.txt" in sheet(store)
    remember_passed_over(store, PassedOver())  # a rerun whose scan took every file
    update_report(store, done)  # the same rows: the views were current until now
    assert "passed over" not in sheet(store)

    summary = summary_markdown(planned, {}, out="/out", sheet="/out/index.html", passed_over=passed)
    assert "**passed over: 1 file**\n\n- not an image: 1 (`notes.txt`)\n" in summary


def sheet(store: Store) -> str:
    return store.read("index.html").data.decode()
