"""Image checking and preparation: behaviour a user of the pipeline can see."""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image, ImageDraw, ImageFile, ImageOps

from modelset.images import (
    ASPECT_TOLERANCE,
    MAX_LONG_SIDE,
    PREPARATION_VERSION,
    Fit,
    ImageCheck,
    ImageRejected,
    Policy,
    PreparedImage,
    inspect_image,
    prepare_image,
)
from modelset.stages import (
    PrepareOptions,
    open_workspace,
    prepare_photo,
    upload_file,
    upload_on_disk,
)

RED = (255, 0, 0)
BLUE = (0, 0, 255)
GREEN = (0, 160, 0)
WHITE = (255, 255, 255)

# Inverse of the transpose each EXIF orientation asks for: stored = INVERSE[o](upright).
INVERSE: dict[int, Image.Transpose | None] = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


# --------------------------------------------------------------------------- helpers


def exif_bytes(orientation: int | None = None, *, gps: bool = False) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "TestCam"
    if gps:
        exif[ExifTags.IFD.GPSInfo] = {
            ExifTags.GPS.GPSLatitudeRef: "N",
            ExifTags.GPS.GPSLatitude: (52.0, 22.0, 1.5),
        }
    return exif.tobytes()


def save(im: Image.Image, path: Path, fmt: str | None = None, **params: Any) -> Path:
    im.save(path, fmt or _format_for(path), **params)
    return path


def _format_for(path: Path) -> str:
    return {".jpg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".webp": "WEBP", ".gif": "GIF"}[
        path.suffix
    ]


def rgb(size: tuple[int, int], colour: tuple[int, int, int] = BLUE) -> Image.Image:
    return Image.new("RGB", size, colour)


def attempt(source: Path, dest: Path, **options: Any) -> PreparedImage | ImageRejected:
    """prepare_image's result, or the ImageRejected it raised."""
    try:
        return prepare_image(source, dest, **options)
    except ImageRejected as exc:
        return exc


