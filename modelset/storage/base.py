"""The storage seam: a few verbs that every kind of store implements the same way.

Everything the project writes and reads back (the ledger, images, thumbnails, the
preparation cache, the report, shard manifests, the shared budget, the inbox memory)
goes through a :class:`Store`, addressed by ``/``-separated keys relative to the output
location. Two implementations: :class:`~modelset.storage.local.FolderStore` (a local
folder, the embedded default) and :class:`~modelset.storage.objects.BucketStore`
(S3, GCS and Azure through obstore). ``tests/test_storage_contract.py`` runs one suite
against both.

The verbs are synchronous: obstore's calls release the GIL, and the async callers (the
ledger on a bucket) run them in worker threads.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol, TypeVar, TypeVarTuple

import anyio

from modelset.storage._exceptions import AlreadyExists, NotFound, PreconditionFailed

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
_CAS_ATTEMPTS = 50
_CAS_BACKOFF_CAP_S = 0.25
CHUNK_SIZE = 1024 * 1024
Chunks = Generator[bytes, None, None]
"""A stream of an object's bytes; ``close()`` it to stop early."""


@dataclass(frozen=True)
class Blob:
    """An object's bytes and the ETag that a compare-and-swap must name."""

    data: bytes
    etag: str


@dataclass(frozen=True)
class Head:
    """An object's size in bytes and its ETag, without its bytes."""

    size: int
    etag: str


class Store(Protocol):
    """Read, write, create-if-absent, compare-and-swap, list: the whole seam."""

    @property
    def url(self) -> str:
        """The location as a person (and a later run) names it: a path or ``s3://b/p``."""
        ...

    @property
    def is_local(self) -> bool:
        """Whether keys are files on this machine (the folder store)."""
        ...

    def read(self, key: str) -> Blob:
        """The object's bytes and ETag; raises :class:`NotFound`."""
        ...

    def head(self, key: str) -> Head:
        """The object's size and ETag, without reading it; raises :class:`NotFound`."""
        ...

    def read_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Chunks:
        """The object's bytes as a stream of chunks, for objects too big to hold whole.

        Raises :class:`NotFound` on the call, before any chunk; a failure part way
        raises while iterating. Close the iterator (``contextlib.closing``) when
        stopping early."""
        ...

    def read_start(self, key: str, size: int) -> bytes:
        """The object's first ``size`` bytes (all of them when it is shorter), without
        reading the rest; raises :class:`NotFound`."""
        ...

    def write(self, key: str, data: bytes) -> str:
        """Replace (or create) the object, whole or not at all; returns its ETag."""
        ...

    def write_file(self, key: str, path: Path) -> str:
        """Like :meth:`write`, streaming a local file."""
        ...

    def create(self, key: str, data: bytes) -> str:
        """Create the object only if the key is free; raises :class:`AlreadyExists`."""
        ...

    def swap(self, key: str, data: bytes, etag: str) -> str:
        """Replace the object only if its ETag is still ``etag``; raises
        :class:`PreconditionFailed` (also when it is gone)."""
        ...

    def list(self, prefix: str, limit: int | None = None) -> list[str]:
        """Every key below ``prefix`` (a folder-like prefix, ``""`` for all), sorted.

        With ``limit``, the listing stops once it has that many keys (a bucket lists
        1,000 per request): getting ``limit`` keys back means there may be more."""
        ...

    def list_etags(self, prefix: str, limit: int | None = None) -> dict[str, str]:
        """Like :meth:`list`, each key with its ETag as the listing saw it (a bucket's
        listing carries them: no request per key)."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing key is fine."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The file behind ``key`` on this machine, for the folder store; else None."""
        ...

    def presign(self, key: str, expires: timedelta) -> str | None:
        """An https (or http) link to read ``key`` without credentials, where the store
        can sign one; else None."""
        ...


def read_or_none(store: Store, key: str) -> Blob | None:
    try:
        return store.read(key)
    except NotFound:
        return None


def update(store: Store, key: str, change: Callable[[bytes | None], tuple[bytes, T]]) -> T:
    """Read-modify-write ``key`` safely against concurrent writers: the write is a
    create-if-absent or a compare-and-swap, retried on a race with a fresh read.

    ``change`` gets the current bytes (None if absent) and returns the new bytes and a
    value handed back to the caller. It may run more than once. Bytes that did not change
    are not written again.
    """
    for attempt in range(_CAS_ATTEMPTS):
        current = read_or_none(store, key)
        data, value = change(None if current is None else current.data)
        if current is not None and data == current.data:
            return value
        try:
            if current is None:
                store.create(key, data)
            else:
                store.swap(key, data, current.etag)
        except (AlreadyExists, PreconditionFailed):
            # Lost a race: back off a little (jittered) so that many writers of one hot
            # object (a budget shared by concurrent runs) take turns instead of colliding.
            time.sleep(random.uniform(0, min(_CAS_BACKOFF_CAP_S, 0.002 * 2**attempt)))
            continue
        return value
    raise PreconditionFailed(f"{store.url}: {key} kept changing under {_CAS_ATTEMPTS} writes")


def read_many(
    store: Store, keys: list[str], *, threads: int = 16, copies: Path | None = None
) -> dict[str, Blob | None]:
    """Many objects at once: concurrent requests on a bucket, a loop on a folder.

    ``copies``: a local folder with copies of some keys at the same relative paths (what
    this run stored in a bucket and kept), read from there instead."""
    unique = list(dict.fromkeys(keys))
    if copies is not None:
        found: dict[str, Blob | None] = {
            key: Blob(data, etag="") for key, data in read_copies(copies, unique).items()
        }
        rest = read_many(store, [key for key in unique if key not in found], threads=threads)
        return {**found, **rest}
    if store.is_local or len(unique) < 2:
        return {key: read_or_none(store, key) for key in unique}
    with ThreadPoolExecutor(min(threads, len(unique))) as pool:
        return dict(
            zip(unique, pool.map(lambda key: read_or_none(store, key), unique), strict=True)
        )


def read_copies(copies: Path, keys: Iterable[str]) -> dict[str, bytes]:
    """The keys that have a local copy in ``copies`` (same relative paths), read."""
    found = {}
    for key in keys:
        with contextlib.suppress(OSError):
            found[key] = (copies / key).read_bytes()
    return found


async def off_loop(store: Store, function: Callable[[*Ts], T], *args: *Ts) -> T:
    """Call a store verb from async code: inline on a folder (a file operation is quicker
    than a thread hop), in a worker thread on a bucket (a request must not hold up the
    event loop)."""
    if store.is_local:
        return function(*args)
    return await anyio.to_thread.run_sync(function, *args)
