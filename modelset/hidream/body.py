"""A submit's JSON body with the photo's file streamed into it as base64.

The API takes the photo inline, as base64 in the JSON body. Built whole, a send in flight
holds the photo twice more (the base64 text and the encoded body): 32 sends of 4 MB
photos held about 350 MB. Streamed, it holds one chunk, read from the file while the
request goes out with its length declared up front (no chunked encoding).
"""

from __future__ import annotations

import json
from base64 import b64encode
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

_CHUNK = 3 * 21_846  # about 64 KiB: whole base64 quanta, so no chunk but the last pads


class ImageFileBody:
    """``{"image": "<the file, base64>", **fields}``, as bytes sent a chunk at a time.

    Iterable once per attempt (each iteration reads the file again); ``headers`` give
    its length, fixed by the file's size when the body is made.
    """

    def __init__(self, path: Path, fields: dict[str, Any]) -> None:
        self._path = path
        self._size = path.stat().st_size
        self._head = b'{"image": "'
        self._tail = b'", ' + json.dumps(fields).encode()[1:]

    @property
    def headers(self) -> dict[str, str]:
        base64_length = 4 * -(-self._size // 3)
        return {"Content-Length": str(len(self._head) + base64_length + len(self._tail))}

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._head
        with self._path.open("rb") as photo:
            left = self._size
            while left:
                chunk = _read_exactly(photo, min(_CHUNK, left), self._path)
                left -= len(chunk)
                yield b64encode(chunk)
        yield self._tail


def _read_exactly(photo: BinaryIO, size: int, path: Path) -> bytes:
    chunk = photo.read(size)
    while len(chunk) < size:
        more = photo.read(size - len(chunk))
        if not more:
            raise OSError(f"{path} became shorter while it was being sent")
        chunk += more
    return chunk