def decoded(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return im


def assert_valid_upload(prepared: PreparedImage) -> Image.Image:
    """The contract for everything sent to HiDream, checked on the written file."""
    assert prepared.path.is_file()
    data = prepared.path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == prepared.sha256
    assert len(data) == prepared.size_bytes
    with Image.open(prepared.path) as im:
        assert im.format == prepared.format
        assert im.size == (prepared.width, prepared.height)
        assert abs(im.width / im.height - 3 / 4) <= ASPECT_TOLERANCE
        assert max(im.size) <= MAX_LONG_SIDE
        assert not im.getexif()
        assert "exif" not in im.info
        assert "xmp" not in im.info
        assert "comment" not in im.info
        im.load()
        return im


def assert_fix_upload(prepared: PreparedImage) -> Image.Image:
    im = assert_valid_upload(prepared)
    assert prepared.format == "JPEG"
    assert im.mode == "RGB"
    assert "icc_profile" not in im.info
    assert not prepared.unchanged
    return im


def near(actual: Any, expected: tuple[int, int, int], tolerance: int = 40) -> bool:
    assert isinstance(actual, tuple)
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def png_bytes(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG whose IHDR says width x height; real pixel data only when small."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    if width * height <= 1_000_000:
        row = b"\x00" + bytes(range(256)) * (width * channels * bit_depth // 8 // 256 + 1)
        row = row[: 1 + width * channels * bit_depth // 8]
        idat = zlib.compress(row * height)
    else:
        idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- API


def test_public_constants() -> None:
    assert MAX_LONG_SIDE == 2048
    assert ASPECT_TOLERANCE == 0.01
    assert isinstance(PREPARATION_VERSION, int)
    assert PREPARATION_VERSION >= 1
    assert Policy("fix") is Policy.FIX
    assert Policy("strict") is Policy.STRICT
    assert Fit("crop") is Fit.CROP
    assert Fit("pad") is Fit.PAD


def test_image_rejected_is_its_reason_and_pickles() -> None:
    exc = ImageRejected("corrupt image: truncated JPEG data")
    assert exc.reason == "corrupt image: truncated JPEG data"
    assert str(exc) == exc.reason
    again = pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own object
    assert isinstance(again, ImageRejected)
    assert again.reason == exc.reason


def test_models_are_frozen(tmp_path: Path) -> None:
    src = save(rgb((300, 400)), tmp_path / "a.jpg")
    prepared = prepare_image(src, tmp_path / "out.jpg")
    with pytest.raises(Exception):  # noqa: B017, PT011 - pydantic's frozen error type
        prepared.width = 1  # type: ignore[misc]
    with pytest.raises(Exception):  # noqa: B017, PT011
        prepared.check.width = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_side": 10}, "max_side"),
        ({"quality": 0}, "quality"),
        ({"quality": 101}, "quality"),
        ({"max_pixels": 0}, "max_pixels"),
    ],
)
def test_bad_options_are_programming_errors(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    src = save(rgb((300, 400)), tmp_path / "a.jpg")
    with pytest.raises(ValueError, match=message):
        prepare_image(src, tmp_path / "out.jpg", **kwargs)


def test_policy_and_fit_accept_plain_strings(tmp_path: Path) -> None:
    src = save(rgb((800, 300)), tmp_path / "a.jpg")
    prepared = prepare_image(src, tmp_path / "o.jpg", policy="fix", fit="pad")  # type: ignore[arg-type]
    assert_fix_upload(prepared)


# --------------------------------------------------------------------------- inspect


def test_inspect_valid_jpeg_is_sendable(tmp_path: Path) -> None:
    check = inspect_image(save(rgb((1536, 2048)), tmp_path / "ok.jpg"))
    assert check == ImageCheck(
        format="JPEG",
        mode="RGB",
        width=1536,
        height=2048,
        orientation=None,
        upright_width=1536,
        upright_height=2048,
        ratio=0.75,
        frames=1,
        bits=8,
        has_exif=False,
        has_gps=False,
        has_icc=False,
        has_transparency=False,
        problems=[],
    )
    assert check.sendable_as_is


def test_inspect_lists_every_problem(tmp_path: Path) -> None:
    im = Image.new("CMYK", (4000, 3000), (0, 255, 255, 0))
    src = save(im, tmp_path / "bad.tif", exif=exif_bytes(6, gps=True))
    check = inspect_image(src)
    assert check.orientation == 6
    assert (check.upright_width, check.upright_height) == (3000, 4000)
    assert check.ratio == pytest.approx(0.75)
    assert check.problems == [
        "format TIFF is not accepted (JPEG or PNG)",
        "EXIF orientation 6 must be applied",
        "mode CMYK must be RGB",
        "long side 4000 px exceeds 2048",
        "carries GPS metadata",
        "carries EXIF metadata",
    ]
    assert not check.sendable_as_is


def test_inspect_aspect_and_size_problems(tmp_path: Path) -> None:
    check = inspect_image(save(rgb((4000, 3000)), tmp_path / "land.jpg"))
    assert check.problems == [
        "aspect 4:3 (1.333) is not 3:4",
        "long side 4000 px exceeds 2048",
    ]
    odd = inspect_image(save(rgb((1000, 700)), tmp_path / "odd.jpg"))
    assert odd.problems == ["aspect 10:7 (1.429) is not 3:4"]
    ugly = inspect_image(save(rgb((997, 701)), tmp_path / "ugly.jpg"))
    assert ugly.problems == ["aspect 997x701 (1.422) is not 3:4"]


def test_inspect_within_tolerance_is_three_by_four(tmp_path: Path) -> None:
    # 0.7575: within 0.01 of 0.75
    assert inspect_image(save(rgb((303, 400)), tmp_path / "a.jpg")).problems == []
    # 0.7625: outside
    assert inspect_image(save(rgb((305, 400)), tmp_path / "b.jpg")).problems == [
        "aspect 305x400 (0.762) is not 3:4"
    ]


@pytest.mark.parametrize(
    ("mode", "suffix", "problems"),
    [
        ("RGBA", ".png", ["mode RGBA must be RGB"]),
        ("LA", ".png", ["mode LA must be RGB"]),
        ("P", ".png", ["mode P must be RGB"]),
        ("1", ".png", ["mode 1 must be RGB"]),
        ("L", ".png", []),
        ("L", ".jpg", []),
        ("I;16", ".png", ["16-bit samples must be 8-bit"]),
        ("CMYK", ".jpg", ["mode CMYK must be RGB"]),
        ("RGB", ".webp", ["format WEBP is not accepted (JPEG or PNG)"]),
        ("RGB", ".gif", ["format GIF is not accepted (JPEG or PNG)", "mode P must be RGB"]),
    ],
)
def test_inspect_mode_problems(tmp_path: Path, mode: str, suffix: str, problems: list[str]) -> None:
    src = save(Image.new(mode, (300, 400)), tmp_path / f"m{suffix}")
    assert inspect_image(src).problems == problems


def test_inspect_png_transparency_key_on_rgb(tmp_path: Path) -> None:
    src = save(rgb((300, 400)), tmp_path / "key.png", transparency=BLUE)
    check = inspect_image(src)
    assert check.has_transparency
    assert check.problems == ["transparency must be flattened"]


def test_inspect_16_bit_rgb_png(tmp_path: Path) -> None:
    src = tmp_path / "deep.png"
    src.write_bytes(png_bytes(300, 400, bit_depth=16, colour_type=2))
    check = inspect_image(src)
    assert check.mode == "RGB"
    assert check.bits == 16
    assert check.problems == ["16-bit samples must be 8-bit"]
    assert_fix_upload(prepare_image(src, tmp_path / "out.jpg"))


def test_inspect_gps_and_exif(tmp_path: Path) -> None:
    src = save(rgb((300, 400)), tmp_path / "gps.jpg", exif=exif_bytes(1, gps=True))
    check = inspect_image(src)
    assert (check.has_exif, check.has_gps, check.orientation) == (True, True, 1)
    assert check.problems == ["carries GPS metadata", "carries EXIF metadata"]
    assert check.blocking_problems == []


def test_inspect_gps_in_xmp_only(tmp_path: Path) -> None:
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description '
        b'exif:GPSLatitude="52,22.5N" exif:GPSLongitude="4,53.1E"/></rdf:RDF></x:xmpmeta>'
    )
    src = save(rgb((300, 400)), tmp_path / "xmp.jpg", xmp=xmp)
    check = inspect_image(src)
    assert check.has_gps
    assert not check.has_exif
    prepared = prepare_image(src, tmp_path / "strict.jpg", policy=Policy.STRICT)
    assert not prepared.unchanged
    assert b"GPSLatitude" not in prepared.path.read_bytes()


def test_inspect_animated_gif(tmp_path: Path) -> None:
    frames = [rgb((300, 400), (i * 20, 0, 255 - i * 20)) for i in range(12)]
    src = tmp_path / "anim.gif"
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=50)
    check = inspect_image(src)
    assert check.frames == 12
    assert "animated: first of 12 frames used" in check.problems


def test_inspect_does_not_decode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = [
        save(rgb((4000, 3000)), tmp_path / "a.jpg", exif=exif_bytes(6, gps=True)),
        save(rgb((300, 400)), tmp_path / "b.png", exif=exif_bytes(8)),
        save(Image.new("I;16", (300, 400)), tmp_path / "c.tif"),
        save(rgb((300, 400)), tmp_path / "d.webp"),
    ]

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("inspect_image decoded pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    orientations = [inspect_image(src).orientation for src in sources]
    assert orientations == [6, 8, None, None]


# --------------------------------------------------------------------------- rejections


def test_empty_file(tmp_path: Path) -> None:
    src = tmp_path / "empty.jpg"
    src.write_bytes(b"")
    with pytest.raises(ImageRejected, match=r"^not an image: file is empty$"):
        inspect_image(src)
    with pytest.raises(ImageRejected, match=r"^not an image: file is empty$"):
        prepare_image(src, tmp_path / "out.jpg")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"<!DOCTYPE html>\n<html><body>Not found</body></html>", "looks like HTML"),
        (b"  <html><head><title>login</title>", "looks like HTML"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "looks like a PDF document"),
        (b'{"error": "forbidden"}', "looks like JSON"),
        (b"just some notes\nabout the shoot\n", "looks like text"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "corrupt image: HEIF signature"),
        (b"\x00\x01\x02\x03\xfe\xfd" * 50, "not an image: unrecognised format"),
        (b"\x89PNG\r\n\x1a\n" + b"\x13" * 60, "corrupt image: PNG signature"),
    ],
)
def test_not_an_image(tmp_path: Path, content: bytes, reason: str) -> None:
    src = tmp_path / "photo.jpg"
    src.write_bytes(content)
    with pytest.raises(ImageRejected) as info:
        prepare_image(src, tmp_path / "out.jpg")
    assert reason in info.value.reason
    assert "\n" not in info.value.reason
    assert not (tmp_path / "out.jpg").exists()


