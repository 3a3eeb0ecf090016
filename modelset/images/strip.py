"""Lossless metadata removal: drop JPEG segments / PNG chunks, keep the pixel data as is.

STRICT promises not to change pixels, so a photo that is valid but carries EXIF/GPS
gets these removed without re-encoding. Each function returns None when the file
does not have the structure it expects; the caller then re-encodes instead.
"""

from __future__ import annotations

import struct
from typing import Final

_SOI: Final = b"\xff\xd8"
_EOI: Final = b"\xff\xd9"
_SOS: Final = 0xDA
_COM: Final = 0xFE
_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0..RST7
# Application segments that carry image semantics, by marker and payload prefix.
# Everything else in APP0..APP15 and COM (EXIF, XMP, IPTC, MPF, maker notes, ...) goes.
_KEPT_APP: Final = {
    0xE0: b"JFIF\x00",
    0xE2: b"ICC_PROFILE\x00",
    0xEE: b"Adobe",
}

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_PNG_KEPT_ANCILLARY: Final = frozenset(
    {b"tRNS", b"cHRM", b"gAMA", b"iCCP", b"sBIT", b"sRGB", b"cICP", b"mDCV", b"cLLI", b"pHYs"}
)


def strip_jpeg(data: bytes) -> bytes | None:
    """The JPEG without metadata segments or anything after the end-of-image marker."""
    if not data.startswith(_SOI):
        return None
    out = [_SOI]
    pos, end = 2, len(data)
    while pos < end:
        if data[pos] != 0xFF:
            return None
        while pos < end and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= end:
            return None
        marker = data[pos]
        pos += 1
        if marker == _EOI[1]:
            out.append(_EOI)
            return b"".join(out)
        if marker in _STANDALONE:
            out.append(bytes((0xFF, marker)))
            continue
        if pos + 2 > end:
            return None
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2 or pos + length > end:
            return None
        if _keep_segment(marker, data[pos + 2 : pos + length]):
            out.append(bytes((0xFF, marker)) + data[pos : pos + length])
        pos += length
        if marker == _SOS:
            scan_end = _entropy_end(data, pos)
            out.append(data[pos:scan_end])
            pos = scan_end
    return None  # no end-of-image marker


def _keep_segment(marker: int, payload: bytes) -> bool:
    if marker == _COM:
        return False
    if 0xE0 <= marker <= 0xEF:
        prefix = _KEPT_APP.get(marker)
        return prefix is not None and payload.startswith(prefix)
    return True


def _entropy_end(data: bytes, pos: int) -> int:
    """Offset of the first marker after entropy-coded data starting at ``pos``."""
    end = len(data)
    while True:
        found = data.find(b"\xff", pos)
        if found < 0 or found + 1 >= end:
            return end
        following = data[found + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:  # stuffed byte or restart
            pos = found + 2
            continue
        return found


def strip_png(data: bytes) -> bytes | None:
    """The PNG without text, EXIF or time chunks, or anything after IEND."""
    if not data.startswith(_PNG_SIGNATURE):
        return None
    out = [_PNG_SIGNATURE]
    pos, end = len(_PNG_SIGNATURE), len(data)
    while pos + 12 <= end:
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk_end = pos + 12 + length
        if chunk_end > end:
            return None
        critical = kind[:1].isupper()
        if critical or kind in _PNG_KEPT_ANCILLARY:
            out.append(data[pos:chunk_end])
        pos = chunk_end
        if kind == b"IEND":
            return b"".join(out)
    return None
