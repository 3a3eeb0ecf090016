"""Every image the product stores says it is AI-generated (issue 33): the IPTC digital
source type and the TC260 AIGC record in its XMP, read back by exiftool; a C2PA manifest
where a key is configured, validated by the c2pa SDK's Reader; a visible label on
published copies where a run asks for one. Runs use the in-process engine and the
sandbox; the bucket is the session's moto server."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageChops
from typer.testing import CliRunner

from modelset.batch import InProcess, run_batch
from modelset.cli import app
from modelset.flows.review import review_from_shell
from modelset.labels import (
    TRAINED_ALGORITHMIC_MEDIA,
    AigcRecord,
    NoFontCovers,
    SigningKeyError,
    find_font,
    write_labels,
)
from modelset.labels.read import check_manifest
from modelset.labels.visible import MIN_HEIGHT
from modelset.options import RunOptions
from modelset.report import ManifestRow, Status, read_manifest
from modelset.sandbox import SandboxServer
from modelset.sandbox.app import RESULTS_PATH
from modelset.sandbox.certificates import throwaway_signing_key
from modelset.sandbox.imagery import render_pose
from modelset.sandbox.store import labelled_as_upstream
from modelset.settings import Settings
from modelset.storage import Store, open_store
from tests.conftest import TOKEN, SandboxFactory, hidream_env, make_photo

AIGC_KEYS = [
    "Label",
    "ContentProducer",
    "ProduceID",
    "ReservedCode1",
    "ContentPropagator",
    "PropagateID",
    "ReservedCode2",
]
SHOP = "shop-7"
CJK_LABEL = "AI生成"


@pytest.fixture(scope="module")
def exiftool() -> str:
    found = shutil.which("exiftool")
    if found is None:
        pytest.skip("exiftool is not installed: apt-get install libimage-exiftool-perl")
    return found


@pytest.fixture(scope="module")
def cjk_font() -> Path:
    try:
        return find_font(CJK_LABEL)
    except NoFontCovers:
        pytest.skip("no installed font draws AI生成: apt-get install fonts-wqy-zenhei")


def read_by_exiftool(exiftool: str, data: bytes) -> dict[str, Any]:
    """What exiftool (someone else's reader) finds in the image's XMP, duplicates kept."""
    done = subprocess.run(
        [exiftool, "-j", "-a", "-G1", "-XMP:all", "-"],
        input=data,
        capture_output=True,
        check=True,
    )
    found: dict[str, Any] = json.loads(done.stdout)[0]
    return found


def aigc_of(exiftool: str, data: bytes) -> dict[str, str]:
    """The image's one AIGC record as exiftool reads it, its keys in the order written."""
    found = read_by_exiftool(exiftool, data)
    assert found["XMP-iptcExt:DigitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    records = [value for key, value in found.items() if key.startswith("XMP-TC260:Aigc")]
    assert len(records) == 1, f"one AIGC record, not {records}"
    record: dict[str, str] = json.loads(records[0])
    assert list(record) == AIGC_KEYS
    assert all(" " <= character <= "~" for character in records[0])
    return record


def pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        return image.tobytes()


def run(sources: list[str], **options: Any) -> None:
    summary = asyncio.run(run_batch(sources, [20], RunOptions(**options), InProcess()))
    assert not summary.failed, summary.message()


def approve_all(out: str, reviewer: str = "ana") -> None:
    done = asyncio.run(
        review_from_shell(
            open_store(out),
            approve=[],
            reject=[],
            approve_all=True,
            note="fine",
            reviewer=reviewer,
            publish_to=None,
        )
    )
    assert done.decided.approved and not done.decided.problems


def succeeded_row(store: Store) -> ManifestRow:
    [row] = read_manifest(store)
    assert row.status is Status.SUCCEEDED and row.task_id and len(row.outputs) == 4
    return row


def downloaded(sandbox: SandboxServer, row: ManifestRow, pose: int) -> bytes:
    """The row's image as the sandbox hands it out."""
    response = httpx.get(f"{sandbox.base_url}/_sandbox/images/{row.task_id}/{pose}.jpg")
    response.raise_for_status()
    return response.content


def sub_task_ids(sandbox: SandboxServer, task_id: str) -> list[str]:
    """The task's sub-task ids, as the results endpoint lists them."""
    response = httpx.get(
        f"{sandbox.base_url}{RESULTS_PATH}",
        params={"task_id": task_id},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    return [sub["sub_task_id"] for sub in response.json()["result"]["sub_task_results"]]


def run_for_shop(
    sandbox: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
    photo: Path,
    out: str,
    **options: Any,
) -> tuple[Store, ManifestRow, list[str]]:
    """Run ``photo`` against ``sandbox`` as the shop SHOP: the output location, the row,
    and the set's sub-task ids."""
    for key, value in hidream_env(sandbox, HIDREAM_AIGC_PROPAGATOR=SHOP).items():
        monkeypatch.setenv(key, value)
    run([str(photo)], out=out, **options)
    store = open_store(out)
    row = succeeded_row(store)
    return store, row, sub_task_ids(sandbox, row.task_id or "")


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    return make_photo(tmp_path / "photos" / "sku-1.jpg")


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP"])
def test_labels_go_into_jpeg_png_and_webp_without_touching_a_pixel(
    exiftool: str, photo: Path, image_format: Any
) -> None:
    generated = render_pose(photo.read_bytes(), 20, 1, image_format)
    ours = AigcRecord(ContentProducer="www.hidreamai.com", ProduceID="sub-1")

    labelled = write_labels(generated, ours)

    assert pixels(labelled) == pixels(generated)
    assert aigc_of(exiftool, labelled) == {
        "Label": "1",
        "ContentProducer": "www.hidreamai.com",
        "ProduceID": "sub-1",
        "ReservedCode1": "",
        "ContentPropagator": "",
        "PropagateID": "",
        "ReservedCode2": "",
    }
    assert write_labels(labelled, ours) == labelled, "labelling twice changes nothing"


def test_an_upstream_label_keeps_its_producer_and_only_empty_propagator_fields_fill(
    exiftool: str, photo: Path
) -> None:
    upstream = labelled_as_upstream(render_pose(photo.read_bytes(), 20, 1), "upstream-cn", "u-1")
    ours = AigcRecord(ContentProducer="ours", ProduceID="o-1", ContentPropagator=SHOP)
    ours = AigcRecord(**{**ours.__dict__, "PropagateID": "req-1"})

    labelled = write_labels(upstream, ours)

    assert aigc_of(exiftool, labelled) == {
        "Label": "1",
        "ContentProducer": "upstream-cn",
        "ProduceID": "u-1",
        "ReservedCode1": "sandbox",
        "ContentPropagator": SHOP,
        "PropagateID": "req-1",
        "ReservedCode2": "",
    }
    other_shop = AigcRecord(ContentPropagator="another-shop", PropagateID="req-2")
    assert write_labels(labelled, other_shop) == labelled, "a filled propagator stays"


def test_a_run_labels_its_outputs_and_the_published_copies_carry_the_visible_label(
    exiftool: str,
    cjk_font: Path,
    sandbox: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
    photo: Path,
    out_location: str,
) -> None:
    store, row, subs = run_for_shop(
        sandbox, monkeypatch, photo, out_location, review=True, visible_label=CJK_LABEL
    )

    for pose, output in enumerate(row.outputs, start=1):
        stored = store.read(output).data
        assert pixels(stored) == pixels(downloaded(sandbox, row, pose))
        assert aigc_of(exiftool, stored) == {
            "Label": "1",
            "ContentProducer": "127.0.0.1",  # the upstream's host: HIDREAM_BASE_URL's
            "ProduceID": subs[pose - 1],
            "ReservedCode1": "",
            "ContentPropagator": SHOP,
            "PropagateID": row.request_id,
            "ReservedCode2": "",
        }

    audit = CliRunner().invoke(app, ["labels", f"{out_location}/{row.outputs[0]}"])
    assert audit.exit_code == 0, audit.output
    assert f"  digital source type: {TRAINED_ALGORITHMIC_MEDIA}" in audit.output.splitlines()

    approve_all(out_location)
    published = open_store(f"{out_location}/published")
    for output in row.outputs:
        stored = store.read(output).data
        copy = published.read(output).data
        assert aigc_of(exiftool, copy) == aigc_of(exiftool, stored)
        assert_label_drawn(stored, copy, corner="bottom-right")


def assert_label_drawn(stored: bytes, copy: bytes, *, corner: str) -> None:
    """The copy differs from the stored image only in a box at ``corner``, at least 5 %
    of the short side high."""
    with Image.open(io.BytesIO(stored)) as before, Image.open(io.BytesIO(copy)) as after:
        changed = ImageChops.difference(before.convert("L"), after.convert("L"))
        box = changed.point(lambda value: 255 if value > 48 else 0).getbbox()
        width, height = before.size
    assert box is not None, "no label was drawn"
    left, top, right, bottom = box
    short = min(width, height)
    assert bottom - top >= MIN_HEIGHT * short
    if corner == "bottom-right":
        assert left > width / 2 and top > height / 2 and right <= width and bottom <= height


def test_a_sandbox_that_labels_its_images_keeps_its_producer_fields_in_png_outputs(
    exiftool: str,
    sandbox_factory: SandboxFactory,
    monkeypatch: pytest.MonkeyPatch,
    photo: Path,
    tmp_path: Path,
) -> None:
    sandbox = sandbox_factory(image_format="PNG", upstream_label="upstream-cn")
    store, row, subs = run_for_shop(sandbox, monkeypatch, photo, str(tmp_path / "out"))

    for pose, output in enumerate(row.outputs, start=1):
        stored = store.read(output).data
        assert stored.startswith(b"\x89PNG"), "a PNG, kept under its .jpg name"
        assert pixels(stored) == pixels(downloaded(sandbox, row, pose))
        assert aigc_of(exiftool, stored) == {
            "Label": "1",
            "ContentProducer": "upstream-cn",
            "ProduceID": subs[pose - 1],
            "ReservedCode1": "sandbox",
            "ContentPropagator": SHOP,
            "PropagateID": row.request_id,
            "ReservedCode2": "",
        }


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return throwaway_signing_key(tmp_path_factory.mktemp("c2pa"))


def test_with_a_signing_key_every_webp_output_and_published_copy_has_a_valid_manifest(
    exiftool: str,
    sandbox_factory: SandboxFactory,
    signing_key: tuple[Path, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    photo: Path,
    tmp_path: Path,
) -> None:
    chain, key, anchor = signing_key
    sandbox = sandbox_factory(image_format="WEBP")
    signing = hidream_env(sandbox, HIDREAM_C2PA_CERT=str(chain), HIDREAM_C2PA_KEY=str(key))
    for name, value in signing.items():
        monkeypatch.setenv(name, value)
    out = str(tmp_path / "out")
    run([str(photo)], out=out, review=True)
    approve_all(out, reviewer="ana")
    store, published = open_store(out), open_store(f"{out}/published")
    row = succeeded_row(store)
    trusted = anchor.read_text()

    for pose, output in enumerate(row.outputs, start=1):
        stored = store.read(output).data
        assert pixels(stored) == pixels(downloaded(sandbox, row, pose))
        aigc_of(exiftool, stored)  # the XMP labels, signed over
        made = check_manifest(stored, trusted)
        assert (made.state, made.failures) == ("Trusted", [])
        [created] = made.actions()
        assert created["action"] == "c2pa.created"
        assert created["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
        assert made.manifest is not None
        [source] = made.manifest["ingredients"]
        assert source["relationship"] == "inputTo"
        generation = made.assertion("com.modelset.generation")
        assert generation is not None
        assert (generation["template_id"], generation["task_id"]) == (20, row.task_id)

        copy = published.read(output).data
        assert pixels(copy) == pixels(stored), "no visible label asked: the pixels stay"
        assert aigc_of(exiftool, copy) == aigc_of(exiftool, stored)
        copied = check_manifest(copy, trusted)
        assert (copied.state, copied.failures) == ("Trusted", [])
        assert [action["action"] for action in copied.actions()] == ["c2pa.opened"]
        review = copied.assertion("com.modelset.review")
        assert review is not None
        assert (review["decision"], review["reviewer"]) == ("approved", "ana")


def test_modelset_labels_reports_what_each_image_carries(
    signing_key: tuple[Path, Path, Path], photo: Path, tmp_path: Path
) -> None:
    from modelset.labels import Generated, Labelling
    from modelset.labels.signing import SigningKey

    chain, key, anchor = signing_key
    generated = render_pose(photo.read_bytes(), 20, 1)
    signing = SigningKey.load(chain.read_bytes(), key.read_bytes())
    signed = Labelling("www.hidreamai.com", SHOP, signing).output(
        generated, Generated("task-1", "req-1", 20), "sub-1"
    )
    plain, labelled = tmp_path / "plain.jpg", tmp_path / "signed.jpg"
    plain.write_bytes(generated)
    labelled.write_bytes(signed)

    done = CliRunner().invoke(app, ["labels", str(labelled), str(plain), "--trust", str(anchor)])

    assert done.exit_code == 1, done.output  # plain.jpg carries no label
    assert done.output.splitlines() == [
        f"{labelled} (image/jpeg)",
        f"  digital source type: {TRAINED_ALGORITHMIC_MEDIA}",
        '  TC260 AIGC: {"Label":"1","ContentProducer":"www.hidreamai.com","ProduceID":"sub-1",'
        '"ReservedCode1":"","ContentPropagator":"shop-7","PropagateID":"req-1",'
        '"ReservedCode2":""}',
        "  C2PA: Trusted (c2pa.created)",
        f"{plain} (image/jpeg)",
        "  digital source type: missing",
        "  TC260 AIGC: missing",
        "  C2PA: none",
    ]


def test_the_doctor_advises_signing_and_shows_the_certificate_expiry(
    signing_key: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelset.doctor import check_signing

    unsigned = asyncio.run(check_signing(Settings()))
    assert (unsigned.ok, unsigned.needed) == (False, False)
    assert "nothing is signed" in unsigned.detail and "HIDREAM_C2PA_KEY" in unsigned.hint

    chain, key, _ = signing_key
    monkeypatch.setenv("HIDREAM_C2PA_CERT", str(chain))
    monkeypatch.setenv("HIDREAM_C2PA_KEY", str(key))
    signed = asyncio.run(check_signing(Settings()))
    expiry = (dt.datetime.now(dt.UTC) + dt.timedelta(days=45)).date()
    assert signed.ok and f"expires {expiry:%Y-%m-%d}" in signed.detail, signed.detail


def test_a_certificate_without_its_key_refuses_the_run_before_anything_is_paid(
    env: dict[str, str],
    sandbox: SandboxServer,
    signing_key: tuple[Path, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    photo: Path,
    tmp_path: Path,
) -> None:
    chain, _, _ = signing_key
    monkeypatch.setenv("HIDREAM_C2PA_CERT", str(chain))
    with pytest.raises(SigningKeyError, match="set HIDREAM_C2PA_KEY too"):
        run([str(photo)], out=str(tmp_path / "out"))
    assert sandbox.submissions() == []


def test_a_visible_label_no_font_draws_is_refused_before_anything_is_paid(
    env: dict[str, str], sandbox: SandboxServer, photo: Path, tmp_path: Path
) -> None:
    unknown = "\U0010fffd"  # a private-use character: no font has it
    with pytest.raises(NoFontCovers, match="HIDREAM_LABEL_FONT"):
        run([str(photo)], out=str(tmp_path / "out"), review=True, visible_label=unknown)
    assert sandbox.submissions() == []


def test_a_producer_that_is_not_printable_ascii_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HIDREAM_AIGC_PRODUCER", "好店")
    with pytest.raises(ValueError, match="printable ASCII"):
        Settings()