def test_html_saved_as_jpg_reason_is_exact(tmp_path: Path) -> None:
    src = tmp_path / "photo.jpg"
    src.write_text("<!doctype html><html><body>403 Forbidden</body></html>")
    with pytest.raises(ImageRejected) as info:
        inspect_image(src)
    assert info.value.reason == "not an image: unrecognised format (looks like HTML)"


def test_truncated_jpeg_is_refused_not_grey_filled(tmp_path: Path) -> None:
    noisy = Image.effect_noise((300, 400), 60).convert("RGB")
    whole = save(noisy, tmp_path / "whole.jpg")
    src = tmp_path / "cut.jpg"
    src.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    assert inspect_image(src).problems == []  # the header is fine
    for policy in Policy:
        with pytest.raises(ImageRejected) as info:
            prepare_image(src, tmp_path / "out.jpg", policy=policy)
        assert info.value.reason == "corrupt image: truncated JPEG data"
    assert not (tmp_path / "out.jpg").exists()


def test_corrupt_png_stream(tmp_path: Path) -> None:
    data = bytearray(png_bytes(300, 400))
    idat = data.index(b"IDAT")
    data[idat + 8 : idat + 40] = b"\xff" * 32
    src = tmp_path / "bad.png"
    src.write_bytes(bytes(data))
    with pytest.raises(ImageRejected, match=r"^corrupt image: "):
        prepare_image(src, tmp_path / "out.jpg")


@pytest.mark.parametrize("size", [(1, 1), (63, 500), (500, 63), (10, 10)])
def test_too_small(tmp_path: Path, size: tuple[int, int]) -> None:
    src = save(rgb(size), tmp_path / "tiny.png")
    w, h = size
    with pytest.raises(ImageRejected) as info:
        prepare_image(src, tmp_path / "out.jpg")
    assert info.value.reason == (
        f"unsupported: {w}x{h} px is too small (minimum 64 px on the short side)"
    )


def test_decompression_bomb_png_refused_fast_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "bomb.png"
    src.write_bytes(png_bytes(50_000, 50_000))
    assert src.stat().st_size < 2_000

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("decoded a bomb")

    # Fast because nothing is decoded: the patched load says so, no clock needed.
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    for call in (inspect_image, lambda p: prepare_image(p, tmp_path / "out.jpg")):
        with pytest.raises(ImageRejected) as info:
            call(src)
        assert info.value.reason == (
            "decompression bomb: 50000x50000 = 2500 Mpx exceeds the 100 Mpx limit"
        )


def test_decompression_bomb_jpeg_header(tmp_path: Path) -> None:
    src = save(rgb((300, 400)), tmp_path / "a.jpg", exif=exif_bytes(1))
    data = bytearray(src.read_bytes())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 60_000, 60_000)
    src.write_bytes(bytes(data))
    with pytest.raises(ImageRejected) as info:
        inspect_image(src)
    assert info.value.reason == (
        "decompression bomb: 60000x60000 = 3600 Mpx exceeds the 100 Mpx limit"
    )


