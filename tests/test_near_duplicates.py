"""Near-duplicates: the same picture with other bytes is planned as skipped, not paid."""

from __future__ import annotations

import csv
import io
import random
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from modelset.images.likeness import LookIndex, NearDuplicates, perceptual_hash
from modelset.images.looks import MAX_COLOUR_DIFFERENCE, MAX_SHAPE_DISTANCE, Look, look_of
from modelset.images.rules import heif_formats
from modelset.report import read_manifest
from modelset.sandbox import SandboxServer
from modelset.storage import open_store
from modelset.tasks.artifacts import MARKDOWN_THUMBNAIL, picture_cells, set_cell
from tests.conftest import CORPUS, EngineRunner
from tests.test_pipeline import manifest, run
from tests.test_plan import cli

DEMO = Path(__file__).resolve().parents[1] / "modelset" / "demo" / "photos"
# Three shots of one layout in other colours: the team wants each generated.
SHOOT = ("denim-jacket.jpg", "studio-red-dress.jpg", "square-lookbook.jpg")


def random_look(rng: random.Random) -> Look:
    return Look(rng.getrandbits(64), rng.randbytes(36))


def flipped(look: Look, bits: int, rng: random.Random, colour_shift: int = 0) -> Look:
    shape = look.shape
    for bit in rng.sample(range(64), bits):
        shape ^= 1 << bit
    colours = bytes(min(255, c + colour_shift) for c in look.colours)
    return Look(shape, colours)


def test_the_shape_is_imagehash_s_phash(tmp_path: Path) -> None:
    import imagehash  # a test dependency: the product computes the same without SciPy

    photos = sorted(DEMO.iterdir()) + (sorted(CORPUS.iterdir()) if CORPUS.is_dir() else [])
    compared = 0
    for path in photos:
        try:
            with Image.open(path) as image:
                picture = image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError):
            continue  # the corpus's broken files
        assert perceptual_hash(picture) == int(str(imagehash.phash(picture)), 16), path.name
        compared += 1
    assert compared >= 5
    flat = Image.new("RGB", (300, 400), (10, 200, 30))
    assert perceptual_hash(flat) == perceptual_hash(flat.convert("L").convert("RGB"))


def test_a_look_survives_its_text() -> None:
    look = random_look(random.Random(1))
    assert Look.parse(str(look)) == look
    with pytest.raises(ValueError, match="not a look"):
        Look.parse("abc")


def test_the_index_finds_exactly_what_a_scan_finds() -> None:
    rng = random.Random(7)
    recorded = [random_look(rng) for _ in range(3000)]
    queries = [
        flipped(rng.choice(recorded), rng.randint(0, 16), rng, rng.choice((0, 10, 25)))
        for _ in range(400)
    ] + [random_look(rng) for _ in range(100)]
    index = LookIndex((look, position) for position, look in enumerate(recorded))
    found = index.pairs(queries)
    expected = sorted(
        (q, r, distance)
        for q, query in enumerate(queries)
        for r, entry in enumerate(recorded)
        if (distance := query.distance(entry)) is not None
    )
    assert found == expected
    assert any(d == MAX_SHAPE_DISTANCE for *_, d in found)  # the edge is inside


def test_distance_needs_both_the_shape_and_the_colours() -> None:
    rng = random.Random(3)
    look = random_look(rng)
    assert flipped(look, MAX_SHAPE_DISTANCE, rng).shape != look.shape
    assert look.distance(flipped(look, MAX_SHAPE_DISTANCE, rng)) == MAX_SHAPE_DISTANCE
    assert look.distance(flipped(look, MAX_SHAPE_DISTANCE + 2, rng)) is None
    dark = Look(look.shape, bytes(36))
    bright = Look(look.shape, bytes([MAX_COLOUR_DIFFERENCE + 1] * 36))
    assert dark.distance(Look(look.shape, bytes([MAX_COLOUR_DIFFERENCE] * 36))) == 0
    assert dark.distance(bright) is None


def test_a_run_plans_the_first_of_each_picture_and_compares_with_what_is_paid() -> None:
    rng = random.Random(5)
    paid = random_look(rng)
    near = NearDuplicates(LookIndex([(paid, "paid-key")]))
    fresh = random_look(rng)
    batch = [
        (flipped(paid, 4, rng), "copy-of-paid"),
        (fresh, "fresh"),
        (flipped(fresh, 2, rng), "copy-of-fresh"),
        (random_look(rng), "other"),
    ]
    matches = near.check(batch)
    assert [(m.ref, m.distance) if m else None for m in matches] == [
        ("paid-key", 4),
        None,
        ("fresh", 2),
        None,
    ]
    # Checked one at a time (as a streaming run does), the same answers.
    later = NearDuplicates(LookIndex([(paid, "paid-key")]))
    one_by_one = [later.check([entry])[0] for entry in batch]
    assert [m.ref if m else None for m in one_by_one] == ["paid-key", None, "fresh", None]


