"""HEIC/HEIF from phones, read like any other format (files made with pillow-heif's own
encoder: x265 is in its wheel)."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pillow_heif
import pytest
from PIL import Image, ImageCms

from modelset.images import ImageRejected, Policy, inspect_image, prepare_image
from modelset.images.colour import to_srgb
from modelset.images.rules import heif_formats

DEMO = Path(__file__).resolve().parents[1] / "modelset" / "demo" / "photos"
heif_formats()  # as the product registers the reader, which also lets Pillow save HEIC


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def display_p3_profile() -> bytes:
    """A Display P3 ICC profile (v2, matrix and gamma 2.2 curves, D50-adapted primaries as
    in Apple's), built here: the machine carries no P3 profile and Pillow cannot make one."""
    xyz = {
        b"wtpt": (0.9642, 1.0, 0.8249),
        b"rXYZ": (0.5151, 0.2412, -0.0011),
        b"gXYZ": (0.2919, 0.6922, 0.0419),
        b"bXYZ": (0.1572, 0.0666, 0.7841),
    }
    name = b"Display P3 (test)\x00"
    tags = {b"desc": b"desc\0\0\0\0" + struct.pack(">I", len(name)) + name + bytes(8 + 3 + 67)}
    tags |= {sig: b"XYZ \0\0\0\0" + b"".join(map(_s15, v)) for sig, v in xyz.items()}
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(2.2 * 256)) + b"\0\0"
    tags |= {b"rTRC": curve, b"gTRC": curve, b"bTRC": curve}
    offset = 128 + 4 + 12 * len(tags)
    table, data = struct.pack(">I", len(tags)), b""
    for sig, body in tags.items():
        body += bytes(-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (
        struct.pack(">I", size)
        + bytes(4)
        + struct.pack(">I", 0x02100000)
        + b"mntrRGB XYZ "
        + bytes(12)
        + b"acsp"
        + bytes(24)
        + struct.pack(">I", 0)
        + b"".join(map(_s15, (0.9642, 1.0, 0.8249)))
        + bytes(48)
    )
    assert len(header) == 128
    return header + table + data


@pytest.fixture
def portrait() -> Image.Image:
    return Image.open(DEMO / "studio-red-dress.jpg").convert("RGB")  # 768x1024, 3:4


def _difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean())


def test_a_phone_heic_is_prepared_under_fix(tmp_path: Path, portrait: Image.Image) -> None:
    source = tmp_path / "IMG_0001.HEIC"
    portrait.save(source, quality=90)
    check = inspect_image(source)
    assert (check.format, check.width, check.height, check.frames) == ("HEIF", 768, 1024, 1)
    prepared = prepare_image(source, tmp_path / "out.jpg")
    with Image.open(prepared.path) as out:
        assert (out.format, out.size, out.mode) == ("JPEG", (768, 1024), "RGB")
        assert _difference(out, portrait) < 4


def test_strict_refuses_heic_with_its_format(tmp_path: Path, portrait: Image.Image) -> None:
    source = tmp_path / "IMG_0002.heic"
    portrait.save(source, quality=90)
    with pytest.raises(ImageRejected, match=r"format HEIF is not accepted \(JPEG or PNG\)"):
        prepare_image(source, tmp_path / "out.jpg", policy=Policy.STRICT)


def test_rotated_heic_ends_upright_without_exif_or_gps(
    tmp_path: Path, portrait: Image.Image
) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # the sensor's pixels are lying on their side
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0)}
    source = tmp_path / "IMG_0003.heic"
    portrait.rotate(90, expand=True).save(source, quality=90, exif=exif.tobytes())
    check = inspect_image(source)
    assert check.has_gps and check.has_exif
    prepared = prepare_image(source, tmp_path / "out.jpg")
    with Image.open(prepared.path) as out:
        assert out.size == (768, 1024)
        assert _difference(out, portrait) < 4
        assert not out.getexif()
        assert "exif" not in out.info