def test_max_pixels_is_ours_not_pillows(tmp_path: Path) -> None:
    src = save(rgb((1500, 2000)), tmp_path / "a.png")
    with pytest.raises(ImageRejected) as info:
        prepare_image(src, tmp_path / "out.jpg", max_pixels=1_000_000)
    assert info.value.reason == "decompression bomb: 1500x2000 = 3 Mpx exceeds the 1 Mpx limit"
    assert_fix_upload(prepare_image(src, tmp_path / "out.jpg", max_pixels=3_000_000))


def gif_bytes(screen: tuple[int, int], frames: list[tuple[int, int]]) -> bytes:
    """A GIF whose frame descriptors declare the given sizes (pixel data is a stub)."""
    data = b"GIF89a" + struct.pack("<2H", *screen) + b"\x00\x00\x00"
    for width, height in frames:
        data += b"," + struct.pack("<4H", 0, 0, width, height) + b"\x00"
        data += b"\x02\x02\x44\x01\x00"  # LZW min code size, one sub-block, terminator
    return data + b";"


def test_gif_frame_larger_than_screen_is_a_bomb(tmp_path: Path) -> None:
    src = tmp_path / "anim.gif"
    src.write_bytes(gif_bytes((300, 400), [(300, 400), (60_000, 60_000)]))
    with pytest.raises(ImageRejected) as info:
        inspect_image(src)
    assert info.value.reason == (
        "decompression bomb: frame 2 declares 60000x60000 = 3600 Mpx exceeds the 100 Mpx limit"
    )


