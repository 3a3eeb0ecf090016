"""How well looks find near-duplicates, measured on real photos (issue 22, item 3).

Every decodable photo of the corpus and the demo is re-saved the ways a catalogue's
copies are made (JPEG quality 60 and 95, half size, metadata stripped, PNG, WebP, 2 %
cropped off each edge in turn): each copy must be found. Every pair of distinct pictures,
and mirrored and recoloured versions a team wants generated separately, must not be.
``pytest -s -m slow`` prints the figures that ``docs/images.md`` gives.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageOps, ImageStat

from modelset.images import ImageRejected, prepare_image
from modelset.images.colour import resamplable, to_srgb
from modelset.images.looks import MAX_SHAPE_DISTANCE, Look
from modelset.images.prepare import THUMBNAIL_SIZE
from modelset.images.sameness import same_picture
from tests.conftest import CORPUS

DEMO = Path(__file__).resolve().parents[1] / "modelset" / "demo" / "photos"
# Test patterns, not photographs: a 64 px 16-bit tile and a moiré of fine stripes,
# whose low frequencies a 2 % crop or a JPEG at quality 60 changes completely.
PATTERNS = frozenset({"16bit.cropped.tif", "exif_imagemagick_orientation.png"})
# The corpus's Hopper files are one picture in other orientations and encodings.
ONE_PICTURE = frozenset(
    {
        "hopper.jpg",
        "hopper_16bit_qtables.jpg",
        "hopper_orientation_2.jpg",
        "hopper_orientation_3.jpg",
        "hopper_orientation_6.jpg",
        "hopper_orientation_8.jpg",
    }
)

# Measurements over hundreds of pictures (about 20 s of CPU): `make test-slow` runs them.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not found at {CORPUS}"),
]


def upright(path: Path) -> Image.Image:
    """The photo as a viewer shows it, in sRGB, the way the product decodes it."""
    with Image.open(path) as image:
        profile = image.info.get("icc_profile")
        turned = ImageOps.exif_transpose(image)
        picture = to_srgb(resamplable(turned), profile if isinstance(profile, bytes) else None)
    picture.info = {}
    return picture


def encoded(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def copies(image: Image.Image) -> Iterator[tuple[str, bytes]]:
    width, height = image.size
    yield "quality 60", encoded(image, "JPEG", quality=60)
    yield "quality 95", encoded(image, "JPEG", quality=95)
    yield "half size", encoded(image.resize((width // 2, height // 2)), "JPEG", quality=90)
    yield "metadata stripped", encoded(image, "JPEG", quality=92)
    yield "PNG", encoded(image, "PNG")
    yield "WebP", encoded(image, "WEBP", quality=80)
    for edge in ("left", "right", "top", "bottom"):
        dx, dy = max(1, width * 2 // 100), max(1, height * 2 // 100)
        box = {
            "left": (dx, 0, width, height),
            "right": (0, 0, width - dx, height),
            "top": (0, dy, width, height),
            "bottom": (0, 0, width, height - dy),
        }[edge]
        yield f"2 % off the {edge}", encoded(image.crop(box), "JPEG", quality=92)


def other_pictures(image: Image.Image) -> Iterator[tuple[str, bytes]]:
    yield "mirrored", encoded(ImageOps.mirror(image), "JPEG", quality=92)
    yield "upside down", encoded(ImageOps.flip(image), "JPEG", quality=92)
    hsv = image.convert("HSV")
    for degrees in (60, 120, 180):
        hue, saturation, value = hsv.split()
        turned = hue.point(lambda h, d=degrees: (h + d * 256 // 360) % 256)
        recoloured = Image.merge("HSV", (turned, saturation, value)).convert("RGB")
        yield f"hue turned {degrees}", encoded(recoloured, "JPEG", quality=92)
    red, green, blue = image.split()
    yield "channels swapped", encoded(Image.merge("RGB", (blue, green, red)), "JPEG", quality=92)
    middle = (image.width // 4, image.height // 3, 3 * image.width // 4, 2 * image.height // 3)
    for name, colour in (
        ("garment tinted red", (220, 30, 30)),
        ("garment tinted blue", (30, 60, 220)),
    ):
        tinted = image.copy()
        region = tinted.crop(middle)
        tinted.paste(Image.blend(region, Image.new("RGB", region.size, colour), 0.6), middle[:2])
        yield name, encoded(tinted, "JPEG", quality=92)
    yield "black and white", encoded(image.convert("L"), "JPEG", quality=92)


def look_and_pixels(data: bytes, scratch: Path) -> tuple[Look, Image.Image] | None:
    """The product's look of a file, and its preview; None if it is refused."""
    source = scratch / "source"
    source.write_bytes(data)
    try:
        prepared = prepare_image(source, scratch / "upload.jpg", thumbnail=scratch / "preview.jpg")
    except ImageRejected:
        return None
    with Image.open(scratch / "preview.jpg") as preview:
        return Look.parse(prepared.look), preview.convert("RGB")


