"""One-line, human reasons for files that cannot be read as images."""

from __future__ import annotations

import re
from typing import Final

from modelset.signatures import AVIF_BRANDS, IMAGE_SIGNATURES, image_format, is_heif

_FOREIGN_MAGIC: Final[tuple[tuple[bytes, str], ...]] = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"8BPS", "a Photoshop document"),
    (b"%!PS", "a PostScript document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
    (b"\xff\x0a", "a JPEG XL image"),
    (b"\x00\x00\x00\x0cJXL ", "a JPEG XL image"),
    (b"\x00\x00\x01\x00", "an ICO icon"),
    (b"\x7fELF", "an executable"),
    (b"MZ", "an executable"),
)

_MAX_DETAIL: Final = 120


def describe_unidentified(head: bytes) -> str:
    """Reason for a non-empty file that no accepted image plugin recognised."""
    for magic, name in IMAGE_SIGNATURES:
        if head.startswith(magic):
            return f"corrupt image: {name} signature but the header is unreadable"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "corrupt image: WebP signature but the header is unreadable"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if is_heif(head):
            return "corrupt image: HEIF signature but the header is unreadable"
        if brand in AVIF_BRANDS:
            return "corrupt image: AVIF signature but the header is unreadable"
        return "not an image: unrecognised format (looks like a video/MP4 file)"
    for magic, name in _FOREIGN_MAGIC:
        if head.startswith(magic):
            return f"not an image: unrecognised format (looks like {name})"
    looks_like = _text_kind(head)
    if looks_like:
        return f"not an image: unrecognised format (looks like {looks_like})"
    return "not an image: unrecognised format"


def _text_kind(head: bytes) -> str | None:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<!doctype html") or b"<html" in text or b"<head" in text:
        return "HTML"
    if b"<svg" in text:
        return "SVG, a vector image"
    if text.startswith(b"<?xml"):
        return "XML"
    if text[:1] in (b"{", b"["):
        return "JSON"
    decoded = _utf8(head)
    if decoded and all(ch.isprintable() or ch in "\t\r\n" for ch in decoded):
        return "text"
    return None


def _utf8(sample: bytes) -> str | None:
    # The sample may end in the middle of a multi-byte character: allow up to 3 cut bytes.
    for cut in range(4):
        try:
            return sample[: len(sample) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def decode_failure(exc: BaseException, image_format: str) -> str:
    """Reason for an exception raised while parsing or decoding pixel data."""
    message = " ".join(str(exc).split())
    lowered = message.lower()
    if "truncated" in lowered or "end of file" in lowered or isinstance(exc, EOFError):
        return f"corrupt image: truncated {image_format} data"
    if "broken data stream" in lowered or "unrecognized data stream" in lowered:
        return f"corrupt image: broken {image_format} data stream"
    detail = message[:_MAX_DETAIL] or type(exc).__name__
    return f"corrupt image: cannot decode {image_format} data ({detail})"


_PILLOW_BOMB = re.compile(r"\((\d+) pixels\)")


def megapixels(pixels: int) -> str:
    """``2500`` for 2.5e9, ``1.5`` for 1.5e6, ``0.001`` for 1000."""
    value = pixels / 1_000_000
    return f"{value:.0f}" if value >= 10 else f"{value:.3g}"


def bomb(width: int, height: int, max_pixels: int, *, frame: int | None = None) -> str:
    where = "" if frame is None else f"frame {frame} declares "
    return (
        f"decompression bomb: {where}{width}x{height} = {megapixels(width * height)} Mpx "
        f"exceeds the {megapixels(max_pixels)} Mpx limit"
    )


def pillow_bomb(exc: BaseException, max_pixels: int, pillow_limit: int | None) -> str:
    """Reason for Pillow's own DecompressionBombError (raised before we see the size)."""
    found = _PILLOW_BOMB.search(str(exc))
    declared = int(found.group(1)) if found else None
    limit = max_pixels
    if pillow_limit is not None and (declared is None or declared <= max_pixels):
        limit = min(max_pixels, pillow_limit)
    what = f"declares {megapixels(declared)} Mpx, which " if declared is not None else ""
    return f"decompression bomb: {what}exceeds the {megapixels(limit)} Mpx limit"


def sniff_format(head: bytes) -> str:
    """Best guess of the format from the signature, for messages only."""
    return image_format(head) or "image"