_MANDELBROT = Image.effect_mandelbrot((96, 128), (-2.0, -1.2, 1.0, 1.2), 40).convert("RGB")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_damaged_files_never_raise_anything_else(tmp_path: Path, data: st.DataObject) -> None:
    fmt = data.draw(st.sampled_from(["JPEG", "PNG", "GIF", "WEBP", "TIFF"]))
    buffer = io.BytesIO()
    _MANDELBROT.save(buffer, fmt)
    raw = bytearray(buffer.getvalue())
    cut = data.draw(st.integers(8, len(raw)))
    del raw[cut:]
    for _ in range(data.draw(st.integers(0, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    src = tmp_path / f"damaged.{fmt.lower()}"
    src.write_bytes(bytes(raw))
    result = attempt(src, tmp_path / "out.jpg")
    if isinstance(result, ImageRejected):
        assert result.reason
        assert "\n" not in result.reason
    else:
        assert_fix_upload(result)


# --------------------------------------------------------------------------- FIX


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((4000, 3000), (1536, 2048)),
        ((3000, 4000), (1536, 2048)),
        ((1536, 2048), (1536, 2048)),
        ((1537, 2049), (1536, 2048)),
        ((6000, 8000), (1536, 2048)),
        ((2048, 2048), (1536, 2048)),
        ((300, 400), (300, 400)),
        ((303, 400), (303, 400)),  # within tolerance: kept as it is
        ((64, 64), (48, 64)),
        ((5000, 64), (48, 64)),
        ((64, 5000), (64, 85)),
        ((100, 1000), (100, 133)),
        ((1000, 100), (75, 100)),
        ((8000, 600), (450, 600)),
    ],
)
def test_fix_sizes(tmp_path: Path, size: tuple[int, int], expected: tuple[int, int]) -> None:
    src = save(rgb(size), tmp_path / "src.png", compress_level=1)
    prepared = prepare_image(src, tmp_path / "out.jpg")
    assert (prepared.width, prepared.height) == expected
    assert_fix_upload(prepared)


@pytest.mark.parametrize(
    ("mode", "suffix", "colour", "expected"),
    [
        ("RGB", ".jpg", RED, RED),
        ("RGB", ".png", RED, RED),
        ("RGBA", ".png", (255, 0, 0, 255), RED),
        ("RGBA", ".png", (255, 0, 0, 0), WHITE),  # fully transparent -> white
        ("LA", ".png", (0, 0), WHITE),
        ("LA", ".png", (0, 255), (0, 0, 0)),
        ("L", ".png", 128, (128, 128, 128)),
        ("L", ".jpg", 200, (200, 200, 200)),
        ("1", ".png", 1, WHITE),
        ("1", ".png", 0, (0, 0, 0)),
        ("CMYK", ".jpg", (0, 255, 255, 0), RED),
        ("CMYK", ".tif", (255, 0, 255, 0), (0, 255, 0)),
        ("I;16", ".png", 65535, WHITE),
        ("I;16", ".tif", 32896, (128, 128, 128)),
        ("RGB", ".webp", BLUE, BLUE),
    ],
)
def test_fix_modes_become_rgb(
    tmp_path: Path, mode: str, suffix: str, colour: Any, expected: tuple[int, int, int]
) -> None:
    src = save(Image.new(mode, (400, 300), colour), tmp_path / f"src{suffix}")
    im = assert_fix_upload(prepare_image(src, tmp_path / "out.jpg"))
    assert im.size == (225, 300)
    assert near(im.getpixel((im.width // 2, im.height // 2)), expected)


def test_fix_palette_with_transparency_flattens_on_white(tmp_path: Path) -> None:
    im = Image.new("P", (300, 400), 0)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    ImageDraw.Draw(im).rectangle((0, 0, 299, 199), fill=1)
    src = save(im, tmp_path / "p.png", transparency=1)
    out = assert_fix_upload(prepare_image(src, tmp_path / "out.jpg"))
    assert near(out.getpixel((150, 50)), WHITE)  # transparent blue -> white
    assert near(out.getpixel((150, 350)), RED)


def test_fix_cmyk_colours_stay_right(tmp_path: Path) -> None:
    src = save(Image.new("CMYK", (300, 400), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")
    assert inspect_image(src).mode == "CMYK"
    out = assert_fix_upload(prepare_image(src, tmp_path / "out.jpg"))
    r, g, b = out.getpixel((150, 200))  # type: ignore[misc]
    assert r > 200
    assert g < 60
    assert b < 60


def upright_with_marker(size: tuple[int, int]) -> Image.Image:
    """Blue image with a red block at the top-left corner and a green one top-right."""
    im = rgb(size)
    draw = ImageDraw.Draw(im)
    block = min(size) // 5
    draw.rectangle((0, 0, block, block), fill=RED)
    draw.rectangle((size[0] - block - 1, 0, size[0] - 1, block), fill=GREEN)
    return im


def assert_marker_top_left(out: Image.Image) -> None:
    w, h = out.size
    assert near(out.getpixel((3, 3)), RED, 60)
    assert near(out.getpixel((w - 4, 3)), GREEN, 60)
    assert near(out.getpixel((3, h - 4)), BLUE, 60)
    assert near(out.getpixel((w - 4, h - 4)), BLUE, 60)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("upright_size", [(300, 400), (300, 500), (2400, 3600)])
def test_fix_applies_exif_orientation(
    tmp_path: Path, orientation: int, upright_size: tuple[int, int]
) -> None:
    upright = upright_with_marker(upright_size)
    inverse = INVERSE[orientation]
    stored = upright.transpose(inverse) if inverse is not None else upright
    src = save(stored, tmp_path / "o.jpg", exif=exif_bytes(orientation))
    check = inspect_image(src)
    assert check.orientation == orientation
    assert (check.upright_width, check.upright_height) == upright_size
    out = assert_fix_upload(prepare_image(src, tmp_path / "out.jpg"))
    assert_marker_top_left(out)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(
    ("suffix", "params"),
    [
        (".png", {}),
        (".tif", {}),
        (".tif", {"compression": "tiff_lzw"}),
        (".webp", {"lossless": True}),
    ],
)
def test_fix_applies_exif_orientation_in_every_format(
    tmp_path: Path, orientation: int, suffix: str, params: dict[str, Any]
) -> None:
    upright = upright_with_marker((300, 500))
    inverse = INVERSE[orientation]
    stored = upright.transpose(inverse) if inverse is not None else upright
    src = save(stored, tmp_path / f"o{suffix}", exif=exif_bytes(orientation), **params)
    check = inspect_image(src)
    assert check.orientation == orientation
    assert (check.width, check.height) == stored.size
    assert (check.upright_width, check.upright_height) == (300, 500)
    out = assert_fix_upload(prepare_image(src, tmp_path / "out.jpg"))
    assert out.size == (300, 400)
    assert_marker_top_left(out)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_fix_matches_exif_transpose_then_crop(tmp_path: Path, orientation: int) -> None:
    # A lossless source and a pure crop: the result must equal Pillow's reference
    # (exif_transpose, then the top-biased crop) up to JPEG noise.
    pattern = Image.new("RGB", (360, 250))
    draw = ImageDraw.Draw(pattern)
    for i in range(0, 360, 30):
        for j in range(0, 250, 25):
            draw.rectangle((i, j, i + 29, j + 24), fill=(i % 256, j % 256, (i + j) % 256))
    src = save(pattern, tmp_path / "p.png", exif=exif_bytes(orientation))
    with Image.open(src) as im:
        reference = ImageOps.exif_transpose(im)
    w, h = reference.size
    if w / h > 0.75:
        kept = round(h * 0.75)
        left = (w - kept) // 2
        reference = reference.crop((left, 0, left + kept, h))
    else:
        kept = round(w / 0.75)
        top = round((h - kept) * 0.1)
        reference = reference.crop((0, top, w, top + kept))
    out = assert_fix_upload(prepare_image(src, tmp_path / "out.jpg", quality=100))
    assert out.size == reference.size
    diff = [abs(a - b) for a, b in zip(out.tobytes(), reference.tobytes(), strict=True)]
    assert sum(diff) / len(diff) < 3


def test_fix_crop_is_top_biased_for_tall_photos(tmp_path: Path) -> None:
    # 300x1000: the 3:4 window is 300x400 and 600 px must go. A head band at
    # rows 70..119 survives near the top; the feet at the bottom are cut.
    im = rgb((300, 1000))
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 70, 299, 119), fill=RED)  # head
    draw.rectangle((0, 950, 299, 999), fill=GREEN)  # feet
    src = save(im, tmp_path / "tall.png")
    out = assert_fix_upload(prepare_image(src, tmp_path / "out.jpg"))
    assert out.size == (300, 400)
    assert near(out.getpixel((150, 20)), RED)  # rows 60.. are kept: head is at the top
    assert near(out.getpixel((150, 5)), BLUE)  # 60 rows (10% of the excess) cut above
    assert all(not near(out.getpixel((150, y)), GREEN) for y in range(0, 400, 10))


def test_fix_crop_is_centred_for_wide_photos(tmp_path: Path) -> None:
    im = rgb((1000, 400))
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 0, 349, 399), fill=RED)
    draw.rectangle((650, 0, 999, 399), fill=GREEN)
    src = save(im, tmp_path / "wide.png")
    out = assert_fix_upload(prepare_image(src, tmp_path / "out.jpg"))
    assert out.size == (300, 400)
    assert near(out.getpixel((150, 200)), BLUE)
    assert near(out.getpixel((2, 200)), BLUE)
    assert near(out.getpixel((297, 200)), BLUE)


def test_fix_pad_keeps_the_whole_wide_photo(tmp_path: Path) -> None:
    im = rgb((800, 300))
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 0, 9, 299), fill=RED)
    draw.rectangle((790, 0, 799, 299), fill=GREEN)
    src = save(im, tmp_path / "wide.png")
    out = assert_fix_upload(prepare_image(src, tmp_path / "out.jpg", fit=Fit.PAD))
    assert out.size == (800, 1067)
    middle = out.height // 2
    assert near(out.getpixel((3, middle)), RED)
    assert near(out.getpixel((796, middle)), GREEN)
    assert near(out.getpixel((400, middle)), BLUE)
    assert near(out.getpixel((400, 5)), WHITE)
    assert near(out.getpixel((400, out.height - 5)), WHITE)


