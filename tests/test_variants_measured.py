"""Products shot alike are told apart from copies, measured on photos of people (issue 31).

A shop shoots every product on the same model, in the same pose and studio: two
products' photos differ only on the garment. Each photo of a person (the demo's, the
corpus's Hopper portrait, and the astronaut of scikit-image's data, a NASA photo in the
public domain, in ``tests/data``) gets product variants drawn onto its garment, and the
copies a catalogue makes. Every copy must be the same picture (its look matches and the
regions confirm it), and no variant may be. ``pytest -s -m slow`` prints the figures that
``docs/images.md`` gives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from modelset.images import prepare_image
from modelset.images.geometry import TOP_BIAS
from modelset.images.looks import Look
from modelset.images.rules import TARGET_RATIO, heif_formats
from modelset.images.sameness import difference, same_picture
from tests.conftest import CORPUS
from tests.test_looks_measured import DEMO, copies, encoded, upright

DATA = Path(__file__).resolve().parent / "data"
Box = tuple[float, float, float, float]
# Where each photo's garment is, as shares of the prepared (3:4) picture.
GARMENTS: dict[Path, Box] = {
    DATA / "astronaut.jpg": (0.05, 0.55, 0.7, 0.95),
    CORPUS / "hopper.jpg": (0.1, 0.78, 0.9, 1.0),
    DEMO / "denim-jacket.jpg": (0.3, 0.45, 0.7, 0.75),
    DEMO / "landscape-shoot.jpg": (0.3, 0.45, 0.7, 0.75),
    DEMO / "phone-rotated.jpg": (0.3, 0.45, 0.7, 0.75),
    DEMO / "phone-teal-coat.heic": (0.22, 0.35, 0.55, 0.65),
    DEMO / "square-lookbook.jpg": (0.3, 0.45, 0.7, 0.75),
    DEMO / "studio-red-dress.jpg": (0.3, 0.45, 0.7, 0.75),
}
LOGO_SIZES = (0.3, 0.2, 0.14, 0.1, 0.07, 0.05)
"""Sides of a square logo, as shares of the garment's width: the smallest told apart."""

# Measurements over hundreds of pictures (about 20 s of CPU): `make test-slow` runs them.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not found at {CORPUS}"),
]


def garment_box(picture: Image.Image, shares: Box) -> tuple[int, int, int, int]:
    """The garment in the source's pixels: the shares of the part preparation keeps."""
    width, height = picture.size
    if width / height > TARGET_RATIO:
        kept_w, kept_h = height * TARGET_RATIO, float(height)
        left, top = (width - kept_w) / 2, 0.0
    else:
        kept_w, kept_h = float(width), width / TARGET_RATIO
        left, top = 0.0, (height - kept_h) * TOP_BIAS
    x0, y0, x1, y1 = shares
    return (
        round(left + x0 * kept_w),
        round(top + y0 * kept_h),
        round(left + x1 * kept_w),
        round(top + y1 * kept_h),
    )


