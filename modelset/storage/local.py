"""The folder store: keys are files below one local folder (the embedded default).

Writes are atomic (a temp file, then a rename). Create-if-absent is a hard link of the
finished temp file, which the kernel refuses when the name is taken. Compare-and-swap
holds a ``flock`` on the key's lock file while it compares and renames: it holds for
every process of this machine (and NFSv4), which is all a folder is shared by. The
ETag is the file's inode, change time and size: every write makes a new inode.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

from modelset import layout
from modelset.atomic import copy_stream, write_bytes
from modelset.storage._exceptions import AlreadyExists, NotFound, PreconditionFailed
from modelset.storage.base import CHUNK_SIZE, Blob, Chunks, Head


class FolderStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def __repr__(self) -> str:
        return f"FolderStore({str(self.root)!r})"

    @property
    def url(self) -> str:
        return str(self.root)

    @property
    def is_local(self) -> bool:
        return True

    def read(self, key: str) -> Blob:
        path = self._path(key)
        try:
            with path.open("rb") as handle:
                return Blob(handle.read(), _etag(os.fstat(handle.fileno())))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(f"{self.url}: no {key}") from None

    def head(self, key: str) -> Head:
        try:
            info = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{self.url}: no {key}") from None
        if not stat.S_ISREG(info.st_mode):
            raise NotFound(f"{self.url}: no {key}")
        return Head(info.st_size, _etag(info))

    def read_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Chunks:
        path = self._path(key)
        try:
            handle = path.open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(f"{self.url}: no {key}") from None
        return _chunks(handle, chunk_size)

    def read_start(self, key: str, size: int) -> bytes:
        try:
            with self._path(key).open("rb") as handle:
                return handle.read(size)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(f"{self.url}: no {key}") from None

    def write(self, key: str, data: bytes) -> str:
        path = self._path(key)
        write_bytes(path, data)
        return _etag(path.stat())

    def write_file(self, key: str, path: Path) -> str:
        target = self._path(key)
        with path.open("rb") as source:
            copy_stream(source, target)
        return _etag(target.stat())

    def create(self, key: str, data: bytes) -> str:
        path = self._path(key)
        if path.exists():  # the common refusal, without a durable write; link() decides
            raise AlreadyExists(f"{self.url}: {key} exists")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            write_bytes(tmp, data)
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise AlreadyExists(f"{self.url}: {key} exists") from None
        finally:
            tmp.unlink(missing_ok=True)
        return _etag(path.stat())

    def swap(self, key: str, data: bytes, etag: str) -> str:
        path = self._path(key)
        with self._locked(key):
            try:
                current = _etag(path.stat())
            except FileNotFoundError:
                raise PreconditionFailed(f"{self.url}: {key} is gone") from None
            if current != etag:
                raise PreconditionFailed(f"{self.url}: {key} changed")
            write_bytes(path, data)
            return _etag(path.stat())

    def list(self, prefix: str, limit: int | None = None) -> list[str]:
        return sorted(self._files(prefix))[:limit]

    def list_etags(self, prefix: str, limit: int | None = None) -> dict[str, str]:
        etags = {}
        for key in self.list(prefix, limit):
            with suppress(FileNotFoundError):  # deleted since the walk
                etags[key] = _etag(self._path(key).stat())
        return etags

    def _files(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return
        # The swap's lock files are not objects: a bucket has none.
        locks = self.root / layout.LOCKS
        for folder, dirnames, files in os.walk(base):
            if Path(folder) == locks:
                dirnames[:] = []
                continue
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    continue
                yield Path(folder, name).relative_to(self.root).as_posix()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def presign(self, key: str, expires: timedelta) -> str | None:
        check_key(key)
        return None

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        lock = self.root / layout.LOCKS / hashlib.sha256(key.encode()).hexdigest()[:24]
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock.open("a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def check_key(key: str) -> str:
    """A key is a relative ``/`` path with no ``..``: it never leaves the location."""
    parts = key.split("/")
    if key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"not a storage key: {key!r}")
    return key


def _chunks(handle: BinaryIO, chunk_size: int) -> Chunks:
    with handle:
        while chunk := handle.read(chunk_size):
            yield chunk


def _etag(info: os.stat_result) -> str:
    return f"{info.st_ino:x}-{info.st_mtime_ns:x}-{info.st_size:x}"