def test_fix_pad_keeps_the_whole_tall_photo_and_downscales(tmp_path: Path) -> None:
    im = rgb((1000, 4000))
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 0, 999, 99), fill=RED)
    draw.rectangle((0, 3900, 999, 3999), fill=GREEN)
    src = save(im, tmp_path / "tall.png")
    out = assert_fix_upload(prepare_image(src, tmp_path / "out.jpg", fit="pad"))  # type: ignore[arg-type]
    assert out.size == (1536, 2048)
    assert near(out.getpixel((768, 10)), RED)
    assert near(out.getpixel((768, 2040)), GREEN)
    assert near(out.getpixel((5, 1024)), WHITE)
    assert near(out.getpixel((1530, 1024)), WHITE)


def test_fix_strips_all_metadata(tmp_path: Path) -> None:
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = save(
        rgb((3000, 4000)),
        tmp_path / "meta.jpg",
        exif=exif_bytes(1, gps=True),
        icc_profile=srgb,
        comment=b"shot by someone",
        xmp=b"<x:xmpmeta>creator</x:xmpmeta>",
    )
    check = inspect_image(src)
    assert (check.has_exif, check.has_gps, check.has_icc) == (True, True, True)
    prepared = prepare_image(src, tmp_path / "out.jpg")
    assert_fix_upload(prepared)
    raw = prepared.path.read_bytes()
    for marker in (b"Exif\x00\x00", b"TestCam", b"shot by someone", b"creator", b"ICC_PROFILE"):
        assert marker not in raw


def test_fix_first_frame_of_animation(tmp_path: Path) -> None:
    frames = [rgb((300, 400), RED), rgb((300, 400), BLUE)]
    src = tmp_path / "anim.gif"
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=100)
    out = assert_fix_upload(prepare_image(src, tmp_path / "out.jpg"))
    assert near(out.getpixel((150, 200)), RED)


def test_fix_mpo_uses_the_first_picture(tmp_path: Path) -> None:
    src = tmp_path / "stereo.jpg"
    rgb((300, 400), RED).save(src, "MPO", save_all=True, append_images=[rgb((300, 400), BLUE)])
    check = inspect_image(src)
    assert check.format == "MPO"
    assert check.problems == [
        "format MPO is not accepted (JPEG or PNG)",
        "multi-picture MPO: first of 2 images used",
    ]
    out = assert_fix_upload(prepare_image(src, tmp_path / "out.jpg"))
    assert near(out.getpixel((150, 200)), RED)
    with pytest.raises(ImageRejected, match="format MPO"):
        prepare_image(src, tmp_path / "strict.jpg", policy=Policy.STRICT)


def test_fix_big_jpeg_decodes_at_reduced_scale_but_keeps_resolution(tmp_path: Path) -> None:
    src = save(upright_with_marker((6000, 8000)), tmp_path / "big.jpg", quality=80)
    out = assert_fix_upload(prepare_image(src, tmp_path / "out.jpg"))
    assert out.size == (1536, 2048)
    assert_marker_top_left(out)
    small = save(rgb((2000, 2000)), tmp_path / "small.jpg")
    assert prepare_image(small, tmp_path / "out2.jpg").height == 2000


def test_fix_output_is_deterministic_and_quality_applies(tmp_path: Path) -> None:
    src = save(Image.effect_noise((600, 800), 40).convert("RGB"), tmp_path / "n.png")
    first = prepare_image(src, tmp_path / "a.jpg")
    second = prepare_image(src, tmp_path / "b.jpg")
    assert first.sha256 == second.sha256
    low = prepare_image(src, tmp_path / "c.jpg", quality=50)
    assert low.size_bytes < first.size_bytes