def garment_mask(picture: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """The pixels of the box close to its median colour: the garment's own."""
    pixels = np.asarray(picture, dtype=np.int16)
    x0, y0, x1, y1 = box
    median = np.median(pixels[y0:y1, x0:x1].reshape(-1, 3), axis=0)
    close = np.abs(pixels - median).max(axis=2) <= 40
    inside = np.zeros(close.shape, dtype=bool)
    inside[y0:y1, x0:x1] = True
    return Image.fromarray(((close & inside) * 255).astype(np.uint8), "L")


def _thread(picture: Image.Image, box: tuple[int, int, int, int]) -> tuple[int, int, int]:
    """A colour that shows on the garment: light on a dark one, dark on a light one."""
    x0, y0, x1, y1 = box
    garment = float(np.asarray(picture)[y0:y1, x0:x1].mean())
    return (235, 235, 230) if garment < 128 else (40, 40, 45)


def _overlay(picture: Image.Image, draw: Callable[[ImageDraw.ImageDraw], None]) -> Image.Image:
    changed = picture.copy()
    draw(ImageDraw.Draw(changed))
    return changed


def _recoloured(picture: Image.Image, mask: Image.Image, hue_turn: int) -> Image.Image:
    """The masked pixels with their hue turned, and some colour given to a grey one."""
    hue, saturation, value = picture.convert("HSV").split()
    hue = hue.point(lambda h: (h + hue_turn) % 256)
    saturation = saturation.point(lambda s: max(s, 150))
    value = value.point(lambda v: min(220, max(60, v)))
    turned = Image.merge("HSV", (hue, saturation, value)).convert("RGB")
    return Image.composite(turned, picture, mask)


def _toned(picture: Image.Image, mask: Image.Image, towards: int, share: float) -> Image.Image:
    """The masked pixels moved ``share`` of the way towards black (0) or white (255)."""
    toned = Image.blend(picture, Image.new("RGB", picture.size, (towards,) * 3), share)
    return Image.composite(toned, picture, mask)


def variants(picture: Image.Image, shares: Box) -> Iterator[tuple[str, Image.Image]]:
    """At least eight products of the same shot, each drawn onto the garment."""
    box = garment_box(picture, shares)
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    mask = garment_mask(picture, box)
    cx = (x0 + x1) // 2
    thread = _thread(picture, box)

    def logo(draw: ImageDraw.ImageDraw) -> None:
        badge = (cx - w * 0.18, y0 + h * 0.15, cx + w * 0.18, y0 + h * 0.4)
        draw.ellipse(badge, fill=thread)
        draw.text((cx - w * 0.08, y0 + h * 0.24), "LOGO", fill=(200, 20, 30))

    yield "logo", _overlay(picture, logo)

    def stripes(draw: ImageDraw.ImageDraw) -> None:
        step = max(2, h // 12)
        for top in range(y0, y1, 2 * step):
            draw.rectangle((x0, top, x1, top + step - 1), fill=thread)

    yield "stripes", Image.composite(_overlay(picture, stripes), picture, mask)

    def checks(draw: ImageDraw.ImageDraw) -> None:
        cell = max(2, w // 8)
        for row, top in enumerate(range(y0, y1, cell)):
            for column, left in enumerate(range(x0, x1, cell)):
                if (row + column) % 2:
                    draw.rectangle((left, top, left + cell - 1, top + cell - 1), fill=thread)

    yield "checks", Image.composite(_overlay(picture, checks), picture, mask)

    def belt(draw: ImageDraw.ImageDraw) -> None:
        top = y0 + h * 0.7
        draw.rectangle((x0, top, x1, top + max(2, h * 0.07)), fill=(90, 55, 25))
        buckle = (cx - w * 0.05, top - 1, cx + w * 0.05, top + max(3, h * 0.07) + 1)
        draw.rectangle(buckle, outline=(220, 190, 60), width=max(1, w // 60))

    yield "belt", _overlay(picture, belt)

    def pocket(draw: ImageDraw.ImageDraw) -> None:
        left, top = x0 + w * 0.6, y0 + h * 0.15
        outline = (left, top, left + w * 0.22, top + h * 0.2)
        draw.rectangle(outline, outline=thread, width=max(1, w // 50))

    yield "pocket", _overlay(picture, pocket)
    left_half = Image.new("L", picture.size, 0)
    ImageDraw.Draw(left_half).rectangle((x0, y0, cx, y1), fill=255)
    half_mask = Image.fromarray(np.minimum(np.asarray(mask), np.asarray(left_half)), "L")
    yield "one side recoloured", _recoloured(picture, half_mask, 85)
    yield "darker garment", _toned(picture, mask, 0, 0.3)
    yield "lighter garment", _toned(picture, mask, 255, 0.35)


def logos(picture: Image.Image, shares: Box) -> Iterator[Image.Image]:
    """A plain logo, smaller and smaller, on the chest."""
    x0, y0, x1, y1 = garment_box(picture, shares)
    w, h = x1 - x0, y1 - y0
    cx, top = (x0 + x1) / 2, y0 + h * 0.2
    thread = _thread(picture, (x0, y0, x1, y1))
    for size in LOGO_SIZES:
        side = max(1.0, w * size)
        changed = picture.copy()
        ImageDraw.Draw(changed).rectangle((cx - side / 2, top, cx + side / 2, top + side), thread)
        yield changed


def prepared(data: bytes, scratch: Path) -> tuple[Look, Image.Image]:
    """The product's look of a file, and its preview."""
    source = scratch / "source"
    source.write_bytes(data)
    upload = prepare_image(source, scratch / "upload.jpg", thumbnail=scratch / "preview.jpg")
    with Image.open(scratch / "preview.jpg") as preview:
        return Look.parse(upload.look), preview.convert("RGB")


def change(original: Image.Image, variant: Image.Image) -> tuple[float, float]:
    """The percent of the prepared picture a variant changed, and by how much on average
    there (0-255, the largest channel's)."""
    moved = np.abs(np.asarray(original, np.int16) - np.asarray(variant, np.int16)).max(axis=2)
    changed = moved > 8
    width, height = original.size
    kept = min(width, height * TARGET_RATIO) * min(height, width / TARGET_RATIO)
    if not changed.any():
        return 0.0, 0.0
    return 100 * float(changed.sum()) / kept, float(moved[changed].mean())


def the_same(one: tuple[Look, Image.Image], other: tuple[Look, Image.Image]) -> bool:
    """What planning decides: the looks match, and the regions confirm it."""
    return one[0].distance(other[0]) is not None and same_picture(one[1], other[1])


def test_product_variants_are_told_apart_and_copies_are_not(tmp_path: Path) -> None:
    heif_formats()  # the demo's HEIC photo is read as the product reads it
    found, missed, invisible = 0, [], []
    told, taken = 0, []
    copy_scores, variant_scores = [], []
    smallest_told = 100.0
    for path, shares in GARMENTS.items():
        picture = upright(path)
        original = prepared(encoded(picture, "JPEG", quality=92), tmp_path)
        for how, data in copies(picture):
            copy = prepared(data, tmp_path)
            copy_scores.append(difference(original[1], copy[1]))
            if the_same(original, copy):
                found += 1
            else:
                missed.append(f"{path.name}: {how} ({copy_scores[-1]:.1f})")
        for how, variant in variants(picture, shares):
            share, strength = change(picture, variant)
            if strength < 12:  # a black garment made darker is the same garment to the eye
                invisible.append(f"{path.name}: {how}")
                continue
            other = prepared(encoded(variant, "JPEG", quality=92), tmp_path)
            variant_scores.append(difference(original[1], other[1]))
            if the_same(original, other):
                taken.append(f"{path.name}: {how} ({share:.2f} %, {variant_scores[-1]:.1f})")
            else:
                told += 1
        for variant in logos(picture, shares):
            share, _ = change(picture, variant)
            if not the_same(original, prepared(encoded(variant, "JPEG", quality=92), tmp_path)):
                smallest_told = min(smallest_told, share)
    print(
        f"\n{len(GARMENTS)} photos of people; copies found: {found} of {len(copy_scores)} "
        f"(largest difference {max(copy_scores):.1f}), missed: {missed}; "
        f"product variants: {told + len(taken)}, taken for copies: {len(taken)} {taken} "
        f"(smallest difference {min(variant_scores):.1f}); left out as invisible: {invisible}; "
        f"smallest logo told apart: {smallest_told:.2f} % of the photo"
    )
    assert missed == []
    assert taken == []
