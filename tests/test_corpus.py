"""The real-world corpus (../shared/corpus/images): every file is handled, none crashes.

Each file either becomes a valid upload (3:4, long side <= 2048, upright, decodable,
no EXIF/GPS) or is refused with a one-line reason. What happens to each known file
is recorded below, after looking at each one, so that a change in behaviour fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageOps, ImageStat

from modelset.images import (
    ASPECT_TOLERANCE,
    MAX_LONG_SIDE,
    Fit,
    ImageRejected,
    Policy,
    PreparedImage,
    prepare_image,
)

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "images"

if not CORPUS.is_dir():
    pytest.skip(f"corpus not found at {CORPUS}", allow_module_level=True)

pytestmark = pytest.mark.corpus


@dataclass(frozen=True)
class Upload:
    """prepare_image(FIX, CROP) succeeds with this output size."""

    size: tuple[int, int]
    upright_check: bool = False
    """Compare with Pillow's own exif_transpose (only where colours are plain RGB)."""


@dataclass(frozen=True)
class Rejected:
    """prepare_image(FIX) raises ImageRejected with exactly this reason."""

    reason: str


Expectation = Upload | Rejected

EXPECTED: dict[str, Expectation] = {
    "16bit.cropped.tif": Upload((48, 64)),
    "1_trns.png": Upload((48, 64)),
    "broken.png": Rejected("corrupt image: PNG signature but the header is unreadable"),
    "broken_data_stream.png": Rejected("corrupt image: broken PNG data stream"),
    "chi.gif": Upload((180, 240)),
    "decompression_bomb.gif": Rejected(
        "decompression bomb: frame 1 declares 65535x66601 = 4365 Mpx exceeds the 100 Mpx limit"
    ),
    "decompression_bomb_extents.gif": Rejected(
        "decompression bomb: frame 2 declares 65635x65635 = 4308 Mpx exceeds the 100 Mpx limit"
    ),
    "exif_gps.jpg": Rejected("unsupported: 8x8 px is too small (minimum 64 px on the short side)"),
    "exif_imagemagick_orientation.png": Upload((384, 512), upright_check=True),
    "flower.webp": Upload((270, 360), upright_check=True),
    "flower2.jpg": Upload((169, 225), upright_check=True),
    "hopper.jpg": Upload((96, 128), upright_check=True),
    "hopper_16bit_qtables.jpg": Upload((96, 128), upright_check=True),
    "hopper_bad_exif.jpg": Upload((375, 500), upright_check=True),
    "hopper_gray.jpg": Upload((96, 128), upright_check=True),
    "hopper_orientation_2.jpg": Upload((96, 128), upright_check=True),
    "hopper_orientation_3.jpg": Upload((96, 128), upright_check=True),
    "hopper_orientation_6.jpg": Upload((96, 128), upright_check=True),
    "hopper_orientation_8.jpg": Upload((96, 128), upright_check=True),
    "icc_profile_big.jpg": Upload((188, 250)),
    "invalid-exif.jpg": Upload((150, 200), upright_check=True),
    "junk_jpeg_header.jpg": Upload((576, 768), upright_check=True),
    "orientation_rectangle.jpg": Rejected(
        "unsupported: 2x1 px is too small (minimum 64 px on the short side)"
    ),
    "pil_sample_cmyk.jpg": Upload((75, 100), upright_check=True),
    "sugarshack_bad_mpo_header.jpg": Upload((360, 480), upright_check=True),
    "truncated_jpeg.jpg": Rejected("corrupt image: truncated JPEG data"),
    # 1512x2688 declared, but the file stops after 48 kB of pixel data.
    "ultrahdr.jpg": Rejected("corrupt image: truncated JPEG data"),
}


def _case(path: Path) -> object:
    expectation = EXPECTED.get(path.name)
    kind = {Upload: "upload", Rejected: "rejected"}.get(type(expectation), "unlisted")
    return pytest.param(path, expectation, id=f"{kind}:{path.name}")


FILES = sorted(p for p in CORPUS.iterdir() if p.is_file())