def test_fix_smaller_max_side(tmp_path: Path) -> None:
    src = save(rgb((3000, 4000)), tmp_path / "a.jpg")
    prepared = prepare_image(src, tmp_path / "out.jpg", max_side=1000)
    assert (prepared.width, prepared.height) == (750, 1000)
    assert "long side 4000 px exceeds 1000" in prepared.check.problems


# --------------------------------------------------------------------------- STRICT


@pytest.mark.parametrize(
    ("mode", "name"), [("RGB", "ok.jpg"), ("L", "ok.jpg"), ("RGB", "ok.png"), ("L", "ok.png")]
)
def test_strict_copies_valid_files_byte_for_byte(tmp_path: Path, mode: str, name: str) -> None:
    src = save(Image.new(mode, (1536, 2048), 90), tmp_path / name)
    prepared = prepare_image(src, tmp_path / "out", policy=Policy.STRICT)
    assert prepared.unchanged
    assert prepared.path.read_bytes() == src.read_bytes()
    assert prepared.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert prepared.format == _format_for(src)
    assert (prepared.width, prepared.height) == (1536, 2048)
    assert_valid_upload(prepared)


def test_strict_rejects_with_all_reasons(tmp_path: Path) -> None:
    src = save(Image.new("CMYK", (4000, 3000)), tmp_path / "bad.tif", exif=exif_bytes(3, gps=True))
    with pytest.raises(ImageRejected) as info:
        prepare_image(src, tmp_path / "out.jpg", policy=Policy.STRICT)
    assert info.value.reason == "; ".join(
        [
            "format TIFF is not accepted (JPEG or PNG)",
            "EXIF orientation 3 must be applied",
            "mode CMYK must be RGB",
            "aspect 4:3 (1.333) is not 3:4",
            "long side 4000 px exceeds 2048",
        ]
    )
    assert not (tmp_path / "out.jpg").exists()


@pytest.mark.parametrize(
    ("size", "reason"),
    [
        ((2048, 2048), "aspect 1:1 (1.000) is not 3:4"),
        ((1560, 2080), "long side 2080 px exceeds 2048"),
        ((310, 400), "aspect 31:40 (0.775) is not 3:4"),
        ((2400, 2000), "aspect 6:5 (1.200) is not 3:4; long side 2400 px exceeds 2048"),
    ],
)
def test_strict_rejects_geometry(tmp_path: Path, size: tuple[int, int], reason: str) -> None:
    src = save(rgb(size), tmp_path / "a.jpg")
    with pytest.raises(ImageRejected) as info:
        prepare_image(src, tmp_path / "out.jpg", policy=Policy.STRICT)
    assert info.value.reason == reason


def test_strict_rejects_rotated_even_when_upright_is_three_by_four(tmp_path: Path) -> None:
    src = save(rgb((400, 300)), tmp_path / "r.jpg", exif=exif_bytes(6))
    assert inspect_image(src).ratio == 0.75
    with pytest.raises(ImageRejected) as info:
        prepare_image(src, tmp_path / "out.jpg", policy=Policy.STRICT)
    assert info.value.reason == "EXIF orientation 6 must be applied"


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("gps.jpg", {}),
        ("gps.jpg", {"progressive": True}),
        ("gps.jpg", {"comment": b"secret", "xmp": b"<x:xmpmeta>creator</x:xmpmeta>"}),
        ("gps.png", {}),
    ],
)
def test_strict_strips_metadata_without_changing_pixels(
    tmp_path: Path, name: str, params: dict[str, Any]
) -> None:
    pixels = Image.effect_mandelbrot((300, 400), (-2.0, -1.2, 1.0, 1.2), 60).convert("RGB")
    src = save(pixels, tmp_path / name, exif=exif_bytes(1, gps=True), **params)
    prepared = prepare_image(src, tmp_path / "out", policy=Policy.STRICT)
    assert not prepared.unchanged
    assert prepared.format == _format_for(src)
    out = assert_valid_upload(prepared)
    assert out.tobytes() == decoded(src).tobytes()
    raw = prepared.path.read_bytes()
    for marker in (b"Exif", b"TestCam", b"secret", b"creator"):
        assert marker not in raw


def test_strict_drops_data_after_the_image(tmp_path: Path) -> None:
    # Extra pictures appended after the end of the image (MPO-style gain maps,
    # thumbnails with their own EXIF) are not sent.
    src = save(rgb((300, 400)), tmp_path / "a.jpg", exif=exif_bytes(1, gps=True))
    trailer = io.BytesIO()
    rgb((64, 64), RED).save(trailer, "JPEG", exif=exif_bytes(1, gps=True))
    src.write_bytes(src.read_bytes() + trailer.getvalue())
    prepared = prepare_image(src, tmp_path / "out.jpg", policy=Policy.STRICT)
    raw = prepared.path.read_bytes()
    assert raw.count(b"\xff\xd8") == 1
    assert b"Exif" not in raw
    assert_valid_upload(prepared)


def test_strict_keeps_icc_profile_when_reencoding(tmp_path: Path) -> None:
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = save(rgb((300, 400)), tmp_path / "a.jpg", exif=exif_bytes(1), icc_profile=srgb)
    prepared = prepare_image(src, tmp_path / "out.jpg", policy=Policy.STRICT)
    assert not prepared.unchanged
    with Image.open(prepared.path) as out:
        assert out.info.get("icc_profile") == srgb


