"""Turn a source photo into the file that is uploaded: decode once, write atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Final, Literal

from PIL import Image, ImageFile
from pydantic import BaseModel, ConfigDict

from modelset.atomic import copy_stream, write_bytes

from ._exceptions import ImageRejected
from .check import ImageCheck, OpenedImage, decoder_applied_orientation, open_image, reading
from .colour import WHITE, resamplable, to_srgb
from .geometry import TRANSPOSE, Box, Size, draft_request, plan, stored_box, stored_size
from .looks import look_of
from .options import Fit, Policy
from .rules import DEFAULT_MAX_PIXELS, MAX_LONG_SIDE, MIN_SHORT_SIDE
from .strip import strip_jpeg, strip_png

PREPARATION_VERSION: Final[int] = 1
"""Version of what prepare_image produces from a given source and options.

It is part of the exactly-once key of an upload (with the source's sha256 and the
options), so a changed key means "prepare again, this is a different upload".
Bump it whenever the output of prepare changes meaningfully: crop position,
resampling filter, colour handling, JPEG settings, metadata rules. Do not bump it
for refactors that leave the bytes the same.
"""

DEFAULT_QUALITY: Final = 92
STRICT_FALLBACK_QUALITY: Final = 95
_REDUCING_GAP: Final = 3.0
"""Integer box-reduce first, then LANCZOS over the last <= 3x: Pillow documents the
result as indistinguishable from a full LANCZOS pass, at a fraction of the cost."""


class PreparedImage(BaseModel):
    """The upload file written by prepare_image."""

    model_config = ConfigDict(frozen=True)

    path: Path
    sha256: str
    """Hex digest of the written file."""
    width: int
    height: int
    format: Literal["JPEG", "PNG"]
    size_bytes: int
    unchanged: bool
    """True when the source bytes were copied as they are."""
    check: ImageCheck
    """Inspection of the source."""
    look: str
    """What the prepared pixels look like (``looks.Look``): copies share it, and so may
    other photos shot alike (a candidate, confirmed by ``sameness.py``)."""


def prepare_image(
    source: Path,
    dest: Path,
    *,
    policy: Policy = Policy.FIX,
    fit: Fit = Fit.CROP,
    max_side: int = MAX_LONG_SIDE,
    quality: int = DEFAULT_QUALITY,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    thumbnail: Path | None = None,
) -> PreparedImage:
    """Write the upload for ``source`` to ``dest`` (atomically) and describe it.

    With ``thumbnail`` (FIX only), also write a small JPEG preview of the upload there,
    from the pixels already decoded.

    FIX: upright, 8-bit sRGB RGB on white, cropped (or padded) to 3:4, long side
    at most ``max_side``, no metadata, JPEG at ``quality``.
    STRICT: never new pixels. Refuses (with every reason, joined by "; ") unless
    the file is already 3:4, small enough, upright, one frame, 8-bit RGB/L JPEG
    or PNG; copies it byte for byte when it carries no EXIF/GPS, otherwise
    re-encodes the same pixels without that metadata.

    Raises ImageRejected for anything about the file's content; OSError for I/O.
    """
    policy, fit = Policy(policy), Fit(fit)
    _validate(max_side=max_side, quality=quality, max_pixels=max_pixels)
    with open_image(source, max_pixels=max_pixels, max_side=max_side) as opened:
        if policy is Policy.STRICT:
            return _strict(opened, dest, max_pixels=max_pixels)
        image = _fixed(opened, fit=fit, max_side=max_side, max_pixels=max_pixels)
    # The preview is made even when no thumbnail is asked for: the look is read from it.
    preview = _preview(image)
    look = look_of(preview)
    data = _encode_jpeg(image, quality=quality)
    if thumbnail is not None:
        write_bytes(thumbnail, _encode_jpeg(preview, quality=THUMBNAIL_QUALITY))
    return PreparedImage(
        path=dest,
        sha256=write_bytes(dest, data),
        width=image.width,
        height=image.height,
        format="JPEG",
        size_bytes=len(data),
        unchanged=False,
        check=opened.check,
        look=str(look),
    )


THUMBNAIL_SIZE: Final = (240, 320)
THUMBNAIL_QUALITY: Final = 80


def _preview(image: Image.Image) -> Image.Image:
    """The pixels fitted into ``THUMBNAIL_SIZE``: the thumbnail, and what the look is
    read from."""
    preview = image.copy()
    preview.thumbnail(THUMBNAIL_SIZE, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return preview


def _validate(*, max_side: int, quality: int, max_pixels: int) -> None:
    if max_side < MIN_SHORT_SIDE:
        raise ValueError(f"max_side must be at least {MIN_SHORT_SIDE}, got {max_side}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be within 1..100, got {quality}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")


def _fixed(opened: OpenedImage, *, fit: Fit, max_side: int, max_pixels: int) -> Image.Image:
    """Decode once and return the upright, 3:4, sRGB RGB pixels to upload."""
    im, check = opened.image, opened.check
    layout = plan(check.upright_width, check.upright_height, fit=fit, max_side=max_side)
    upright = (check.upright_width, check.upright_height)
    icc_profile = im.info.get("icc_profile")
    with reading(check.format, max_pixels=max_pixels):
        factor = _draft(im, layout.scale)
        _decode(im)
        orientation = None if decoder_applied_orientation(im) else check.orientation
        # Cropping and resampling happen in stored orientation, before transposing,
        # so only the small result is rotated.
        box = stored_box(layout.box, orientation, stored_size(upright, orientation))
        box = (box[0] * factor, box[1] * factor, box[2] * factor, box[3] * factor)
        pixels = _resample(resamplable(im), box, stored_size(layout.size, orientation))
    if orientation in TRANSPOSE:
        pixels = pixels.transpose(TRANSPOSE[orientation])
    rgb = to_srgb(pixels, icc_profile if isinstance(icc_profile, bytes) else None)
    if layout.padded:
        canvas = Image.new("RGB", layout.canvas, WHITE)
        canvas.paste(rgb, layout.offset)
        rgb = canvas
    return rgb


def _decode(im: Image.Image) -> None:
    # Re-asserted on every decode: a truncated file must be refused, never grey-filled,
    # even if something else in the process flipped Pillow's global switch.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    im.load()


def _draft(im: Image.Image, scale: float) -> float:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the output is that much smaller.

    Returns the factor from source pixels to decoded pixels (1.0 when not drafted).
    """
    if im.format not in ("JPEG", "MPO"):
        return 1.0
    request = draft_request(im.size, scale)
    if request is None:
        return 1.0
    width = im.width
    drafted = im.draft(im.mode, request)
    return 1.0 if drafted is None else drafted[1][2] / width