def re_exports(folder: Path, names: tuple[str, ...]) -> Path:
    """The storefront's copies of the shoot: a CDN's re-encode, a resize, a cropped PNG."""
    folder.mkdir(parents=True)
    for name, how in zip(names, ("q60", "half", "cropped"), strict=False):
        with Image.open(DEMO / name) as image:
            picture = image.convert("RGB")
        stem = Path(name).stem
        if how == "q60":
            picture.save(folder / f"{stem}-web.jpg", quality=60)
        elif how == "half":
            half = picture.resize((picture.width // 2, picture.height // 2))
            half.save(folder / f"{stem}-small.jpg", quality=85)
        else:  # 2 % off the right edge, saved as PNG
            trim = picture.width * 2 // 100
            cropped = picture.crop((0, 0, picture.width - trim, picture.height))
            cropped.save(folder / f"{stem}.png")
    return folder


def shoot(folder: Path) -> Path:
    """The demo's three shots of one layout, and a phone's HEIC of another photo."""
    folder.mkdir(parents=True)
    for name in SHOOT:
        shutil.copy(DEMO / name, folder / name)
    heif_formats()  # registered as the product does: Pillow can then save HEIC
    with Image.open(DEMO / "phone-rotated.jpg") as image:
        image.convert("RGB").save(folder / "IMG_4032.HEIC", quality=90)
    return folder


@pytest.mark.usefixtures("prefect_server")
def test_re_exported_copies_are_planned_as_near_duplicates_and_cost_nothing(
    env: dict[str, str], sandbox: SandboxServer, tmp_path: Path, out_location: str
) -> None:
    out = out_location
    assert run([str(shoot(tmp_path / "shoot"))], [20], out=out).is_completed()
    assert len(sandbox.submissions()) == 4, "one layout in three colours is three pictures"
    first = {row.item: row for row in read_manifest(out)}
    assert first["IMG_4032"].status == "succeeded", first["IMG_4032"]
    paid = {item: row.source_sha256 for item, row in first.items()}

    copies = re_exports(tmp_path / "storefront", SHOOT)
    wide = {**env, "COLUMNS": "200"}
    dry = cli("run", str(copies), "-t", "20", "--out", out, "--dry-run", env=wide)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "plan: 0 tasks to submit, up to 0 images; 0 already done; 3 near-duplicates skipped" in (
        dry.stdout
    )
    assert "near-duplicate of denim-jacket (distance" in dry.stdout, dry.stdout

    state = run([str(copies)], [20], out=out)
    assert state.is_completed(), state.message
    assert "3 near-duplicates skipped" in (state.message or "")
    assert len(sandbox.submissions()) == 4, "a re-exported copy was paid for"
    rows = {row.item: row for row in read_manifest(out)}
    for copy, original in (
        ("denim-jacket-web", "denim-jacket"),
        ("studio-red-dress-small", "studio-red-dress"),
        ("square-lookbook-2", "square-lookbook"),  # the PNG took the next free name
    ):
        row = rows[copy]
        assert row.status == "skipped", row
        assert row.reason and row.reason.startswith(f"near-duplicate of {original} (distance ")
        assert row.near_duplicate_of == paid[original]
    store = open_store(out)
    sheet = store.read("index.html").data.decode()
    assert sheet.count("looks like (paid for)") == 3
    assert "the set of denim-jacket, paid for once" in sheet  # its cell shows that set
    original_thumbnail = f"thumbs/{paid['denim-jacket']}.jpg"
    assert (original_thumbnail in sheet) if store.is_local else ("data:image/jpeg" in sheet)

    # The Prefect artifact's summary shows the paid photo where the set would be.
    near = [row for row in read_manifest(out) if row.near_duplicate_of]
    cells = picture_cells(store, near, MARKDOWN_THUMBNAIL)
    assert len(near) == 3 and all(set_cell(row) in cells for row in near)

    allowed = run([str(copies / "denim-jacket-web.jpg")], [20], out=out, allow_near_duplicates=True)
    assert allowed.is_completed(), allowed.message
    assert len(sandbox.submissions()) == 5


def copies_of_the_jacket(folder: Path) -> Path:
    """The jacket three ways, the best source last in the batch's order: half its size
    (fewer pixels), re-encoded at quality 40 (as many pixels, more lost to compression),
    and the original."""
    folder.mkdir(parents=True)
    jacket = DEMO / "denim-jacket.jpg"
    with Image.open(jacket) as image:
        picture = image.convert("RGB")
    picture.resize((picture.width // 2, picture.height // 2)).save(folder / "a-small.jpg")
    picture.save(folder / "b-web.jpg", quality=40)
    shutil.copy(jacket, folder / "c-original.jpg")
    return folder


@pytest.mark.usefixtures("prefect_server")
def test_of_copies_in_one_batch_the_best_source_is_paid_and_the_others_carry_its_set(
    env: dict[str, str], sandbox: SandboxServer, tmp_path: Path, out_location: str
) -> None:
    out = out_location
    folder = copies_of_the_jacket(tmp_path / "in")
    wide = {**env, "COLUMNS": "200"}
    dry = cli("run", str(folder), "-t", "20", "--out", out, "--dry-run", env=wide)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "plan: 1 tasks to submit" in dry.stdout and "2 near-duplicates skipped" in dry.stdout
    assert dry.stdout.count("near-duplicate of c-original") == 2, dry.stdout

    state = run([str(folder)], [20, 21], out=out)
    assert state.is_completed(), state.message
    assert sorted(s["template_id"] for s in sandbox.submissions()) == [20, 21]
    rows = {(row.item, row.template_id): row for row in read_manifest(out)}
    for template_id in (20, 21):
        paid = rows[("c-original", template_id)]
        assert paid.status == "succeeded" and len(paid.outputs) == 4, paid
        for copy in ("a-small", "b-web"):
            row = rows[(copy, template_id)]
            assert row.status == "skipped", row
            assert row.reason and row.reason.startswith("near-duplicate of c-original"), row
            assert row.near_duplicate_of == paid.source_sha256
            assert row.outputs == paid.outputs  # a catalogue import gets images for it too
    csv_rows = list(csv.DictReader(io.StringIO(open_store(out).read("manifest.csv").data.decode())))
    small = next(r for r in csv_rows if r["item"] == "a-small" and r["template_id"] == "20")
    assert small["outputs"] == ";".join(rows[("c-original", 20)].outputs)


def test_a_photo_paid_in_an_earlier_run_stays_paid_when_a_better_copy_comes(
    env: dict[str, str],
    sandbox: SandboxServer,
    tmp_path: Path,
    out_location: str,
    engine: EngineRunner,
) -> None:
    out = out_location
    folder = copies_of_the_jacket(tmp_path / "in")
    assert engine([str(folder / "a-small.jpg")], [20], out=out).completed
    assert engine([str(folder / "c-original.jpg")], [20], out=out).completed
    assert len(sandbox.submissions()) == 1, "a better copy was paid for again"
    rows = {row.item: row for row in read_manifest(out)}
    original = rows["c-original"]
    assert original.reason and original.reason.startswith("near-duplicate of a-small")
    assert original.outputs == rows["a-small"].outputs and len(original.outputs) == 4

    paying = engine([str(folder / "c-original.jpg")], [20], out=out, allow_near_duplicates=True)
    assert paying.completed, paying.message
    assert len(sandbox.submissions()) == 2


def with_logo(source: Path) -> bytes:
    """The same shot of another product: a logo printed on the jacket's chest."""
    with Image.open(source) as image:
        product = image.convert("RGB")
    width, height = product.size
    chest = (int(width * 0.45), int(height * 0.5), int(width * 0.55), int(height * 0.56))
    ImageDraw.Draw(product).rectangle(chest, (235, 235, 230))
    buffer = io.BytesIO()
    product.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def test_another_product_shot_alike_is_paid_in_the_same_batch_and_in_a_later_run(
    env: dict[str, str], sandbox: SandboxServer, tmp_path: Path, engine: EngineRunner
) -> None:
    jacket = DEMO / "denim-jacket.jpg"
    variant = with_logo(jacket)
    with Image.open(jacket) as plain, Image.open(io.BytesIO(variant)) as other:
        # The case the look alone gets wrong: the two share it.
        looks = [look_of(picture.resize((240, 320))) for picture in (plain, other)]
    assert looks[0].distance(looks[1]) is not None
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(jacket, folder / "a-plain.jpg")
    (folder / "b-logo.jpg").write_bytes(variant)
    out = tmp_path / "out"
    assert engine([str(folder)], [20], out=str(out)).completed
    later = tmp_path / "later"
    later.mkdir()
    (later / "c-logo-again.webp").write_bytes(as_webp(variant))
    (later / "d-plain-copy.webp").write_bytes(as_webp(jacket.read_bytes()))
    assert engine([str(later)], [20], out=str(out)).completed
    assert len(sandbox.submissions()) == 2
    rows = {row["item"]: row for row in manifest(out)}
    assert rows["a-plain"]["status"] == rows["b-logo"]["status"] == "succeeded"
    assert rows["c-logo-again"]["reason"].startswith("near-duplicate of b-logo")
    assert rows["d-plain-copy"]["reason"].startswith("near-duplicate of a-plain")


def as_webp(data: bytes) -> bytes:
    """A storefront's re-encoded copy."""
    buffer = io.BytesIO()
    with Image.open(io.BytesIO(data)) as image:
        image.save(buffer, "WEBP", quality=80)
    return buffer.getvalue()
