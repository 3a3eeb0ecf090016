"""The image formats modelset reads, told by a file's first bytes.

Outside ``modelset.images`` on purpose: discovery tells images from other files with it,
and must not import Pillow to do so (the CLI finds the photos before it loads anything).
"""

from __future__ import annotations

from typing import Final

SIGNATURE_BYTES: Final = 32
"""Enough of a file's start for :func:`image_format` to tell every format it knows."""

IMAGE_SIGNATURES: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
HEIF_BRANDS: Final = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"heim"})
AVIF_BRANDS: Final = frozenset({b"avif", b"avis"})
# The sizes of the header a BMP's pixels are described by (as Pillow reads them): "BM"
# alone starts too many text files.
_BMP_HEADER_SIZES: Final = frozenset({12, 40, 52, 56, 64, 108, 124})


def image_format(head: bytes) -> str | None:
    """The format of the image that ``head`` (a file's first :data:`SIGNATURE_BYTES`)
    starts, among those modelset reads; None for anything else."""
    for signature, name in IMAGE_SIGNATURES:
        if head.startswith(signature):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    if is_heif(head):
        return "HEIF"
    if head[4:8] == b"ftyp" and head[8:12] in AVIF_BRANDS:
        return "AVIF"
    return None


def is_heif(head: bytes) -> bool:
    """Whether the file's first bytes are an ISO box of a HEIC/HEIF brand."""
    return head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS
