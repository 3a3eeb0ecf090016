"""The knobs of prepare_image."""

from __future__ import annotations

from enum import StrEnum


class Policy(StrEnum):
    """What to do with a photo that cannot be sent as-is."""

    FIX = "fix"
    """Make it valid: upright, RGB, 3:4, at most max_side, no metadata, JPEG."""
    STRICT = "strict"
    """Never change its pixels: refuse it unless the geometry is already valid."""


class Fit(StrEnum):
    """How FIX reaches 3:4."""

    CROP = "crop"
    """Cut the excess: centred for too-wide, near the top for too-tall photos."""
    PAD = "pad"
    """Keep the whole photo and add white bars."""