def _resample(im: Image.Image, box: Box, size: Size) -> Image.Image:
    if box == (0, 0, im.width, im.height) and size == im.size:
        return im
    if all(float(c).is_integer() for c in box) and (box[2] - box[0], box[3] - box[1]) == size:
        return im.crop((int(box[0]), int(box[1]), int(box[2]), int(box[3])))
    return im.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=_REDUCING_GAP)


def _encode_jpeg(image: Image.Image, *, quality: int) -> bytes:
    # Pillow copies info (EXIF, XMP, comment, ICC) through every operation and
    # the JPEG writer picks some of it up by default: drop it all.
    image.info = {}
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, optimize=False, progressive=False)
    return buffer.getvalue()


def _strict(opened: OpenedImage, dest: Path, *, max_pixels: int) -> PreparedImage:
    im, check = opened.image, opened.check
    if blocking := check.blocking_problems:
        raise ImageRejected("; ".join(blocking))
    image_format: Literal["JPEG", "PNG"] = "PNG" if check.format == "PNG" else "JPEG"
    with reading(check.format, max_pixels=max_pixels):
        _decode(im)  # proves the pixel data is whole before anything is sent
        # Sent as they are, the pixels may be grey or carry a profile: the look is sRGB.
        profile = im.info.get("icc_profile")
        look = look_of(to_srgb(_preview(im), profile if isinstance(profile, bytes) else None))
    # A PNG eXIf chunk after the pixel data only shows up once decoded.
    if check.has_exif or check.has_gps or im.info.get("exif"):
        opened.file.seek(0)
        data = _without_metadata(im, opened.file.read())
        sha256, size_bytes, unchanged = write_bytes(dest, data), len(data), False
    else:
        sha256, size_bytes = copy_stream(opened.file, dest)
        unchanged = True
    return PreparedImage(
        path=dest,
        sha256=sha256,
        width=im.width,
        height=im.height,
        format=image_format,
        size_bytes=size_bytes,
        unchanged=unchanged,
        check=check,
        look=str(look),
    )


def _without_metadata(im: Image.Image, source: bytes) -> bytes:
    """The same pixels without EXIF, GPS, XMP, IPTC or comments (the ICC profile stays).

    Metadata segments/chunks are dropped from the file as it is, so the pixel data
    is untouched. Only if the file's structure is unexpected, or the result does
    not decode like the source, are the pixels re-encoded (JPEG with the source's
    own quantisation tables, or PNG).
    """
    stripped = strip_png(source) if im.format == "PNG" else strip_jpeg(source)
    if stripped is not None and _decodes_like(stripped, im):
        return stripped
    return _reencoded(im)


def _decodes_like(data: bytes, im: Image.Image) -> bool:
    try:
        with Image.open(io.BytesIO(data), formats=[im.format or ""]) as copy:
            copy.load()
            return copy.size == im.size and copy.mode == im.mode
    except Exception:
        return False


def _reencoded(im: Image.Image) -> bytes:
    icc_profile = im.info.get("icc_profile")
    image_format = im.format
    im.info = {}
    buffer = io.BytesIO()
    if image_format == "PNG":
        im.save(buffer, "PNG", icc_profile=icc_profile)
        return buffer.getvalue()
    try:
        # Reusing the source's quantisation tables and subsampling keeps the
        # re-encode as close to the original pixels as baseline JPEG allows.
        im.save(buffer, "JPEG", quality="keep", icc_profile=icc_profile)
    except ValueError:
        buffer = io.BytesIO()
        im.save(buffer, "JPEG", quality=STRICT_FALLBACK_QUALITY, icc_profile=icc_profile)
    return buffer.getvalue()
