"""The start-of-run probe: does this store honour conditional writes?

Exactly-once on a bucket rests on create-if-absent and compare-and-swap. Some
S3-compatible servers (and proxies in front of them) drop the conditional headers and
accept every write: on such a store two runs could both claim a photo and both pay.
The probe writes an object of its own and checks that the store refuses what it must.
"""

from __future__ import annotations

import uuid

from modelset import layout
from modelset.storage._exceptions import (
    AlreadyExists,
    ConditionalWritesIgnored,
    NotFound,
    PreconditionFailed,
)
from modelset.storage.base import Store


def probe_conditional_writes(store: Store) -> None:
    """Raise :class:`ConditionalWritesIgnored` unless ``store`` refuses a second create
    and a stale compare-and-swap; leaves nothing behind."""
    key = f"{layout.PROBE}/{uuid.uuid4().hex}"
    try:
        first = store.create(key, b"first")
        try:
            store.create(key, b"second")
        except AlreadyExists:
            pass
        else:
            raise _ignored(store, "a second create-if-absent (If-None-Match: *) of one key")
        store.swap(key, b"third", first)
        try:
            store.swap(key, b"stale", first)
        except PreconditionFailed:
            pass
        else:
            raise _ignored(store, "an overwrite naming a stale ETag (If-Match)")
        try:
            if store.read(key).data != b"third":
                raise _ignored(store, "a refused write that still changed the object")
        except NotFound:
            raise _ignored(store, "a write that left no object") from None
    except PreconditionFailed as exc:
        raise _ignored(store, f"an overwrite naming the current ETag ({exc})") from None
    finally:
        store.delete(key)


def _ignored(store: Store, what: str) -> ConditionalWritesIgnored:
    return ConditionalWritesIgnored(
        f"{store.url} ignores conditional writes: it accepted {what}. Exactly-once "
        "cannot hold there; use AWS S3, GCS, Azure or an S3-compatible server that "
        "supports If-None-Match and If-Match on PutObject (nothing was submitted)"
    )
