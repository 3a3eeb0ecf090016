"""Crash-safe writes, for every file the project writes: a temp file beside the
destination, flushed to disk, then os.replace, so a crash never leaves half a file."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO, Final

_CHUNK: Final = 1 << 20


@contextmanager
def _atomic(dest: Path, *, durable: bool = True) -> Iterator[BinaryIO]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.tmp")
    try:
        with tmp.open("xb") as fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(dest: Path, data: bytes, *, durable: bool = True) -> str:
    """Write ``data`` to ``dest`` atomically; return its sha256 hex digest.

    ``durable`` False skips the fsync: still never half a file, but a power cut may lose
    the write (fine for the sandbox's hot path, not for the ledger).
    """
    with _atomic(dest, durable=durable) as fh:
        fh.write(data)
    return hashlib.sha256(data).hexdigest()


def write_text(dest: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``dest`` atomically."""
    write_bytes(dest, text.encode("utf-8"))


def copy_stream(src: IO[bytes], dest: Path) -> tuple[str, int]:
    """Copy ``src`` from its start to ``dest`` atomically; return (sha256 hex, size)."""
    digest = hashlib.sha256()
    size = 0
    src.seek(0)
    with _atomic(dest) as fh:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            fh.write(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