def tiny(*photos: tuple[Look, Image.Image]) -> bool:
    """Whether a photo is prepared smaller than its preview (under 240x320 px): its regions
    are a few pixels, which JPEG's blocks and a resize change as much as a print."""
    return any(preview.width < THUMBNAIL_SIZE[0] for _, preview in photos)


def same(one: tuple[Look, Image.Image], other: tuple[Look, Image.Image]) -> bool:
    """What planning decides: the looks match, and the regions confirm it."""
    return one[0].distance(other[0]) is not None and same_picture(one[1], other[1])


def visibly_different(a: Image.Image, b: Image.Image) -> bool:
    """Whether two prepared pictures differ at all to the eye (a hue turned on a grey
    photo, or a symmetric picture mirrored, is the same picture)."""
    size = (32, 32)
    a, b = (p.resize(size, Image.Resampling.BOX) for p in (a, b))
    difference = ImageChops.difference(a, b).convert("L")
    return ImageStat.Stat(difference).mean[0] >= 4


def test_copies_are_found_and_other_pictures_are_not(tmp_path: Path) -> None:
    # The demo's storefront copy is a copy of one of its photos, not another picture.
    demo = [path for path in DEMO.iterdir() if not path.name.startswith("storefront-")]
    sources = sorted(demo) + sorted(CORPUS.iterdir())
    originals: dict[str, tuple[Look, Image.Image]] = {}
    for path in sources:
        found = look_and_pixels(path.read_bytes(), tmp_path)
        if found is not None:
            originals[path.name] = found
    found_copies, missed, patterns_missed, false_positives, negatives = 0, [], [], [], 0
    tiny_missed: list[str] = []
    farthest = shape_alone = 0
    for name, (look, pixels) in originals.items():
        picture = upright((DEMO if (DEMO / name).exists() else CORPUS) / name)
        for how, data in copies(picture):
            copy = look_and_pixels(data, tmp_path)
            if copy is None:
                continue  # refused like any photo under 64 px
            if (distance := look.distance(copy[0])) is not None and same(originals[name], copy):
                found_copies += 1
                farthest = max(farthest, distance)
            elif name in PATTERNS:
                patterns_missed.append(f"{name}: {how}")
            elif tiny(originals[name], copy):
                tiny_missed.append(f"{name}: {how}")
            else:
                missed.append(f"{name}: {how} ({(look.shape ^ copy[0].shape).bit_count()} bits)")
        for how, data in other_pictures(picture):
            other = look_and_pixels(data, tmp_path)
            if other is None or not visibly_different(pixels, other[1]):
                continue
            negatives += 1
            shape_alone += (look.shape ^ other[0].shape).bit_count() <= MAX_SHAPE_DISTANCE
            if same(originals[name], other):
                false_positives.append(f"{name}: {how}")
    for (a, (look_a, preview_a)), (b, (look_b, preview_b)) in itertools.combinations(
        originals.items(), 2
    ):
        alike = same((look_a, preview_a), (look_b, preview_b))
        if a in ONE_PICTURE and b in ONE_PICTURE:
            found_copies += alike
            if not alike and tiny((look_a, preview_a), (look_b, preview_b)):
                tiny_missed.append(f"{a} and {b}")
            elif not alike:
                missed.append(f"{a} and {b}")
            continue
        negatives += 1
        shape_alone += (look_a.shape ^ look_b.shape).bit_count() <= MAX_SHAPE_DISTANCE
        if alike:
            false_positives.append(f"{a} and {b}")
    print(
        f"\n{len(originals)} photos; copies found: {found_copies} (at most {farthest} bits "
        f"apart), missed: {missed}; "
        f"test patterns missed: {patterns_missed}; "
        f"photos under 240 px wide missed: {tiny_missed}; "
        f"other pictures: {negatives}, taken for copies: {false_positives} "
        f"(by the shape alone: {shape_alone})"
    )
    assert missed == []
    assert false_positives == []
