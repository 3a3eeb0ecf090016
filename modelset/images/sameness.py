"""Whether two previews whose looks match are the same picture, region by region.

A look (``looks.py``) sums a photo up in 64 bits and 12 colours: two products shot on
the same model, in the same pose and studio, share it when they differ only on the
garment. So a look's match is only a candidate. It is confirmed here:

1. **Aligned.** The second preview is scaled (``SCALES``: a crop of up to 5 % at an edge,
   which preparation turns back into 3:4) and shifted (up to ``MAX_SHIFT`` of the side)
   to where it fits the first best, searched coarsely on 60x80 grey pixels and then
   refined on 120x160.
2. **Compared region by region.** At 120x160, each pixel's colour is compared with the
   closest of the other picture's 3x3 neighbours (in both directions), so an edge a
   fraction of a pixel off after alignment costs nothing, and a print, a stripe or a
   recoloured sleeve does. The differences are averaged over every ``REGION``-pixel
   square; the largest is the pictures' **difference**.

Two previews are the same picture when their difference is at most
``MAX_REGION_DIFFERENCE`` (picked from ``tests/test_looks_measured.py``; see
``docs/images.md``). This costs a few milliseconds a pair, and is only made for the
candidates the look finds.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image

MAX_REGION_DIFFERENCE: Final = 24.0
"""Largest mean colour difference (0-255, the largest channel's) of one region."""

REGION_SHARE: Final = 0.05
"""Side of a compared square, as a share of the width (6 pixels of the 120x160)."""

SCALES: Final = tuple(1 + step / 100 for step in range(-5, 6))
MAX_SHIFT: Final = 0.07
"""Largest shift tried, as a share of each side."""

_FINE: Final = (120, 160)
_FINE_STEP: Final = 0.005
_FITS_JUDGED: Final = 5


def same_picture(first: Image.Image, second: Image.Image) -> bool:
    """Whether two previews (prepared pixels fitted into 240x320) are one picture."""
    return difference(first, second) <= MAX_REGION_DIFFERENCE


def difference(first: Image.Image, second: Image.Image) -> float:
    """The largest mean difference of one region once the two are aligned (0-255)."""
    # Compared no finer than the smaller preview (a small photo's copy has less detail).
    width = min(_FINE[0], first.width, second.width)
    fine = (width, round(width / _FINE[0] * _FINE[1]))
    coarse = (fine[0] // 2, fine[1] // 2)
    coarse_first = _grey(first, coarse)
    reach = round(MAX_SHIFT * coarse[0])
    best: tuple[float, float, int, int] | None = None
    for scale in SCALES:
        scaled = _grey(second, _scaled(coarse, scale))
        for dx, dy in _shifts(0, 0, reach):
            score = _mismatch(coarse_first, scaled, dx, dy)
            if best is None or score < best[0]:
                best = (score, scale, dx, dy)
    assert best is not None
    _, coarse_scale, coarse_dx, coarse_dy = best
    fine_first = _colours(first, fine)
    grey_first = fine_first.max(axis=2)
    fits = []
    for step in range(-2, 3):
        scale = coarse_scale + step * _FINE_STEP
        fine_second = _colours(second, _scaled(fine, scale))
        grey_second = fine_second.max(axis=2)
        for dx, dy in _shifts(2 * coarse_dx, 2 * coarse_dy, 2):
            fits.append((_mismatch(grey_first, grey_second, dx, dy), scale, dx, dy))
    # The closest fits on average, judged by their worst region: an edge is never sampled
    # exactly alike, and the fit that is best on average may leave one region a pixel off.
    region = max(3, round(fine[0] * REGION_SHARE))
    return min(
        _worst_region(fine_first, _colours(second, _scaled(fine, scale)), dx, dy, region)
        for _, scale, dx, dy in sorted(fits)[:_FITS_JUDGED]
    )


def _worst_region(
    first: NDArray[np.float32], second: NDArray[np.float32], dx: int, dy: int, region: int
) -> float:
    a, b = _overlap(first, second, dx, dy)
    if min(a.shape[:2]) < 2 * region:
        return float("inf")
    per_pixel = np.maximum(_outside_neighbours(a, b), _outside_neighbours(b, a))
    return _largest_region_mean(per_pixel, region)


def _scaled(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return round(size[0] * scale), round(size[1] * scale)


def _grey(image: Image.Image, size: tuple[int, int]) -> NDArray[np.float32]:
    return np.asarray(image.convert("L").resize(size, Image.Resampling.BOX), dtype=np.float32)


def _colours(image: Image.Image, size: tuple[int, int]) -> NDArray[np.float32]:
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return np.asarray(rgb.resize(size, Image.Resampling.BOX), dtype=np.float32)


def _shifts(x: int, y: int, reach: int) -> list[tuple[int, int]]:
    return [(x + dx, y + dy) for dx in range(-reach, reach + 1) for dy in range(-reach, reach + 1)]


def _overlap(
    a: NDArray[np.float32], b: NDArray[np.float32], dx: int, dy: int
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """The parts of ``a`` and ``b`` that cover each other when ``b`` is moved by
    (dx, dy): ``a[y, x]`` beside ``b[y - dy, x - dx]``."""
    height = min(a.shape[0], b.shape[0] + dy) - max(0, dy)
    width = min(a.shape[1], b.shape[1] + dx) - max(0, dx)
    if height <= 0 or width <= 0:
        return a[:0, :0], b[:0, :0]
    ay, ax = max(0, dy), max(0, dx)
    by, bx = max(0, -dy), max(0, -dx)
    return a[ay : ay + height, ax : ax + width], b[by : by + height, bx : bx + width]


def _mismatch(a: NDArray[np.float32], b: NDArray[np.float32], dx: int, dy: int) -> float:
    """Mean difference where the two overlap; no overlap to speak of is no fit."""
    first, second = _overlap(a, b, dx, dy)
    if first.size < a.size // 2:
        return float("inf")
    return float(np.abs(first - second).mean())


def _outside_neighbours(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
    """Per inner pixel of ``a``: how far its colour lies outside the range of ``b``'s 3x3
    neighbours, channel by channel (the largest). A pixel that an edge, sampled a fraction
    of a pixel elsewhere, blends from its neighbours lies inside it (Birchfield and
    Tomasi's sampling-insensitive dissimilarity)."""
    inner = a[1:-1, 1:-1]
    height, width = inner.shape[:2]
    low = np.full(inner.shape, np.inf, dtype=np.float32)
    high = np.full(inner.shape, -np.inf, dtype=np.float32)
    for y in range(3):
        for x in range(3):
            neighbour = b[y : y + height, x : x + width]
            low, high = np.minimum(low, neighbour), np.maximum(high, neighbour)
    outside: NDArray[np.float32] = np.maximum(np.maximum(inner - high, low - inner), 0).max(axis=2)
    return outside


def _largest_region_mean(values: NDArray[np.float32], side: int) -> float:
    """The largest mean of ``values`` over any ``side`` x ``side`` square."""
    sums = np.zeros((values.shape[0] + 1, values.shape[1] + 1), dtype=np.float64)
    sums[1:, 1:] = values.cumsum(axis=0).cumsum(axis=1)
    squares = sums[side:, side:] - sums[:-side, side:] - sums[side:, :-side] + sums[:-side, :-side]
    return float(squares.max() / (side * side))
