"""Frame counts and declared frame sizes, read from headers without decoding."""

from __future__ import annotations

import struct
from typing import IO

from PIL import Image

from ._exceptions import ImageRejected
from .reasons import bomb


def count_frames(im: Image.Image, fh: IO[bytes], *, max_pixels: int) -> int:
    """Count frames (1 for a still image); refuse any frame declaring > ``max_pixels``.

    GIF frames can declare extents larger than the logical screen, which Pillow
    grows the canvas to when it reaches them; TIFF pages each have their own
    size. Other multi-frame formats (APNG, animated WebP, MPO) are bounded by
    the first frame's canvas, which the caller has already checked.
    """
    if im.format == "GIF":
        return gif_frames(fh, max_pixels=max_pixels)
    if im.format == "TIFF":
        return _tiff_frames(im, max_pixels=max_pixels)
    return max(1, int(getattr(im, "n_frames", 1)))


def gif_frames(fh: IO[bytes], *, max_pixels: int) -> int:
    """Count a GIF's frames, refusing any whose extent grows the canvas past ``max_pixels``.

    Walks the block structure only (image data sub-blocks are skipped, never
    LZW-decoded), so it is linear in the file size and allocates nothing. Safe to
    run before Pillow opens the file, which then never sees a bomb frame.
    """
    position = fh.tell()
    try:
        fh.seek(0)
        header = fh.read(13)
        if len(header) < 13:
            return 1
        _skip_colour_table(fh, header[10])
        width, height = struct.unpack("<2H", header[6:10])
        if width * height > max_pixels:
            raise ImageRejected(bomb(width, height, max_pixels))
        count = 0
        while block := fh.read(1):
            if block == b";":
                break
            if block == b"!":
                fh.read(1)
                _skip_sub_blocks(fh)
            elif block == b",":
                descriptor = fh.read(9)
                if len(descriptor) < 9:
                    break
                count += 1
                x0, y0, w, h = struct.unpack("<4H", descriptor[:8])
                width, height = max(width, x0 + w), max(height, y0 + h)
                if width * height > max_pixels:
                    raise ImageRejected(bomb(width, height, max_pixels, frame=count))
                _skip_colour_table(fh, descriptor[8])
                fh.read(1)  # LZW minimum code size
                _skip_sub_blocks(fh)
            # Any other byte is junk between blocks; Pillow skips it too.
        return max(1, count)
    finally:
        fh.seek(position)


def _skip_colour_table(fh: IO[bytes], flags: int) -> None:
    if flags & 0x80:
        fh.seek(3 << ((flags & 0x07) + 1), 1)


def _skip_sub_blocks(fh: IO[bytes]) -> None:
    while (length := fh.read(1)) and length[0]:
        fh.seek(length[0], 1)


def _tiff_frames(im: Image.Image, *, max_pixels: int) -> int:
    # TIFF seek() only parses the page's IFD: no pixel data is read.
    count = max(1, int(getattr(im, "n_frames", 1)))
    if count > 1:
        for index in range(count):
            im.seek(index)
            width, height = im.size
            if width * height > max_pixels:
                raise ImageRejected(bomb(width, height, max_pixels, frame=index + 1))
        im.seek(0)
    return count