def test_display_p3_is_converted_to_srgb_through_its_profile(tmp_path: Path) -> None:
    profile = display_p3_profile()
    patch = Image.new("RGB", (300, 400), (200, 100, 90))
    source = tmp_path / "p3.heic"
    patch.save(source, quality=95, icc_profile=profile)
    assert inspect_image(source).has_icc
    prepared = prepare_image(source, tmp_path / "out.jpg")
    expected = to_srgb(patch, profile).getpixel((150, 200))
    assert isinstance(expected, tuple)
    assert expected[0] > 200 + 10  # P3's red is redder than sRGB's: it really converted
    with Image.open(prepared.path) as out:
        got = out.getpixel((150, 200))
        assert isinstance(got, tuple)
        assert all(abs(g - e) <= 4 for g, e in zip(got, expected, strict=True)), (got, expected)
        assert "icc_profile" not in out.info
    transform = ImageCms.buildTransform(
        ImageCms.ImageCmsProfile(io.BytesIO(profile)),
        ImageCms.createProfile("sRGB"),
        "RGB",
        "RGB",
    )
    assert transform.apply(patch).getpixel((0, 0)) == pytest.approx(expected, abs=3)


def test_a_ten_bit_heic_becomes_eight_bit(tmp_path: Path, portrait: Image.Image) -> None:
    deep = np.asarray(portrait).astype(np.uint16) * 257
    heif = pillow_heif.from_bytes(mode="RGB;16", size=portrait.size, data=deep.tobytes())
    source = tmp_path / "deep.heic"
    heif.save(source, quality=90)
    assert pillow_heif.open_heif(source, convert_hdr_to_8bit=False).info["bit_depth"] > 8
    prepared = prepare_image(source, tmp_path / "out.jpg")
    with Image.open(prepared.path) as out:
        assert out.mode == "RGB"
        assert _difference(out, portrait) < 4


def test_a_heic_sequence_uses_its_first_image(tmp_path: Path, portrait: Image.Image) -> None:
    source = tmp_path / "burst.heic"
    portrait.save(source, save_all=True, append_images=[portrait.rotate(180)], quality=85)
    check = inspect_image(source)
    assert check.frames == 2
    assert "multi-picture HEIF: first of 2 images used" in check.problems
    prepared = prepare_image(source, tmp_path / "out.jpg")
    with Image.open(prepared.path) as out:
        assert _difference(out, portrait) < 4


def test_depth_maps_auxiliary_images_and_thumbnails_are_never_read() -> None:
    # pillow-heif cannot write a depth map, so this checks how the reader is registered:
    # with these off, libheif hands Pillow the primary image alone.
    options = pillow_heif.options
    assert (options.DEPTH_IMAGES, options.AUX_IMAGES, options.THUMBNAILS) == (False, False, False)


def test_a_truncated_heic_is_refused_with_a_reason(tmp_path: Path, portrait: Image.Image) -> None:
    whole = tmp_path / "whole.heic"
    portrait.save(whole, quality=90)
    source = tmp_path / "cut.heic"
    source.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ImageRejected, match=r"^corrupt image: truncated HEIF data$"):
        prepare_image(source, tmp_path / "out.jpg")
    assert not (tmp_path / "out.jpg").exists()


def test_the_bomb_limit_holds_for_heic(tmp_path: Path, portrait: Image.Image) -> None:
    source = tmp_path / "big.heic"
    portrait.save(source, quality=50)
    with pytest.raises(ImageRejected, match=r"^decompression bomb: 768x1024"):
        inspect_image(source, max_pixels=500_000)
    with pytest.raises(ImageRejected, match=r"^decompression bomb: 768x1024"):
        prepare_image(source, tmp_path / "out.jpg", max_pixels=500_000)


@pytest.mark.parametrize(("name", "image_format"), [("DSC0001.HIF", "HEIF"), ("look.avif", "AVIF")])
def test_a_camera_heif_and_an_avif_are_prepared_like_a_heic(
    tmp_path: Path, portrait: Image.Image, name: str, image_format: str
) -> None:
    heif_formats()  # pillow-heif's encoder writes the .hif; Pillow's own the AVIF
    source = tmp_path / name
    portrait.save(source, image_format, quality=90)
    prepared = prepare_image(source, tmp_path / "upload.jpg")
    assert prepared.check.format == image_format
    assert (prepared.width, prepared.height) == portrait.size
    with Image.open(prepared.path) as upload:
        assert _difference(upload.convert("RGB"), portrait) < 4
