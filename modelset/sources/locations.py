"""Where a source lives: image suffixes, ``file://`` URLs and object-store backends."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import fsspec

from modelset.sources.errors import SourceError, redact_url, url_scheme

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp", ".mpo"}
)
HTTP_SCHEMES: frozenset[str] = frozenset({"http", "https"})

# Object stores reachable through fsspec: scheme -> (package, extra of modelset or None).
# An allowlist on purpose: fsspec also speaks ftp, sftp, smb, webhdfs, ..., which would let a
# manifest reach internal hosts without going through the http(s) address guard.
OBJECT_STORES: dict[str, tuple[str | None, str | None]] = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
    "az": ("adlfs", None),
    "abfs": ("adlfs", None),
    "memory": (None, None),  # in-process, used by tests
}


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
    """Raise a SourceError telling the user what to install if ``scheme`` has no backend."""
    package, extra = OBJECT_STORES[scheme]
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as exc:
        if extra is not None:
            hint = f"the {extra} extra: pip install 'modelset[{extra}]'"
        else:
            hint = f"{package}: pip install {package}"
        raise SourceError(f"{scheme}:// needs {hint}") from exc


def open_filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem and the backend path for an object-store URL."""
    scheme = url_scheme(url)
    if scheme is None or not is_object_store(scheme):
        raise SourceError(f"not an object-store URL: {redact_url(url)}")
    require_backend(scheme)
    fs, path = fsspec.core.url_to_fs(url)
    return fs, str(path)


def unsupported_scheme(spec: str, where: str | None = None) -> SourceError:
    supported = ", ".join(f"{s}://" for s in ("http", "https", *OBJECT_STORES))
    prefix = f"{where}: " if where else ""
    return SourceError(
        f"{prefix}unsupported scheme in {redact_url(spec)} (use a local path or one of {supported})"
    )
