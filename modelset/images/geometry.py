"""Pure geometry: where to cut, how big to make it, and EXIF orientation maths."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from PIL import Image

from .options import Fit
from .rules import ASPECT_TOLERANCE, TARGET_RATIO

Box = tuple[float, float, float, float]
Size = tuple[int, int]

TOP_BIAS: Final = 0.10
"""Share of a too-tall photo's excess height cut from the top (the rest from the
bottom): heads sit near the top of model photos, feet are expendable."""

TRANSPOSE: Final[dict[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""EXIF orientation -> the transpose that makes the stored pixels upright."""


@dataclass(frozen=True, slots=True)
class Layout:
    """The plan for one upload, in upright coordinates.

    ``box`` (a region of the upright source) is resampled to ``size`` and placed
    at ``offset`` on a white ``canvas``; for CROP the canvas is just ``size``.
    """

    box: Box
    size: Size
    canvas: Size
    offset: Size

    @property
    def scale(self) -> float:
        """Output pixels per source pixel (<= 1; never upscales)."""
        return self.size[1] / (self.box[3] - self.box[1])

    @property
    def padded(self) -> bool:
        return self.canvas != self.size


def is_three_by_four(width: float, height: float) -> bool:
    return abs(width / height - TARGET_RATIO) <= ASPECT_TOLERANCE


def plan(width: int, height: int, *, fit: Fit, max_side: int) -> Layout:
    """Plan a 3:4 output no taller than ``max_side`` for an upright ``width`` x ``height``.

    The output's width/height is within ASPECT_TOLERANCE of 3/4 for every
    input of at least 64 px on the short side when ``max_side >= 64``.
    """
    whole: Box = (0.0, 0.0, float(width), float(height))
    if is_three_by_four(width, height) or fit is Fit.CROP:
        if is_three_by_four(width, height) and height <= max_side:
            return _simple(whole, (width, height))
        box = _crop_box(width, height)
        if box[3] - box[1] > max_side:
            return _simple(box, _portrait(max_side))
        return _simple(*_whole_pixels(width, height))
    return _pad(width, height, max_side)


def _simple(box: Box, size: Size) -> Layout:
    return Layout(box=box, size=size, canvas=size, offset=(0, 0))


def _portrait(height: int) -> Size:
    return (max(1, round(height * TARGET_RATIO)), height)


def _crop_box(width: int, height: int) -> Box:
    """The exact 3:4 window: centred horizontally, top-biased vertically."""
    if width / height > TARGET_RATIO:
        kept = height * TARGET_RATIO
        left = (width - kept) / 2
        return (left, 0.0, left + kept, float(height))
    kept = width / TARGET_RATIO
    top = (height - kept) * TOP_BIAS
    return (0.0, top, float(width), top + kept)


def _whole_pixels(width: int, height: int) -> tuple[Box, Size]:
    """The crop window snapped to whole pixels, for a pure crop without resampling."""
    if width / height > TARGET_RATIO:
        kept = min(width, max(1, round(height * TARGET_RATIO)))
        left = (width - kept) // 2
        return (float(left), 0.0, float(left + kept), float(height)), (kept, height)
    kept = min(height, max(1, round(width / TARGET_RATIO)))
    top = round((height - kept) * TOP_BIAS)
    return (0.0, float(top), float(width), float(top + kept)), (width, kept)


def _pad(width: int, height: int, max_side: int) -> Layout:
    too_wide = width / height > TARGET_RATIO
    canvas_height = width / TARGET_RATIO if too_wide else float(height)
    if canvas_height <= max_side:
        canvas = (
            (width, round(canvas_height)) if too_wide else (round(height * TARGET_RATIO), height)
        )
        size = (width, height)
    else:
        canvas = _portrait(max_side)
        factor = min(canvas[0] / width, canvas[1] / height)
        size = (
            min(canvas[0], max(1, round(width * factor))),
            min(canvas[1], max(1, round(height * factor))),
        )
    offset = ((canvas[0] - size[0]) // 2, (canvas[1] - size[1]) // 2)
    return Layout(
        box=(0.0, 0.0, float(width), float(height)), size=size, canvas=canvas, offset=offset
    )


def stored_size(upright: Size, orientation: int | None) -> Size:
    """Size in the file's stored orientation of something ``upright`` in size."""
    return (upright[1], upright[0]) if orientation in (5, 6, 7, 8) else upright


def stored_box(box: Box, orientation: int | None, stored: Size) -> Box:
    """Map a box in upright coordinates to the stored (pre-orientation) pixels."""
    (x0, y0), (x1, y1) = (
        _to_stored(box[0], box[1], orientation, stored),
        _to_stored(box[2], box[3], orientation, stored),
    )
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def _to_stored(u: float, v: float, orientation: int | None, stored: Size) -> tuple[float, float]:
    width, height = stored
    match orientation:
        case 2:
            return width - u, v
        case 3:
            return width - u, height - v
        case 4:
            return u, height - v
        case 5:
            return v, u
        case 6:
            return v, height - u
        case 7:
            return width - v, height - u
        case 8:
            return width - v, u
        case _:
            return u, v


def draft_request(stored: Size, scale: float) -> Size | None:
    """Size to ask a JPEG decoder for (DCT scaling), or None when not worth it.

    The decoder picks the largest 1/2, 1/4 or 1/8 reduction still at least this
    big, so the kept region never ends up smaller than the planned output.
    """
    if scale > 0.5:
        return None
    return (math.ceil(stored[0] * scale), math.ceil(stored[1] * scale))
