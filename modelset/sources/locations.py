"""Where a source lives: image suffixes, ``file://`` URLs and object-store buckets."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from modelset.sources._exceptions import SourceError
from modelset.sources.urls import redact_url, url_scheme
from modelset.storage import BucketStore, StorageError
from modelset.storage.objects import BUCKET_SCHEMES

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp", ".mpo"}
    # ".hif" is the HEIF that Canon, Sony and Fujifilm cameras write.
    | {".heic", ".heif", ".hif", ".avif"}
)
HTTP_SCHEMES: frozenset[str] = frozenset({"http", "https"})

# Object stores, all read through obstore (the library the output seam uses too). An
# allowlist on purpose: a manifest must not reach other protocols (ftp, smb, ...) and so
# internal hosts without going through the http(s) address guard.
OBJECT_STORES: tuple[str, ...] = tuple(BUCKET_SCHEMES)
# The variables obstore reads credentials and endpoints from, per cloud: a store made
# under other values is not reused.
_STORE_ENV_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_")


def is_image_name(name: str) -> bool:
    """Whether ``name`` (a file name, path or object key) has an image suffix."""
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def url_suffix(url: str) -> str:
    """The lower-cased file suffix of a URL's path, ignoring query string and fragment."""
    return os.path.splitext(urlsplit(url).path)[1].lower()


def is_object_store(scheme: str | None) -> bool:
    return scheme in OBJECT_STORES


def file_url_path(url: str) -> Path:
    """The local path a ``file://`` URL names (only ``file:///...`` and ``file://localhost/``)."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise SourceError(f"{redact_url(url)}: file:// URLs naming a remote host are not supported")
    return Path(os.path.abspath(url2pathname(parts.path)))


def require_backend(scheme: str) -> None:
    """Raise a SourceError unless ``scheme`` is an object store this project reads.

    Every one is built in (obstore), so nothing is ever missing to install."""
    if not is_object_store(scheme):
        raise SourceError(f"{scheme}:// is not an object store (use one of {_store_list()})")


def open_bucket(url: str) -> tuple[BucketStore, str]:
    """The store of an object-store URL's bucket and the key (or prefix) in it:
    ``s3://shoot/summer/a.jpg`` -> (the store of ``s3://shoot``, ``"summer/a.jpg"``).

    The key is the URL's path without surrounding slashes (``""`` for the whole bucket).
    Raises SourceError for a URL that names no bucket, has a query string or fragment
    (which would silently not be part of the key), or that the store's configuration
    refuses.
    """
    scheme = url_scheme(url)
    if scheme is None or not is_object_store(scheme):
        raise SourceError(f"not an object-store URL: {redact_url(url)}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise SourceError(f"invalid URL {redact_url(url)}: {exc}") from exc
    bucket = parts.netloc.rpartition("@")[2]
    if not bucket:
        raise SourceError(f"{redact_url(url)} names no bucket ({scheme}://bucket/key)")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise SourceError(
            f"{redact_url(url)}: an object-store URL takes no query string or fragment "
            "('?' and '#' end the key; glob with * or [...])"
        )
    environment = tuple(
        sorted((k, v) for k, v in os.environ.items() if k.startswith(_STORE_ENV_PREFIXES))
    )
    try:
        store = _bucket_store(f"{scheme}://{bucket}", environment)
    except StorageError as exc:
        raise SourceError(str(exc)) from exc
    return store, parts.path.strip("/")


@functools.lru_cache(maxsize=64)
def _bucket_store(location: str, environment: tuple[tuple[str, str], ...]) -> BucketStore:
    # One store (and so one connection pool) per bucket and configuration: fetching a
    # catalogue from one bucket reuses its connections.
    return BucketStore(location)


def _store_list() -> str:
    return ", ".join(f"{s}://" for s in OBJECT_STORES)


def unsupported_scheme(spec: str, where: str | None = None) -> SourceError:
    supported = ", ".join(f"{s}://" for s in ("http", "https", *OBJECT_STORES))
    prefix = f"{where}: " if where else ""
    return SourceError(
        f"{prefix}unsupported scheme in {redact_url(spec)} (use a local path or one of {supported})"
    )
