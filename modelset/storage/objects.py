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

Retries live here, in one place, not in obstore (whose own are switched off): a request
that failed in a way S3 documents as retryable (``503 SlowDown``, other 5xx, 429, 408,
a connection reset or refused, a timeout) is sent again after an exponential backoff
with full jitter, within ``HIDREAM_STORE_MAX_ATTEMPTS`` attempts and
``HIDREAM_STORE_RETRY_BUDGET`` seconds in all (:class:`StoreRetry`). A conditional write
(create-if-absent, compare-and-swap) is never resent blindly: its answer may have been
lost after it landed, so the object is read back first. Each conditional write carries a
token of its own in the object's metadata, and a compare-and-swap also the tokens of the
versions it replaces (the last 15): our token there means it succeeded, and so does our
token among those replaced (other writers built on ours before we read it back: a counter
is not bumped twice); the old version (or none) means it did not, and it is sent again;
anything else means another writer won, and the caller is told so, as if the store had
answered.
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
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

T = TypeVar("T")
BUCKET_SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "az": "az", "abfs": "az"}
log = logging.getLogger("modelset.storage")
WRITE_TOKEN = "modelset-write"  # noqa: S105 (metadata naming the conditional write that made it)
# The tokens of the versions a swap replaced, newest first (a few: metadata is small).
REPLACED_TOKENS = "modelset-replaced"
_LINEAGE = 16
_TOKENS_KEPT = 10_000
# obstore's message names the HTTP status it got, or says the request never got one.
_STATUS = re.compile(r"status code: (\d{3})")
_TRANSPORT = re.compile(r"error sending request|connection|timed out|timeout|broken pipe", re.I)
_RETRYABLE_STATUS = frozenset({408, 429})


@dataclass(frozen=True)
class StoreRetry:
    """How a bucket request is retried: attempts, a total time budget, a per-request
    timeout, and the backoff between attempts (full jitter: a random wait up to
    ``base * 2**n``, at most ``cap``)."""

    attempts: int = 30
    budget: float = 120.0
    timeout: float = 30.0
    base: float = 0.1
    cap: float = 10.0

    @classmethod
    def from_settings(cls) -> StoreRetry:
        from modelset.settings import Settings

        settings = Settings()
        return cls(
            attempts=settings.store_max_attempts,
            budget=settings.store_retry_budget,
            timeout=settings.store_timeout,
        )

    def pause(self, attempt: int) -> float:
        """The wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        return random.uniform(0, min(self.cap, self.base * 2**attempt))


def is_transient(exc: BaseException) -> bool:
    """Whether obstore's error is one S3 documents as worth retrying."""
    text = str(exc)
    if found := _STATUS.search(text):
        status = int(found[1])
        return status >= 500 or status in _RETRYABLE_STATUS
    return bool(_TRANSPORT.search(text))


def bucket_scheme(location: str) -> str | None:
    """The kind of store an ``s3://``, ``gs://`` or ``az://`` location names, else None."""
    scheme = urlsplit(location).scheme.lower()
    return BUCKET_SCHEMES.get(scheme)


def _client_options(kind: str, retry: StoreRetry) -> ClientConfig:
    options: ClientConfig = {
        "timeout": timedelta(seconds=retry.timeout),
        "connect_timeout": timedelta(seconds=min(retry.timeout, 10.0)),
    }
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT") or ""
    if kind == "s3" and endpoint.startswith("http://"):
        options["allow_http"] = True
    return options


def _credential_provider(kind: str) -> Boto3CredentialProvider | None:
    if kind != "s3" or not os.environ.get("AWS_PROFILE"):
        return None
    try:
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:  # boto3 is optional: without it the environment chain applies
        return None
    return Boto3CredentialProvider()


