"""One storage seam for everything the project writes: a local folder or a bucket.

```python
store = open_store("s3://catalogue/summer")  # or "output", "/data/out", "gs://...", "az://..."
store.create(".modelset/ledger/k.json", data)  # AlreadyExists if taken
blob = store.read(".modelset/ledger/k.json")
store.swap(".modelset/ledger/k.json", new, blob.etag)  # PreconditionFailed if it changed
```
"""

from __future__ import annotations

from pathlib import Path

from modelset.storage._exceptions import (
    AlreadyExists,
    ConditionalWritesIgnored,
    NotFound,
    PreconditionFailed,
    StorageError,
    StoreUnavailable,
    UnsupportedLocation,
)
from modelset.storage.base import (
    Blob,
    Head,
    Store,
    off_loop,
    read_copies,
    read_many,
    read_or_none,
    update,
)
from modelset.storage.local import FolderStore, check_key
from modelset.storage.objects import BucketStore, bucket_scheme
from modelset.storage.probe import probe_conditional_writes

__all__ = [
    "AlreadyExists",
    "Blob",
    "BucketStore",
    "ConditionalWritesIgnored",
    "FolderStore",
    "Head",
    "NotFound",
    "PreconditionFailed",
    "StorageError",
    "Store",
    "StoreUnavailable",
    "UnsupportedLocation",
    "bucket_scheme",
    "check_key",
    "is_relative_location",
    "is_remote",
    "locate",
    "off_loop",
    "open_store",
    "probe_conditional_writes",
    "read_copies",
    "read_many",
    "read_or_none",
    "update",
]


def open_store(location: str | Path) -> Store:
    """The store for an output location: a bucket URL, or a local folder."""
    text = str(location)
    if bucket_scheme(text) is not None:
        return BucketStore(text)
    if is_remote(text):
        raise UnsupportedLocation(
            f"unsupported output location {text}: use a folder, s3://bucket/prefix, "
            "gs://bucket/prefix or az://container/prefix"
        )
    return FolderStore(Path(text).expanduser())


def is_remote(location: str) -> bool:
    """Whether a source or location is named by a URL (``s3://...``, ``https://...``,
    ``file://...``) rather than by a path on this machine."""
    return "://" in location


def locate(store: Store, key: str) -> str:
    """Where a key is, as a person (or a later run) names it: a path or a bucket URL."""
    return str(store.local_path(key) or f"{store.url}/{key}")


def is_relative_location(location: str | Path) -> bool:
    """A folder given relative to the working directory (no bucket, not absolute)."""
    text = str(location)
    return bucket_scheme(text) is None and not Path(text).expanduser().is_absolute()
