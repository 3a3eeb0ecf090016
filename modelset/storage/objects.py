"""The bucket store: S3 (and S3-compatible servers), GCS and Azure through obstore.

obstore wraps Rust's ``object_store``, which implements create-if-absent
(``If-None-Match: *``, GCS's ``ifGenerationMatch=0``) and compare-and-swap on the ETag
(``If-Match``) for all three clouds, streams files in and out without a copy in memory,
and signs URLs. Credentials come from each cloud's standard chain: for S3 the
``AWS_*`` variables (``AWS_ENDPOINT_URL`` for an S3-compatible server, ``http://``
allowed), web identity, the container and instance metadata services, and with
``AWS_PROFILE`` set the shared config files through boto3 where it is installed; for GCS
``GOOGLE_APPLICATION_CREDENTIALS`` or the metadata server; for Azure the
``AZURE_STORAGE_*`` variables or managed identity.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import from_url

from modelset.storage._exceptions import (
    AlreadyExists,
    NotFound,
    PreconditionFailed,
    StorageError,
    StoreUnavailable,
    UnsupportedLocation,
)
from modelset.storage.base import CHUNK_SIZE, Blob, Chunks, Head
from modelset.storage.local import check_key

if TYPE_CHECKING:
    from obstore import UpdateVersion
    from obstore.auth.boto3 import Boto3CredentialProvider
    from obstore.store import ClientConfig

BUCKET_SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "az": "az", "abfs": "az"}


def bucket_scheme(location: str) -> str | None:
    """The kind of store an ``s3://``, ``gs://`` or ``az://`` location names, else None."""
    scheme = urlsplit(location).scheme.lower()
    return BUCKET_SCHEMES.get(scheme)


def _client_options(kind: str) -> ClientConfig:
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT") or ""
    if kind == "s3" and endpoint.startswith("http://"):
        return {"allow_http": True}
    return {}


def _credential_provider(kind: str) -> Boto3CredentialProvider | None:
    if kind != "s3" or not os.environ.get("AWS_PROFILE"):
        return None
    try:
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:  # boto3 is optional: without it the environment chain applies
        return None
    return Boto3CredentialProvider()


class BucketStore:
    def __init__(self, location: str) -> None:
        kind = bucket_scheme(location)
        parts = urlsplit(location)
        if kind is None or not parts.netloc:
            raise UnsupportedLocation(
                f"not a bucket location: {location} (use s3://bucket/prefix, "
                "gs://bucket/prefix or az://container/prefix)"
            )
        prefix = parts.path.strip("/")
        self._url = f"{parts.scheme}://{parts.netloc}" + (f"/{prefix}" if prefix else "")
        normalised = f"{kind}://{parts.netloc}" + (f"/{prefix}" if prefix else "")
        try:
            self._store = from_url(
                normalised,
                client_options=_client_options(kind),
                credential_provider=_credential_provider(kind),
            )
        except Exception as exc:  # configuration problems: a usage error, nothing paid
            raise UnsupportedLocation(f"{self._url}: {_first_line(exc)}") from exc

    def __repr__(self) -> str:
        return f"BucketStore({self._url!r})"

    @property
    def url(self) -> str:
        return self._url

    @property
    def is_local(self) -> bool:
        return False

    # Each verb checks the key before the call: a bad key is the caller's ValueError,
    # which the translation of the store's own errors must not turn into StorageError.

    def read(self, key: str) -> Blob:
        path = check_key(key)
        with self._errors(key):
            result = obstore.get(self._store, path)
            data = bytes(result.bytes())
            return Blob(data, str(result.meta.get("e_tag") or ""))

    def head(self, key: str) -> Head:
        path = check_key(key)
        with self._errors(key):
            meta = obstore.head(self._store, path)
            return Head(int(meta["size"]), str(meta.get("e_tag") or ""))

    def read_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Chunks:
        path = check_key(key)
        with self._errors(key):
            result = obstore.get(self._store, path)
        return self._chunks(key, result.stream(min_chunk_size=chunk_size))

    def _chunks(self, key: str, stream: Iterator[bytes]) -> Chunks:
        with self._errors(key):
            for chunk in stream:
                yield bytes(chunk)

    def write(self, key: str, data: bytes) -> str:
        path = check_key(key)
        with self._errors(key):
            return _etag(obstore.put(self._store, path, data, attributes=_attributes(path)))

    def write_file(self, key: str, path: Path) -> str:
        target = check_key(key)
        with self._errors(key):
            return _etag(obstore.put(self._store, target, path, attributes=_attributes(target)))

    def create(self, key: str, data: bytes) -> str:
        path = check_key(key)
        with self._errors(key):
            return _etag(
                obstore.put(self._store, path, data, mode="create", attributes=_attributes(path))
            )

    def swap(self, key: str, data: bytes, etag: str) -> str:
        path = check_key(key)
        # obstore wants the version left out, not None (which it refuses).
        mode: UpdateVersion = {"e_tag": etag}
        with self._errors(key):
            try:
                return _etag(
                    obstore.put(self._store, path, data, mode=mode, attributes=_attributes(path))
                )
            except NotFoundError:  # AWS answers If-Match on a missing key with 404
                raise PreconditionFailed(f"{self._url}: {key} is gone") from None

    def list(self, prefix: str) -> list[str]:
        path = check_key(prefix) if prefix else None
        with self._errors(prefix or "/"):
            stream = obstore.list(self._store, prefix=path)
            return sorted(meta["path"] for batch in stream for meta in batch)

    def delete(self, key: str) -> None:
        path = check_key(key)
        with self._errors(key), contextlib.suppress(NotFoundError):
            obstore.delete(self._store, path)

    def local_path(self, key: str) -> Path | None:
        check_key(key)
        return None

    def presign(self, key: str, expires: timedelta) -> str | None:
        path = check_key(key)  # a bad key is the caller's error, not "cannot sign"
        try:
            return str(obstore.sign(self._store, "GET", path, expires))  # type: ignore[call-overload]
        except Exception:  # a store whose credentials cannot sign (e.g. GCS user tokens)
            return None

    def _errors(self, key: str) -> _Translated:
        return _Translated(self._url, key)


class _Translated:
    """obstore's exceptions as the seam's tree, messages without credentials."""

    def __init__(self, url: str, key: str) -> None:
        self.where = f"{url}: {key}"

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc is None or isinstance(exc, StorageError) or not isinstance(exc, Exception):
            return
        if isinstance(exc, NotFoundError | FileNotFoundError):
            raise NotFound(f"{self.where} not found") from None
        if isinstance(exc, AlreadyExistsError):
            raise AlreadyExists(f"{self.where} exists") from None
        if isinstance(exc, PreconditionError):
            raise PreconditionFailed(f"{self.where} changed") from None
        if isinstance(exc, UnauthenticatedError | PermissionDeniedError):
            raise StoreUnavailable(f"{self.where}: access refused ({_first_line(exc)})") from None
        raise StoreUnavailable(f"{self.where}: {_first_line(exc)}") from None


def _attributes(key: str) -> dict[str, str]:
    """The Content-Type a browser needs to show an object (index.html, images) inline."""
    kind, _ = mimetypes.guess_type(key)
    return {"Content-Type": kind or "application/octet-stream"}


def _etag(result: Any) -> str:
    return str(result.get("e_tag") or "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