def attempt(source: Path, dest: Path, **options: Any) -> PreparedImage | ImageRejected:
    try:
        return prepare_image(source, dest, **options)
    except ImageRejected as exc:
        return exc


def assert_clear_rejection(exc: ImageRejected, dest: Path) -> None:
    assert exc.reason
    assert str(exc) == exc.reason
    assert "\n" not in exc.reason
    assert not dest.exists()


def assert_contract(prepared: PreparedImage) -> Image.Image:
    with Image.open(prepared.path) as out:
        assert out.format == prepared.format
        assert abs(out.width / out.height - 3 / 4) <= ASPECT_TOLERANCE
        assert max(out.size) <= MAX_LONG_SIDE
        assert not out.getexif()
        assert "exif" not in out.info
        assert "xmp" not in out.info
        out.load()
        return out.convert("RGB")


def reference(source: Path, size: tuple[int, int]) -> Image.Image:
    """Pillow's own upright version, cropped by the documented rule, at ``size``."""
    with Image.open(source) as im:
        upright = ImageOps.exif_transpose(im).convert("RGB")
    w, h = upright.size
    if w / h > 0.75:
        kept = round(h * 0.75)
        left = (w - kept) // 2
        upright = upright.crop((left, 0, left + kept, h))
    else:
        kept = round(w / 0.75)
        top = round((h - kept) * 0.1)
        upright = upright.crop((0, top, w, top + kept))
    return upright.resize(size, Image.Resampling.LANCZOS)


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("source", "expected"), [_case(p) for p in FILES])
def test_fix_handles_every_file(tmp_path: Path, source: Path, expected: Expectation | None) -> None:
    dest = tmp_path / "upload.jpg"
    result = attempt(source, dest)
    if isinstance(result, ImageRejected):
        assert_clear_rejection(result, dest)
        if expected is not None:
            assert isinstance(expected, Rejected), f"unexpectedly rejected: {result.reason}"
            assert result.reason == expected.reason
        return
    out = assert_contract(result)
    assert result.format == "JPEG"
    if expected is None:
        return
    assert isinstance(expected, Upload), "expected a rejection, got an upload"
    assert out.size == expected.size
    if expected.upright_check:
        assert mean_difference(out, reference(source, out.size)) < 8


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("source", "expected"), [_case(p) for p in FILES])
def test_pad_and_strict_never_crash(
    tmp_path: Path, source: Path, expected: Expectation | None
) -> None:
    variants: tuple[dict[str, Any], ...] = ({"fit": Fit.PAD}, {"policy": Policy.STRICT})
    for index, options in enumerate(variants):
        dest = tmp_path / f"upload-{index}"
        result = attempt(source, dest, **options)
        if isinstance(result, ImageRejected):
            assert_clear_rejection(result, dest)
            continue
        assert_contract(result)
        assert not isinstance(expected, Rejected), f"{options} accepted a file FIX refuses"


@pytest.mark.timeout(20)
def test_orientation_variants_all_look_like_the_upright_original(tmp_path: Path) -> None:
    base = assert_contract(prepare_image(CORPUS / "hopper.jpg", tmp_path / "base.jpg"))
    for orientation in (2, 3, 6, 8):
        source = CORPUS / f"hopper_orientation_{orientation}.jpg"
        out = assert_contract(prepare_image(source, tmp_path / f"{orientation}.jpg"))
        assert out.size == base.size
        assert mean_difference(out, base) < 8, f"orientation {orientation}"


@pytest.mark.timeout(20)
def test_strict_refuses_the_whole_corpus_with_reasons(tmp_path: Path) -> None:
    # No file in the corpus is already 3:4, so STRICT must not send any of them.
    for source in FILES:
        with pytest.raises(ImageRejected) as info:
            prepare_image(source, tmp_path / "never-written", policy=Policy.STRICT)
        assert info.value.reason, source.name
    assert not (tmp_path / "never-written").exists()


def test_every_recorded_expectation_has_its_file() -> None:
    missing = sorted(set(EXPECTED) - {p.name for p in FILES})
    assert not missing