# --------------------------------------------------------------------------- writing


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    out_dir = tmp_path / "uploads"
    dest = out_dir / "photo.jpg"
    src = save(rgb((300, 400)), tmp_path / "a.png")
    prepare_image(src, dest)
    old = dest.read_bytes()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"<html></html>")
    with pytest.raises(ImageRejected):
        prepare_image(bad, dest)
    assert dest.read_bytes() == old
    assert [p.name for p in out_dir.iterdir()] == ["photo.jpg"]


def test_write_failure_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    src = save(rgb((300, 400)), tmp_path / "a.png")
    out_dir = tmp_path / "out"

    def broken_replace(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        prepare_image(src, out_dir / "x.jpg")
    assert list(out_dir.iterdir()) == []


def test_missing_source_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        prepare_image(tmp_path / "nope.jpg", tmp_path / "out.jpg")


# --------------------------------------------------------------------------- property

MODES: dict[str, Callable[[tuple[int, int]], Image.Image]] = {
    "RGB": lambda size: Image.linear_gradient("L").resize(size).convert("RGB"),
    "RGBA": lambda size: Image.new("RGBA", size, (10, 200, 30, 128)),
    "L": lambda size: Image.linear_gradient("L").resize(size),
    "LA": lambda size: Image.new("LA", size, (100, 50)),
    "P": lambda size: Image.new("P", size, 3),
    "1": lambda size: Image.new("1", size, 1),
    "CMYK": lambda size: Image.new("CMYK", size, (0, 255, 255, 0)),
    "I;16": lambda size: Image.new("I;16", size, 40000),
}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    width=st.integers(1, 5000),
    height=st.integers(1, 5000),
    mode=st.sampled_from(sorted(MODES)),
    fit=st.sampled_from(list(Fit)),
    orientation=st.sampled_from([None, 1, 3, 6, 8]),
)
def test_property_any_image_gives_a_valid_upload_or_a_reason(
    tmp_path: Path, width: int, height: int, mode: str, fit: Fit, orientation: int | None
) -> None:
    im = MODES[mode]((width, height))
    params: dict[str, Any] = {}
    if orientation is not None:
        params["exif"] = exif_bytes(orientation)
    src = tmp_path / "src.tif" if mode == "CMYK" else tmp_path / "src.png"
    if src.suffix == ".png":
        params["compress_level"] = 1
    save(im, src, **params)
    result = attempt(src, tmp_path / "out.jpg", fit=fit)
    if isinstance(result, ImageRejected):
        assert min(width, height) < 64
        assert "too small" in result.reason
        return
    out = assert_fix_upload(result)
    assert max(out.size) == min(MAX_LONG_SIDE, _expected_long_side(width, height, orientation, fit))


def _expected_long_side(width: int, height: int, orientation: int | None, fit: Fit) -> int:
    if orientation in (6, 8):
        width, height = height, width
    if abs(width / height - 0.75) <= ASPECT_TOLERANCE:
        return height
    if fit is Fit.CROP:
        return height if width / height > 0.75 else round(width / 0.75)
    return round(width / 0.75) if width / height > 0.75 else height


def test_binary_junk_is_not_called_text(tmp_path: Path) -> None:
    src = tmp_path / "junk.jpg"
    src.write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(ImageRejected) as info:
        inspect_image(src)
    assert info.value.reason == "not an image: unrecognised format"


def test_truncated_images_stay_refused_even_if_pillow_is_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = save(Image.effect_noise((300, 400), 60).convert("RGB"), tmp_path / "whole.jpg")
    src = tmp_path / "cut.jpg"
    src.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageRejected, match="truncated"):
        prepare_image(src, tmp_path / "out.jpg")


def test_fix_writes_a_preview_from_the_decoded_pixels(tmp_path: Path) -> None:
    source = tmp_path / "wide.jpg"
    Image.new("RGB", (1600, 1000), (200, 30, 30)).save(source, "JPEG")
    preview = tmp_path / "preview.jpg"
    prepare_image(source, tmp_path / "up.jpg", thumbnail=preview)
    with Image.open(preview) as image:
        assert image.format == "JPEG"
        assert image.width <= 240
        assert image.height <= 320
        assert abs(image.width / image.height - 0.75) <= 0.02
        pixel = image.convert("RGB").getpixel((image.width // 2, image.height // 2))
        assert isinstance(pixel, tuple)
        assert pixel[0] > 150 > pixel[1]


def test_a_gone_upload_is_prepared_again_to_the_bytes_paid_for(tmp_path: Path) -> None:
    source = save(Image.effect_noise((900, 1200), 40).convert("RGB"), tmp_path / "p.jpg")
    options = PrepareOptions()
    with open_workspace(tmp_path / "out") as workspace:
        prepared = prepare_photo(str(source), workspace, options)
        assert prepared.reason is None and prepared.upload_sha256 is not None
        on_disk = upload_on_disk(prepared, workspace)
        assert on_disk is not None and upload_file(prepared, workspace, options) == on_disk
        on_disk.unlink()
        assert upload_on_disk(prepared, workspace) is None
        again = upload_file(prepared, workspace, options)
        assert again is not None
        assert hashlib.sha256(again.read_bytes()).hexdigest() == prepared.upload_sha256
