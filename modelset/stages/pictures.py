"""Small pictures the stages make on the way: thumbnails of uploads and of generated
images, for the report and the run's summary."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from modelset.report import input_thumbnail_key
from modelset.storage import Store, read_or_none

OUTPUT_THUMBNAIL = (96, 128)


def stored_preview(store: Store, source_sha256: str) -> Image.Image | None:
    """A prepared photo's preview (its input thumbnail) as stored, or None if it is gone."""
    blob = read_or_none(store, input_thumbnail_key(source_sha256))
    if blob is None:
        return None
    with Image.open(io.BytesIO(blob.data)) as preview:
        return preview.convert("RGB")


def small_image(image_file: Path | io.BytesIO, size: tuple[int, int]) -> Image.Image:
    """An image shrunk to fit ``size``, decoded at a reduced scale where the format allows
    (a JPEG at 1/8: the decode is most of the cost)."""
    with Image.open(image_file) as image:
        image.draft("RGB", size)
        image.thumbnail(size)
        return image.convert("RGB")


def jpeg_bytes(image: Image.Image) -> bytes:
    encoded = io.BytesIO()
    image.save(encoded, "JPEG", quality=80)
    return encoded.getvalue()


def thumbnail_jpeg(image_file: Path | io.BytesIO, size: tuple[int, int]) -> bytes:
    """A small JPEG of an image."""
    return jpeg_bytes(small_image(image_file, size))


class SetPictures:
    """Small JPEGs of the images of the sets a run's summary will show, made as each image
    arrives, from the bytes in hand, by the worker thread that stores it.

    The summary then has nothing to read back or decode at the end of the run, where that
    work (about 6 ms per set of four) would hold up the run's last moment. Bounded by the
    sets asked for (at most the summary's 200 rows, a few KB each).
    """

    def __init__(self) -> None:
        self._folders: set[str] = set()
        self.made: dict[str, bytes] = {}  # output key -> JPEG of OUTPUT_THUMBNAIL size

    def want(self, folders: Iterable[str]) -> None:
        """Sets by their folder (``<item>/<template_id>``) to make pictures of."""
        self._folders.update(folders)

    def wants(self, output: str) -> bool:
        return output.rpartition("/")[0] in self._folders
