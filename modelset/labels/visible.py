"""The visible label (GB 45438-2025, 5.2): text saying the image is AI-generated, drawn at
a corner or edge, at least 5 % of the image's short side high.

Only published copies get it. Drawing changes pixels, so the copy is encoded again, in its
own format: a JPEG with its own quantisation tables (``quality="keep"``), ICC profile and
EXIF; a PNG losslessly; a WebP at high quality.
"""

from __future__ import annotations

import functools
import io
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from modelset.labels._exceptions import LabelError, NoFontCovers
from modelset.options import LabelPosition

MIN_HEIGHT = 0.05  # of the short side, the standard's floor
TEXT_HEIGHT = 0.06  # of the short side, what is drawn: above the floor by a margin
INSTALL_HINT = (
    "install a font that has them (Debian: apt-get install fonts-wqy-zenhei for Chinese) or "
    "name one with HIDREAM_LABEL_FONT"
)


@dataclass(frozen=True)
class VisibleLabel:
    """Text to draw on an image, where, and in which font file."""

    text: str
    position: LabelPosition
    font: Path


def find_font(text: str, configured: Path | None = None) -> Path:
    """A font file that draws every character of ``text``: ``configured`` if given, else
    the first that fontconfig lists as covering them all."""
    if configured is not None:
        if not configured.is_file():
            raise NoFontCovers(text, f"HIDREAM_LABEL_FONT {configured} is not a file")
        return configured
    found = _fonts_covering(frozenset(text) - {" "})
    if not found:
        raise NoFontCovers(text, INSTALL_HINT)
    return found[0]


@functools.lru_cache(maxsize=32)
def _fonts_covering(characters: frozenset[str]) -> list[Path]:
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        raise NoFontCovers("".join(sorted(characters)), f"fontconfig is missing; {INSTALL_HINT}")
    charset = " ".join(f"{ord(character):x}" for character in sorted(characters))
    listed = subprocess.run(
        [fc_list, "--format", "%{file}\n", f":charset={charset}:scalable=true"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return sorted({Path(line) for line in listed.splitlines() if line.strip()})


def draw_label(data: bytes, label: VisibleLabel) -> bytes:
    """``data`` encoded again with ``label`` drawn on it, in the same format."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            image_format = image.format
            drawn = _drawn(image, label)
            return _encoded(image, drawn, image_format)
    except OSError as exc:
        raise LabelError(f"could not draw the visible label ({exc})") from None


def _drawn(image: Image.Image, label: VisibleLabel) -> Image.Image:
    canvas = image if image.mode in ("RGB", "RGBA") else image.convert("RGBA")
    short = min(canvas.size)
    font = _font_of_height(label, math.ceil(TEXT_HEIGHT * short))
    draw = ImageDraw.Draw(canvas)
    box = draw.textbbox((0, 0), label.text, font=font)
    left, top, right, bottom = (math.ceil(edge) for edge in box)
    width, height = right - left, bottom - top
    pad = max(2, height // 4)
    if width + 4 * pad > canvas.width:
        raise LabelError(f"the visible label {label.text!r} is wider than the image")
    x, y = _place(label.position, canvas.size, (width + 2 * pad, height + 2 * pad), pad)
    draw.rectangle((x, y, x + width + 2 * pad, y + height + 2 * pad), fill=(0, 0, 0))
    draw.text((x + pad - left, y + pad - top), label.text, font=font, fill=(255, 255, 255))
    return canvas


def _font_of_height(label: VisibleLabel, height: int) -> ImageFont.FreeTypeFont:
    """The font at the smallest size whose drawn text is at least ``height`` px high."""
    size = height
    while True:
        font = ImageFont.truetype(str(label.font), size)
        _, top, _, bottom = font.getbbox(label.text)
        drawn = math.ceil(bottom - top)
        if drawn >= height:
            return font
        size += max(1, (height - drawn) // 2)


def _place(
    position: LabelPosition, image: tuple[int, int], box: tuple[int, int], margin: int
) -> tuple[int, int]:
    (width, height), (box_width, box_height) = image, box
    x = {"left": margin, "right": width - box_width - margin}
    y = {"top": margin, "bottom": height - box_height - margin}
    vertical, _, horizontal = position.partition("-")
    return x.get(horizontal, (width - box_width) // 2), y[vertical]


def _encoded(source: Image.Image, drawn: Image.Image, image_format: str | None) -> bytes:
    out = io.BytesIO()
    icc = source.info.get("icc_profile")
    if image_format == "JPEG":
        exif = source.info.get("exif", b"")
        if drawn is source:  # still the JPEG it was: its own tables and subsampling
            drawn.save(out, "JPEG", quality="keep", subsampling="keep", icc_profile=icc, exif=exif)
        else:
            drawn.convert("RGB").save(out, "JPEG", quality=95, icc_profile=icc, exif=exif)
    elif image_format == "PNG":
        drawn.save(out, "PNG", icc_profile=icc)
    elif image_format == "WEBP":
        drawn.save(out, "WEBP", quality=95, icc_profile=icc)
    else:
        raise LabelError(f"a visible label is drawn on JPEG, PNG and WebP only, not {image_format}")
    return out.getvalue()
