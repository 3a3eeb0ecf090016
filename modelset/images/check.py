"""Header-only inspection: what a photo is and why it cannot be sent as-is."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Final, NamedTuple

from PIL import Image, ImageFile, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict

from modelset.signatures import is_heif

from ._exceptions import ImageRejected
from .frames import count_frames, gif_frames
from .geometry import is_three_by_four
from .headers import declared_size
from .reasons import (
    bomb,
    decode_failure,
    describe_unidentified,
    pillow_bomb,
    sniff_format,
)
from .rules import (
    DEFAULT_MAX_PIXELS,
    MAX_LONG_SIDE,
    MIN_SHORT_SIDE,
    OPEN_FORMATS,
    UPLOAD_FORMATS,
    heif_formats,
)

# Refuse truncated files rather than silently grey-filling the missing part.
ImageFile.LOAD_TRUNCATED_IMAGES = False

GPS_PROBLEM: Final = "carries GPS metadata"
EXIF_PROBLEM: Final = "carries EXIF metadata"
METADATA_PROBLEMS: Final = frozenset({GPS_PROBLEM, EXIF_PROBLEM})
"""Problems that do not change pixels: STRICT fixes them by re-encoding."""

_SNIFF_BYTES: Final = 512
_ORIENTATION_TAG: Final = 0x0112
_IMAGE_WIDTH_TAG: Final = 0x0100
_IMAGE_LENGTH_TAG: Final = 0x0101
_EXIF_IFD_TAG: Final = 0x8769
_GPS_IFD_TAG: Final = 0x8825
_XMP_GPS = re.compile(rb"GPS(Latitude|Longitude)")
_ANIMATED_FORMATS: Final = frozenset({"GIF", "PNG", "WEBP", "AVIF"})
_DEEP_MODES: Final = {"I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}
_ALPHA_MODES: Final = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SWAPPING_ORIENTATIONS: Final = frozenset({5, 6, 7, 8})


class ImageCheck(BaseModel):
    """What a source photo is, read from its header, and what stops it being sent as-is."""

    model_config = ConfigDict(frozen=True)

    format: str
    mode: str
    width: int
    """Stored width, before EXIF orientation."""
    height: int
    orientation: int | None
    """EXIF orientation 1..8, or None when absent or invalid."""
    upright_width: int
    upright_height: int
    ratio: float
    """upright_width / upright_height."""
    frames: int
    bits: int
    """Bits per sample (8 for ordinary photos)."""
    has_exif: bool
    has_gps: bool
    has_icc: bool
    has_transparency: bool
    problems: list[str]
    """Every reason the file cannot be sent as-is; empty when it can."""

    @property
    def sendable_as_is(self) -> bool:
        return not self.problems

    @property
    def blocking_problems(self) -> list[str]:
        """Problems that need new pixels (STRICT refuses these); metadata is excluded."""
        return [p for p in self.problems if p not in METADATA_PROBLEMS]


class OpenedImage(NamedTuple):
    """A lazily opened source: header parsed and checked, pixels not decoded yet."""

    image: ImageFile.ImageFile
    check: ImageCheck
    file: IO[bytes]
    """The open source file, positioned anywhere (seek before reading)."""


def inspect_image(
    path: Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = MAX_LONG_SIDE,
) -> ImageCheck:
    """Inspect a photo from its header only (no pixel decoding).

    Raises ImageRejected for empty files, non-images, unreadable headers,
    decompression bombs (any frame's declared width x height above
    ``max_pixels``) and images under 64 px on the short side. A missing or
    unreadable file raises OSError.
    """
    with open_image(path, max_pixels=max_pixels, max_side=max_side) as opened:
        return opened.check


@contextmanager
def open_image(path: Path, *, max_pixels: int, max_side: int) -> Iterator[OpenedImage]:
    """Open lazily, check the header, and yield the still-undecoded image with its check."""
    if path.stat().st_size == 0:
        raise ImageRejected("not an image: file is empty")
    with path.open("rb") as fh:
        head = fh.read(_SNIFF_BYTES)
        fh.seek(0)
        with reading(sniff_format(head), max_pixels=max_pixels):
            # Declared sizes are checked before Pillow parses anything, so that a
            # bomb is reported with its size and our limit applies, not Pillow's.
            gif_count = gif_frames(fh, max_pixels=max_pixels) if head.startswith(b"GIF") else None
            declared = declared_size(fh, head)
            if declared is not None and declared[0] * declared[1] > max_pixels:
                raise ImageRejected(bomb(*declared, max_pixels))
            try:
                # A "mif1" file may be an AVIF: Pillow's own plugins still get to try it.
                formats = OPEN_FORMATS + heif_formats() if is_heif(head) else OPEN_FORMATS
                im = Image.open(fh, formats=formats)
            except UnidentifiedImageError as exc:
                raise ImageRejected(describe_unidentified(head)) from exc
        with im:
            with reading(im.format or "image", max_pixels=max_pixels):
                frames = gif_count or count_frames(im, fh, max_pixels=max_pixels)
                check = _check(im, frames, max_pixels=max_pixels, max_side=max_side)
            yield OpenedImage(im, check, fh)


@contextmanager
def reading(image_format: str, *, max_pixels: int) -> Iterator[None]:
    """Turn anything Pillow raises about the file's content into ImageRejected.

    OSErrors that carry an errno are real I/O failures (the disk, not the photo)
    and propagate unchanged, as does MemoryError.
    """
    try:
        yield
    except (ImageRejected, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        limit = Image.MAX_IMAGE_PIXELS
        pillow_limit = None if limit is None else 2 * int(limit)
        raise ImageRejected(pillow_bomb(exc, max_pixels, pillow_limit)) from exc
    except OSError as exc:
        if exc.errno is not None:
            raise
        raise ImageRejected(decode_failure(exc, image_format)) from exc
    except Exception as exc:
        raise ImageRejected(decode_failure(exc, image_format)) from exc


def _check(im: ImageFile.ImageFile, frames: int, *, max_pixels: int, max_side: int) -> ImageCheck:
    width, height = _stored_size(im)
    if width * height > max_pixels:
        raise ImageRejected(bomb(width, height, max_pixels))
    if min(width, height) < MIN_SHORT_SIDE:
        raise ImageRejected(
            f"unsupported: {width}x{height} px is too small "
            f"(minimum {MIN_SHORT_SIDE} px on the short side)"
        )
    image_format = im.format or "unknown"
    orientation, has_exif, has_gps = _exif_facts(im)
    upright = (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)
    facts: dict[str, Any] = {
        "format": image_format,
        "mode": im.mode,
        "width": width,
        "height": height,
        "orientation": orientation,
        "upright_width": upright[0],
        "upright_height": upright[1],
        "ratio": upright[0] / upright[1],
        "frames": frames,
        "bits": _bits(im),
        "has_exif": has_exif,
        "has_gps": has_gps,
        "has_icc": bool(im.info.get("icc_profile")),
        "has_transparency": im.mode in _ALPHA_MODES or "transparency" in im.info,
    }
    return ImageCheck(**facts, problems=_problems(facts, max_side=max_side))


def _stored_size(im: ImageFile.ImageFile) -> tuple[int, int]:
    """Width and height as stored in the file, before any EXIF orientation."""
    if im.format == "TIFF":
        # Recent Pillow reports (and decodes) TIFFs already upright: read the tags.
        tags = getattr(im, "tag_v2", {})
        width, height = tags.get(_IMAGE_WIDTH_TAG), tags.get(_IMAGE_LENGTH_TAG)
        if isinstance(width, int) and isinstance(height, int):
            return width, height
    return im.size


def decoder_applied_orientation(im: Image.Image) -> bool:
    """True when Pillow itself made the decoded pixels upright (TIFF, Pillow >= 11.x).

    Pillow then drops the Orientation tag; older versions leave it and the pixels.
    """
    tags = getattr(im, "tag_v2", None)
    return im.format == "TIFF" and tags is not None and _ORIENTATION_TAG not in tags


def _exif_facts(im: Image.Image) -> tuple[int | None, bool, bool]:
    """(orientation, has_exif, has_gps), read without decoding pixels."""
    raw_exif = bool(im.info.get("exif")) or "Raw profile type exif" in im.info
    has_gps = _xmp_has_gps(im)
    try:
        # The base implementation on purpose: PngImageFile.getexif() decodes the
        # whole image to look for an eXIf chunk after the pixel data.
        exif = Image.Image.getexif(im)
    except Exception:
        return None, raw_exif, has_gps
    value = exif.get(_ORIENTATION_TAG)
    orientation = value if isinstance(value, int) and 1 <= value <= 8 else None
    # TIFF "EXIF" is the file's own tag directory; only EXIF/GPS sub-IFDs count.
    tiff_exif = _EXIF_IFD_TAG in exif or _GPS_IFD_TAG in exif
    has_exif = tiff_exif if im.format == "TIFF" else raw_exif
    if _GPS_IFD_TAG in exif:
        try:
            has_gps = has_gps or bool(exif.get_ifd(_GPS_IFD_TAG))
        except Exception:
            has_gps = True
    return orientation, has_exif, has_gps


def _xmp_has_gps(im: Image.Image) -> bool:
    xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8", "replace")
    return isinstance(xmp, bytes) and _XMP_GPS.search(xmp) is not None


def _bits(im: ImageFile.ImageFile) -> int:
    if im.mode in _DEEP_MODES:
        return _DEEP_MODES[im.mode]
    # Pillow hands 16-bit RGB(A)/LA PNG and TIFF over as 8-bit modes; the raw
    # mode still says what the file holds.
    if im.format in ("PNG", "TIFF") and im.tile:
        args = im.tile[0].args
        rawmode = (
            args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else "")
        )
        if isinstance(rawmode, str) and ";16" in rawmode:
            return 16
    return 8


def _problems(facts: dict[str, Any], *, max_side: int) -> list[str]:
    problems: list[str] = []
    image_format, mode = facts["format"], facts["mode"]
    if image_format not in UPLOAD_FORMATS:
        problems.append(f"format {image_format} is not accepted (JPEG or PNG)")
    if facts["frames"] > 1:
        problems.append(_frames_problem(image_format, facts["frames"]))
    if facts["orientation"] not in (None, 1):
        problems.append(f"EXIF orientation {facts['orientation']} must be applied")
    if facts["bits"] > 8:
        problems.append(f"{facts['bits']}-bit samples must be 8-bit")
    if ("L" if mode in _DEEP_MODES else mode) not in ("RGB", "L"):
        problems.append(f"mode {mode} must be RGB")
    elif facts["has_transparency"]:
        problems.append("transparency must be flattened")
    width, height = facts["upright_width"], facts["upright_height"]
    if not is_three_by_four(width, height):
        problems.append(f"aspect {_aspect(width, height)} ({width / height:.3f}) is not 3:4")
    if max(width, height) > max_side:
        problems.append(f"long side {max(width, height)} px exceeds {max_side}")
    if facts["has_gps"]:
        problems.append(GPS_PROBLEM)
    if facts["has_exif"]:
        problems.append(EXIF_PROBLEM)
    return problems


def _frames_problem(image_format: str, frames: int) -> str:
    if image_format in _ANIMATED_FORMATS:
        return f"animated: first of {frames} frames used"
    if image_format == "TIFF":
        return f"multi-page: first of {frames} pages used"
    return f"multi-picture {image_format}: first of {frames} images used"


def _aspect(width: int, height: int) -> str:
    divisor = math.gcd(width, height)
    w, h = width // divisor, height // divisor
    return f"{w}:{h}" if max(w, h) <= 50 else f"{width}x{height}"
