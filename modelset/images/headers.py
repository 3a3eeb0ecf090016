"""Declared image size straight from PNG and JPEG headers, before Pillow parses them.

Pillow refuses images above its own global limit while opening them, without
saying how large they claim to be; reading the size here first lets the bomb check
apply our per-call limit and name the declared dimensions.
"""

from __future__ import annotations

import struct
from typing import IO, Final

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE: Final = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})
_MAX_SEGMENTS: Final = 512


def declared_size(fh: IO[bytes], head: bytes) -> tuple[int, int] | None:
    """(width, height) the header declares, or None if unknown or not PNG/JPEG."""
    if head.startswith(_PNG_SIGNATURE) and head[12:16] == b"IHDR" and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
        return int(width), int(height)
    if head.startswith(b"\xff\xd8"):
        position = fh.tell()
        try:
            return _jpeg_size(fh)
        finally:
            fh.seek(position)
    return None


def _jpeg_size(fh: IO[bytes]) -> tuple[int, int] | None:
    # Walks marker segments up to the first frame header, reading 4 bytes per segment.
    fh.seek(2)
    for _ in range(_MAX_SEGMENTS):
        prefix = fh.read(1)
        if prefix != b"\xff":
            return None
        marker = fh.read(1)
        while marker == b"\xff":
            marker = fh.read(1)
        if not marker or marker[0] in (0xD9, 0xDA):
            return None
        if marker[0] in _JPEG_STANDALONE:
            continue
        length_bytes = fh.read(2)
        if len(length_bytes) < 2:
            return None
        length = int.from_bytes(length_bytes, "big")
        if marker[0] in _JPEG_SOF:
            frame = fh.read(5)
            if len(frame) < 5:
                return None
            height, width = struct.unpack(">HH", frame[1:5])
            return int(width), int(height)
        if length < 2:
            return None
        fh.seek(length - 2, 1)
    return None
