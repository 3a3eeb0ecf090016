"""Pixel modes and colour: everything ends as 8-bit sRGB RGB without alpha."""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from typing import Final

from PIL import Image, ImageCms

from ._exceptions import ImageRejected

WHITE: Final = (255, 255, 255)

# Modes Pillow resamples correctly as they are (alpha is premultiplied internally).
_RESAMPLABLE: Final = frozenset({"RGB", "L", "CMYK", "RGBA", "LA"})
_SIMPLE_CONVERSIONS: Final = {
    "RGBa": "RGBA",
    "La": "LA",
    "PA": "RGBA",
    "RGBX": "RGB",
    "YCbCr": "RGB",
    "HSV": "RGB",
}
_PROFILE_SPACES: Final = {"RGB": "RGB ", "CMYK": "CMYK", "L": "GRAY"}


def resamplable(im: Image.Image) -> Image.Image:
    """The decoded image in an 8-bit mode that resizes correctly (maybe ``im`` itself)."""
    mode = im.mode
    keyed = "transparency" in im.info
    if mode in _RESAMPLABLE:
        # A tRNS colour key on RGB/L: turn it into alpha before pixels get mixed.
        return im.convert("RGBA") if keyed and mode in ("RGB", "L") else im
    if mode in ("P", "1"):
        if keyed:
            return im.convert("RGBA")
        return im.convert("L" if mode == "1" else "RGB")
    if mode in _SIMPLE_CONVERSIONS:
        return im.convert(_SIMPLE_CONVERSIONS[mode])
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _deep_to_l(im)
    raise ImageRejected(f"unsupported: colour mode {mode} cannot be converted to RGB")


def _deep_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit grey to 8-bit by scaling the full range (Pillow's convert clips)."""
    if im.mode == "F":
        _, high = im.getextrema()
        factor = 255.0 if isinstance(high, float) and high <= 1.0 else 1.0
        return im.point(lambda v: v * factor).convert("L")
    wide = im if im.mode == "I" else im.convert("I")
    _, high = wide.getextrema()
    if isinstance(high, int) and high <= 255 and im.mode == "I":
        return wide.convert("L")
    return wide.point(lambda v: v * (1 / 257)).convert("L")


def to_srgb(im: Image.Image, icc_profile: bytes | None) -> Image.Image:
    """Flatten transparency on white and convert to RGB, honouring an ICC profile."""
    if im.mode in ("RGBA", "LA"):
        im = _flatten(im)
    if icc_profile:
        transform = _srgb_transform(icc_profile, im.mode)
        if transform is not None:
            try:
                return transform.apply(im)
            except (ImageCms.PyCMSError, ValueError):
                pass  # an unusable profile: fall through to a plain conversion
    return im if im.mode == "RGB" else im.convert("RGB")


def _flatten(im: Image.Image) -> Image.Image:
    base = "L" if im.mode == "LA" else "RGB"
    background = Image.new(base, im.size, 255 if base == "L" else WHITE)
    background.paste(im.convert(base), mask=im.getchannel("A"))
    return background


class _TransformCache:
    """Small LRU of ICC -> sRGB transforms, keyed by the profile's digest.

    Building a transform costs milliseconds and a batch usually carries one
    camera's profile, so it is built once. Keys are digests so that large
    profiles are not kept alive.
    """

    def __init__(self, size: int = 16) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[bytes, str], ImageCms.ImageCmsTransform | None] = (
            OrderedDict()
        )

    def get(self, icc_profile: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
        key = (hashlib.sha256(icc_profile).digest(), mode)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        transform = _build_transform(icc_profile, mode)
        with self._lock:
            self._items[key] = transform
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return transform


def _build_transform(icc_profile: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """None when no conversion is needed or possible (then pixels are taken as sRGB)."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        if profile.profile.xcolor_space != _PROFILE_SPACES.get(mode):
            return None
        if mode == "RGB" and "srgb" in ImageCms.getProfileDescription(profile).lower():
            return None
        return ImageCms.buildTransform(
            profile,
            ImageCms.createProfile("sRGB"),
            mode,
            "RGB",
            renderingIntent=ImageCms.Intent.PERCEPTUAL,
            # lcms's one-pixel cache is not thread-safe; the transform is shared.
            flags=ImageCms.Flags.NOCACHE,
        )
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        # A broken or exotic profile is ignored rather than failing the photo.
        return None


_srgb_transform = _TransformCache().get
