"""Image checking and preparation for HiDream's model image set API (core layer).

Only 3:4 images with a long side of at most 2048 px are accepted upstream; see
docs/images.md for the rules and what happens to awkward files.
"""

from ._exceptions import ImageRejected
from .check import ImageCheck, inspect_image
from .options import Fit, Policy
from .prepare import PREPARATION_VERSION, THUMBNAIL_SIZE, PreparedImage, prepare_image
from .rules import ASPECT_TOLERANCE, MAX_LONG_SIDE

__all__ = [
    "ASPECT_TOLERANCE",
    "MAX_LONG_SIDE",
    "PREPARATION_VERSION",
    "THUMBNAIL_SIZE",
    "Fit",
    "ImageCheck",
    "ImageRejected",
    "Policy",
    "PreparedImage",
    "inspect_image",
    "prepare_image",
]
