"""The sha256 of local photos (what the exactly-once key is made of), a thread per core.

``modelset run`` starts hashing its photos (:func:`start_hashing`) while Prefect is being
imported; the flow then takes each hash from there (:func:`hash_file`), as long as the file
is unchanged: same inode, size and modification time as when it was hashed.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

_CHUNK = 1024 * 1024
_Identity = tuple[str, int, int, int]
_started: dict[_Identity, Future[str]] = {}
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _identity(path: Path) -> _Identity:
    info = path.stat()
    return (str(path), info.st_ino, info.st_size, info.st_mtime_ns)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)  # large updates release the GIL
    return digest.hexdigest()


def _threads() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="hash")
        return _pool


def start_hashing(paths: Iterable[Path]) -> None:
    """Hash these files in the background, for :func:`hash_file` to take later."""
    pool = _threads()
    for path in paths:
        try:
            identity = _identity(path)
        except OSError:
            continue  # the run says what is wrong with it
        with _lock:
            if identity not in _started:
                _started[identity] = pool.submit(_sha256, path)


def hash_file(path: Path) -> str:
    """The file's sha256: from :func:`start_hashing` if the file is unchanged since."""
    with _lock:
        started = _started.pop(_identity(path), None)
    return started.result() if started is not None else _sha256(path)


def hash_files(paths: list[Path]) -> list[str]:
    """Each file's sha256, in order, a thread per core (hashing releases the GIL)."""
    if len(paths) < 2:
        return [hash_file(path) for path in paths]
    return list(_threads().map(hash_file, paths))