class BucketStore:
    def __init__(self, location: str, retry: StoreRetry | None = None) -> None:
        self._retry = retry or StoreRetry.from_settings()
        kind = bucket_scheme(location)
        parts = urlsplit(location)
        if kind is None or not parts.netloc:
            raise UnsupportedLocation(
                f"not a bucket location: {location} (use s3://bucket/prefix, "
                "gs://bucket/prefix or az://container/prefix)"
            )
        prefix = parts.path.strip("/")
        self._url = f"{parts.scheme}://{parts.netloc}" + (f"/{prefix}" if prefix else "")
        # The write tokens of each version this store read or wrote, by ETag: its own and
        # those it replaced, newest first. A swap names them, so that a write whose answer
        # was lost is known to have landed even once other writers built on it (``_landed``).
        self._lineages: dict[str, tuple[str, ...]] = {}
        normalised = f"{kind}://{parts.netloc}" + (f"/{prefix}" if prefix else "")
        try:
            self._store = from_url(
                normalised,
                client_options=_client_options(kind, self._retry),
                retry_config={"max_retries": 0},
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

        def get() -> Blob:
            result = obstore.get(self._store, path)
            etag = str(result.meta.get("e_tag") or "")
            self._remember(etag, _lineage(result.attributes))
            return Blob(bytes(result.bytes()), etag)

        return self._retrying(key, get)

    def head(self, key: str) -> Head:
        path = check_key(key)

        def head() -> Head:
            meta = obstore.head(self._store, path)
            return Head(int(meta["size"]), str(meta.get("e_tag") or ""))

        return self._retrying(key, head)

    def read_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Chunks:
        path = check_key(key)
        result = self._retrying(key, lambda: obstore.get(self._store, path))
        return self._chunks(key, result.stream(min_chunk_size=chunk_size))

    def read_start(self, key: str, size: int) -> bytes:
        path = check_key(key)

        def get() -> bytes:
            return bytes(obstore.get(self._store, path, options={"range": (0, size)}).bytes())

        try:
            return self._retrying(key, get)
        except StoreUnavailable as exc:
            # S3 answers a range of an empty object with 416 Range Not Satisfiable.
            if not exc.transient and self.head(key).size == 0:
                return b""
            raise

    def _chunks(self, key: str, stream: Iterator[bytes]) -> Chunks:
        with self._errors(key):
            for chunk in stream:
                yield bytes(chunk)

    def write(self, key: str, data: bytes) -> str:
        path = check_key(key)
        attributes = _attributes(path)
        return self._retrying(
            key, lambda: _etag(obstore.put(self._store, path, data, attributes=attributes))
        )

    def write_file(self, key: str, path: Path) -> str:
        target = check_key(key)
        attributes = _attributes(target)
        return self._retrying(
            key, lambda: _etag(obstore.put(self._store, target, path, attributes=attributes))
        )

    def create(self, key: str, data: bytes) -> str:
        path = check_key(key)
        attributes = _attributes(path)

        def create() -> str:
            return _etag(obstore.put(self._store, path, data, mode="create", attributes=attributes))

        return self._conditional(key, attributes, create, before=None)

    def swap(self, key: str, data: bytes, etag: str) -> str:
        path = check_key(key)
        attributes = _attributes(path)
        if replaced := self._lineages.get(etag):
            attributes[REPLACED_TOKENS] = " ".join(replaced[: _LINEAGE - 1])
        # obstore wants the version left out, not None (which it refuses).
        mode: UpdateVersion = {"e_tag": etag}

        def swap() -> str:
            try:
                return _etag(obstore.put(self._store, path, data, mode=mode, attributes=attributes))
            except NotFoundError:  # AWS answers If-Match on a missing key with 404
                raise PreconditionFailed(f"{self._url}: {key} is gone") from None

        return self._conditional(key, attributes, swap, before=etag)

    def list(self, prefix: str, limit: int | None = None) -> list[str]:
        return list(self.list_etags(prefix, limit))

    def list_etags(self, prefix: str, limit: int | None = None) -> dict[str, str]:
        path = check_key(prefix) if prefix else None

        def listing() -> dict[str, str]:
            etags: dict[str, str] = {}
            for batch in obstore.list(self._store, prefix=path):
                etags.update((meta["path"], _etag(meta)) for meta in batch)
                if limit is not None and len(etags) >= limit:
                    break
            return {key: etags[key] for key in sorted(etags)[:limit]}

        return self._retrying(prefix or "/", listing)

    def delete(self, key: str) -> None:
        path = check_key(key)

        def delete() -> None:
            with contextlib.suppress(NotFoundError):
                obstore.delete(self._store, path)

        self._retrying(key, delete)

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

    def _retrying(self, key: str, request: Callable[[], T]) -> T:
        """``request`` (safe to repeat), sent again while it fails transiently, within
        the retry policy; the seam's error once the policy is spent."""
        started = time.monotonic()
        for attempt in range(1, self._retry.attempts + 1):
            try:
                with self._errors(key):
                    return request()
            except StoreUnavailable as exc:
                if not exc.transient:
                    raise
                elapsed = time.monotonic() - started
                pause = self._retry.pause(attempt)
                if attempt >= self._retry.attempts or elapsed + pause > self._retry.budget:
                    raise StoreUnavailable(
                        f"{exc} (gave up after {attempt} attempts in {elapsed:.0f} s)",
                        transient=True,
                    ) from None
                log.debug("retrying %s in %.2f s after: %s", self._url, pause, exc)
                time.sleep(pause)
        raise AssertionError("unreachable: the last attempt raises")

    def _conditional(
        self,
        key: str,
        attributes: dict[str, Any],
        request: Callable[[], str],
        *,
        before: str | None,
    ) -> str:
        """A create-if-absent (``before`` None) or compare-and-swap from ``before``,
        retried like any request, except that an attempt after a lost answer first
        reads the object back, and a refusal after one may be our own write landing.

        Each conditional write carries a token of its own in the object's metadata, so
        the read-back tells our write from another writer's with the same bytes."""
        token = uuid.uuid4().hex
        attributes[WRITE_TOKEN] = token
        sent = 0

        def send() -> str:
            nonlocal sent
            if sent and (landed := self._landed(key, token, before)) is not None:
                return landed
            sent += 1
            try:
                return request()
            except (AlreadyExists, PreconditionFailed):
                if sent == 1:
                    raise  # the store's own answer to our only attempt
                # Refused after a lost answer: perhaps because our own attempt landed.
                landed = self._landed(key, token, before)
                if landed is None:
                    raise
                return landed

        etag = self._retrying(key, send)
        self._remember(etag, _lineage(attributes))
        return etag

    def _remember(self, etag: str, lineage: tuple[str, ...]) -> None:
        if len(self._lineages) >= _TOKENS_KEPT:
            self._lineages.clear()
        if etag and lineage:
            self._lineages[etag] = lineage

    def _landed(self, key: str, token: str, before: str | None) -> str | None:
        """After a conditional write's answer was lost: its ETag if the object is our
        write; "" if our write landed and other writers have built on it since (an ETag
        no compare-and-swap matches, as the object moved on); None if the object is as it
        was (send again); else the refusal the store would have given, since another
        writer got there first."""
        path = check_key(key)
        try:
            current = self._retrying(key, lambda: obstore.get(self._store, path))
        except NotFound:
            if before is None:
                return None
            raise PreconditionFailed(f"{self._url}: {key} is gone") from None
        etag = str(current.meta.get("e_tag") or "")
        if current.attributes.get(WRITE_TOKEN) == token:
            return etag
        if token in _lineage(current.attributes)[1:]:
            return ""
        if before is not None and etag == before:
            return None
        if before is None:
            raise AlreadyExists(f"{self._url}: {key} exists")
        raise PreconditionFailed(f"{self._url}: {key} changed")


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
        raise StoreUnavailable(
            f"{self.where}: {_first_line(exc)}", transient=is_transient(exc)
        ) from None


def _attributes(key: str) -> dict[str, Any]:
    """The Content-Type a browser needs to show an object (index.html, images) inline."""
    kind, _ = mimetypes.guess_type(key)
    return {"Content-Type": kind or "application/octet-stream"}


def _lineage(attributes: Any) -> tuple[str, ...]:
    """A version's write token and the tokens of the versions it replaced, newest first."""
    own = str(attributes.get(WRITE_TOKEN) or "")
    return (own, *str(attributes.get(REPLACED_TOKENS) or "").split()) if own else ()


def _etag(result: Any) -> str:
    return str(result.get("e_tag") or "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
