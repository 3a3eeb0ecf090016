"""The numbers the HiDream model-image-set API imposes (see docs/images.md)."""

from __future__ import annotations

from functools import cache
from typing import Final

from PIL import Image

TARGET_RATIO: Final = 3 / 4
"""Width / height of every upload (3:4 portrait)."""

ASPECT_TOLERANCE: Final = 0.01
"""An image is 3:4 when ``abs(width / height - 3/4) <= ASPECT_TOLERANCE``."""

MAX_LONG_SIDE: Final = 2048
"""Largest long side the API takes ("2K"): 1536x2048 at most."""

MIN_SHORT_SIDE: Final = 64
"""Smaller sources are refused: nothing useful can be generated from them."""

DEFAULT_MAX_PIXELS: Final = 100_000_000
"""Declared width x height above this is treated as a decompression bomb."""

UPLOAD_FORMATS: Final = frozenset({"JPEG", "PNG"})
"""Formats sent to the API."""


def _open_formats() -> tuple[str, ...]:
    # Only well-known photo formats are parsed at all: Pillow's long tail of
    # plugins (EPS runs Ghostscript, FLI, SGI, ...) is attack surface for no gain.
    wanted = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "AVIF")
    Image.init()
    return tuple(name for name in wanted if name in Image.OPEN)


OPEN_FORMATS: Final = _open_formats()
"""Formats read as input (MPO is opened through the JPEG plugin), HEIF aside."""


@cache
def heif_formats() -> tuple[str, ...]:
    """The formats to open a HEIC/HEIF file with (what phones save), read through
    pillow-heif's own libheif. Registered on the first such file, not at start (loading
    libheif costs 60 ms). Only the primary image is decoded: depth maps, auxiliary images
    and embedded thumbnails are never read, so they cost nothing and cannot reach an
    upload."""
    from pillow_heif import register_heif_opener

    register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
    return ("HEIF",)
