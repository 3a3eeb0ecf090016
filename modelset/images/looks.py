"""What a prepared photo looks like, and which photos already paid for look the same.

A *look* is two fingerprints of the prepared pixels (upright, 3:4, sRGB):

- its **shape**, the 64-bit perceptual hash of ImageHash (``phash``: the lowest 8x8 DCT
  frequencies of a 32x32 grey image against their median), which survives re-encoding,
  resizing, format changes, stripped metadata and a small crop, but not a mirror;
- its **colours**, the mean sRGB colour of a 3x4 grid of cells, because the shape is
  computed from grey levels and a team wants the red dress and the blue dress of the
  same shoot generated separately.

Two looks match when the shapes differ in at most ``MAX_SHAPE_DISTANCE`` bits and no
cell's channel differs by more than ``MAX_COLOUR_DIFFERENCE`` (thresholds picked from the
measurements in ``docs/images.md``). A match is a candidate only: two products shot alike
share a look, and ``sameness.py`` compares the previews region by region before a photo
is taken for a copy.

This module needs no numpy; the hash and the index are in ``likeness.py``, imported
by the first photo that needs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from PIL import Image

LOOK_VERSION: Final = 1
"""Part of every stored look's name: a look of another version is never compared."""

MAX_SHAPE_DISTANCE: Final = 12
"""Bits of the 64-bit perceptual hash two looks may differ by."""
MAX_COLOUR_DIFFERENCE: Final = 20
"""Largest difference of one cell's mean red, green or blue (0-255)."""

GRID: Final = (3, 4)
COLOUR_BYTES: Final = GRID[0] * GRID[1] * 3


@dataclass(frozen=True)
class Look:
    shape: int
    """The 64-bit perceptual hash."""
    colours: bytes
    """Mean R, G, B of each cell of a 3x4 grid, row by row."""

    def __str__(self) -> str:
        return f"{self.shape:016x}{self.colours.hex()}"

    @classmethod
    def parse(cls, text: str) -> Look:
        """The look :func:`str` wrote; ValueError for anything else."""
        if len(text) != 16 + 2 * COLOUR_BYTES:
            raise ValueError(f"not a look: {text!r}")
        return cls(int(text[:16], 16), bytes.fromhex(text[16:]))

    def distance(self, other: Look) -> int | None:
        """Bits the shapes differ by, when the two looks match; else None."""
        bits = (self.shape ^ other.shape).bit_count()
        if bits > MAX_SHAPE_DISTANCE:
            return None
        colours = max(abs(a - b) for a, b in zip(self.colours, other.colours, strict=True))
        return bits if colours <= MAX_COLOUR_DIFFERENCE else None


def look_of(preview: Image.Image) -> Look:
    """The look of a prepared photo, from its preview (its pixels fitted into 240x320,
    the input thumbnail): both fingerprints are made from far fewer pixels than that."""
    rgb = preview if preview.mode == "RGB" else preview.convert("RGB")
    colours = rgb.resize(GRID, Image.Resampling.BOX).tobytes()
    from .likeness import perceptual_hash

    return Look(perceptual_hash(rgb), colours)
