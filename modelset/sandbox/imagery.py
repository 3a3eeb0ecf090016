"""Pillow work: checking uploaded photos and drawing the sandbox's generated images.

Everything here is deterministic: the same inputs give byte-identical images.
"""

from __future__ import annotations

import colorsys
import functools
import io
import math
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from modelset.sandbox._exceptions import PhotoError

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
ImageFormat = Literal["JPEG", "PNG", "WEBP"]
MAX_LONG_SIDE = 2048
ASPECT = 3 / 4
ASPECT_TOLERANCE = 0.01
POSE_SIZE = (768, 1024)
PREVIEW_SIZE = (384, 512)


def check_photo(data: bytes) -> None:
    """Check format, 3:4 shape, size limit and that the pixels decode."""
    try:
        img = Image.open(io.BytesIO(data))
    except Exception:  # Pillow raises many exception types for damaged files
        raise PhotoError("image does not decode") from None
    with img:
        width, height = img.size
        if img.format not in ACCEPTED_FORMATS:
            raise PhotoError(f"image format {img.format} is not supported (JPEG, PNG or WebP)")
        if abs(width / height - ASPECT) > ASPECT_TOLERANCE:
            raise PhotoError(f"image is {width}x{height}, width:height must be 3:4")
        if max(width, height) > MAX_LONG_SIDE:
            raise PhotoError(
                f"image is {width}x{height}, the long side must be at most {MAX_LONG_SIDE} px"
            )
        try:
            # A JPEG decodes at 1/8 scale here: enough to catch truncation, cheap at volume.
            img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            img.load()
        except Exception:
            raise PhotoError("image does not decode") from None


@dataclass(frozen=True)
class _View:
    """Which part of the photo one pose shows: zoom factor and centre as fractions."""

    zoom: float
    cx: float
    cy: float
    mirror: bool


_VIEWS = (
    _View(zoom=1.0, cx=0.5, cy=0.5, mirror=False),  # full figure
    _View(zoom=1.4, cx=0.5, cy=0.38, mirror=True),  # upper body
    _View(zoom=1.2, cx=0.45, cy=0.6, mirror=False),  # lower body
    _View(zoom=1.8, cx=0.5, cy=0.28, mirror=True),  # close-up
)


def _view(pose: int) -> _View:
    """Poses beyond the four base views zoom further in and flip the mirroring."""
    base = _VIEWS[(pose - 1) % len(_VIEWS)]
    lap = (pose - 1) // len(_VIEWS)
    return _View(
        zoom=base.zoom + 0.15 * lap,
        cx=base.cx,
        cy=base.cy,
        mirror=base.mirror != (lap % 2 == 1),
    )


def _tint(template_id: int) -> tuple[int, int, int]:
    hue = (template_id * 0.137) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.55, 1.0)
    return round(red * 255), round(green * 255), round(blue * 255)


def _crop(img: Image.Image, view: _View) -> Image.Image:
    width, height = img.size
    crop_w = min(width, height * ASPECT) / view.zoom
    crop_h = crop_w / ASPECT
    left = min(max(view.cx * width - crop_w / 2, 0), width - crop_w)
    top = min(max(view.cy * height - crop_h / 2, 0), height - crop_h)
    box = (round(left), round(top), round(left + crop_w), round(top + crop_h))
    return img.crop(box)


def _caption(img: Image.Image, text: str) -> None:
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=26)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x, y = 20, img.height - (bottom - top) - 36
    draw.rectangle((x - 10, y - 8, x + right - left + 10, y + bottom - top + 8), fill=(20, 20, 20))
    draw.text((x - left, y - top), text, font=font, fill=(255, 255, 255))


def _encoded(img: Image.Image, image_format: ImageFormat = "JPEG") -> bytes:
    buffer = io.BytesIO()
    if image_format == "PNG":
        img.save(buffer, format="PNG")
    else:
        img.save(buffer, format=image_format, quality=88)
    return buffer.getvalue()


def render_pose(
    photo: bytes, template_id: int, pose: int, image_format: ImageFormat = "JPEG"
) -> bytes:
    """One image of a generated set: a crop of the photo, graded for the template."""
    view = _view(pose)
    with Image.open(io.BytesIO(photo)) as img:
        img.draft("RGB", (math.ceil(POSE_SIZE[0] * view.zoom), math.ceil(POSE_SIZE[1] * view.zoom)))
        source = img.convert("RGB")
    frame = _crop(source, view).resize(POSE_SIZE, Image.Resampling.LANCZOS)
    if view.mirror:
        frame = ImageOps.mirror(frame)
    frame = Image.blend(frame, Image.new("RGB", POSE_SIZE, _tint(template_id)), 0.22)
    frame = ImageEnhance.Contrast(frame).enhance(1.1)
    _caption(frame, f"T{template_id} · pose {pose}")
    return _encoded(frame, image_format)


@functools.lru_cache(maxsize=128)
def render_template_preview(template_id: int, gender: str) -> bytes:
    """A stick-figure pose on the template's colour, labelled with its id."""
    width, height = PREVIEW_SIZE
    red, green, blue = _tint(template_id)
    img = Image.new("RGB", PREVIEW_SIZE, (red // 2 + 128, green // 2 + 128, blue // 2 + 128))
    draw = ImageDraw.Draw(img)
    ink = (40, 40, 40)
    cx, neck, hip = width // 2, 150, 300
    draw.ellipse((cx - 32, 70, cx + 32, 140), fill=ink)
    draw.line((cx, neck, cx, hip), fill=ink, width=14)
    arm = math.radians(20 + (template_id * 37) % 120)
    for side in (-1, 1):
        hand = (cx + side * 95 * math.sin(arm), neck + 20 + 95 * math.cos(arm))
        draw.line((cx, neck + 20, *hand), fill=ink, width=10)
        draw.line((cx, hip, cx + side * (30 + template_id % 4 * 12), 440), fill=ink, width=12)
    if gender == "woman":
        draw.polygon(((cx - 18, 210), (cx + 18, 210), (cx + 70, 360), (cx - 70, 360)), fill=ink)
    font = ImageFont.load_default(size=28)
    draw.text((24, height - 56), f"template {template_id}", font=font, fill=(255, 255, 255))
    return _encoded(img)
