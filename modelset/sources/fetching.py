"""Get the bytes of one source as a local file, hashed, size-limited and address-checked.

Synchronous on purpose: the pipeline calls ``fetch`` from worker threads next to Pillow work.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import stat
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import BinaryIO

import httpx

from modelset.sources._exceptions import FetchError, SourceError, UnsafeURLError
from modelset.sources.locations import (
    HTTP_SCHEMES,
    IMAGE_SUFFIXES,
    file_url_path,
    is_object_store,
    open_bucket,
    unsupported_scheme,
    url_suffix,
)
from modelset.sources.models import FetchedFile
from modelset.sources.netguard import check_url, guarded_transport
from modelset.sources.urls import redact_url, url_scheme
from modelset.storage import BucketStore, NotFound, StorageError

log = logging.getLogger(__name__)

MiB = 1024 * 1024
CHUNK_SIZE = MiB
DEFAULT_MAX_BYTES = 30 * MiB
USER_AGENT = "modelset/0.1"
RETRY_BACKOFF_S = 0.5
"""First retry delay; doubled per attempt, plus up to 50 % jitter."""
MAX_RETRY_AFTER_S = 30.0
"""Longest ``Retry-After`` we honour; longer requests are capped to this."""

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CONTENT_TYPE_SUFFIXES = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/tiff": ".tiff",
    "image/bmp": ".bmp",
    "image/mpo": ".mpo",
    "image/heic": ".heic",
    "image/heif": ".heif",
    "image/avif": ".avif",
}


def fetch(
    source: str,
    dest_dir: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float = 30.0,
    max_redirects: int = 5,
    allow_private: bool = False,
    retries: int = 3,
    client: httpx.Client | None = None,
) -> FetchedFile:
    """Make ``source`` available as a local file and hash it.

    Local paths (and ``file://`` URLs) are hashed in place. http(s) and object-store sources
    are streamed into ``dest_dir`` as ``<sha256>-<unique><suffix>``. ``allow_private`` lifts the
    public-address rule for http(s) (see ``netguard``). ``client`` lets the caller share
    connection pools; its proxies and transport are used as they are.

    Raises FetchError (UnsafeURLError for refused addresses) if this one source cannot be
    fetched, and SourceError for an unsupported scheme or a missing object-store backend.
    """
    scheme = url_scheme(source)
    if scheme is None:
        return _fetch_local(source, Path(source), max_bytes)
    if scheme == "file":
        return _fetch_local(source, file_url_path(source), max_bytes)
    if scheme in HTTP_SCHEMES:
        http = _Http(source, dest_dir, max_bytes, timeout, max_redirects, allow_private, retries)
        if client is not None:
            return http.fetch(client)
        # No proxies from the environment: a proxy would resolve names itself, out of the
        # guard's reach. Pass a client to use one.
        transport = None if allow_private else guarded_transport()
        with httpx.Client(
            transport=transport, trust_env=False, headers={"User-Agent": USER_AGENT}
        ) as own_client:
            return http.fetch(own_client)
    if is_object_store(scheme):
        return _fetch_object(source, dest_dir, max_bytes)
    raise unsupported_scheme(source)


# --- local files -------------------------------------------------------------------------


def _fetch_local(source: str, path: Path, max_bytes: int) -> FetchedFile:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise FetchError(source, "not found") from None
    except OSError as exc:
        raise FetchError(source, f"cannot read: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise FetchError(source, "not a regular file")
    if info.st_size > max_bytes:
        raise FetchError(source, too_large(info.st_size, max_bytes))
    digest = _Digest(source, max_bytes)
    try:
        with path.open("rb") as handle:
            for chunk in _read_chunks(handle):
                digest.add(chunk)
    except OSError as exc:
        raise FetchError(source, f"cannot read: {exc.strerror}") from exc
    return FetchedFile(
        source=source,
        path=Path(os.path.abspath(path)),
        sha256=digest.hexdigest(),
        size=digest.size,
        temporary=False,
    )


# --- shared streaming --------------------------------------------------------------------


class _Digest:
    """Running sha256 and size of a stream, refusing more than ``max_bytes``."""

    def __init__(self, source: str, max_bytes: int, sink: BinaryIO | None = None) -> None:
        self._source = source
        self._max_bytes = max_bytes
        self._sink = sink
        self._hash = hashlib.sha256()
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self._max_bytes:
            raise FetchError(self._source, f"too large: over the {_human(self._max_bytes)} limit")
        self._hash.update(chunk)
        if self._sink is not None:
            self._sink.write(chunk)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _store(
    source: str, chunks: Iterable[bytes], dest_dir: Path, suffix: str, max_bytes: int
) -> FetchedFile:
    """Write ``chunks`` to ``dest_dir/<sha256>-<unique><suffix>`` via a temp file.

    Every fetch gets its own file, so a caller may delete it while another thread holds a
    download of the same bytes.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    partial = dest_dir / f".{uuid.uuid4().hex}.part"
    try:
        with partial.open("wb") as sink:
            digest = _Digest(source, max_bytes, sink)
            for chunk in chunks:
                digest.add(chunk)
        final = dest_dir / f"{digest.hexdigest()}-{uuid.uuid4().hex[:8]}{suffix}"
        os.replace(partial, final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return FetchedFile(
        source=source, path=final, sha256=digest.hexdigest(), size=digest.size, temporary=True
    )


def too_large(size: int, max_bytes: int) -> str:
    return f"too large: {_human(size)} exceeds the {_human(max_bytes)} limit"


def _human(size: int) -> str:
    for unit, factor in (("MB", MiB), ("KB", 1024)):
        if size >= factor:
            return f"{size / factor:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"


# --- http(s) -----------------------------------------------------------------------------


class _Transient(Exception):
    """A failure worth retrying: connect error, timeout, 5xx or 429."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(frozen=True)
class _Http:
    source: str
    dest_dir: Path
    max_bytes: int
    timeout: float
    max_redirects: int
    allow_private: bool
    retries: int

    def fetch(self, client: httpx.Client) -> FetchedFile:
        try:
            url = httpx.URL(self.source)
        except httpx.InvalidURL as exc:
            raise FetchError(self.source, f"invalid URL: {exc}") from exc
        for hop in range(self.max_redirects + 1):
            self._check(url, first=hop == 0)
            outcome = self._with_retries(client, url)
            if isinstance(outcome, FetchedFile):
                return outcome
            url = outcome
        raise FetchError(self.source, f"too many redirects (more than {self.max_redirects})")

    def _check(self, url: httpx.URL, *, first: bool) -> None:
        try:
            check_url(url, allow_private=self.allow_private)
        except FetchError as exc:
            reason = exc.reason if first else f"redirect to {exc.source}: {exc.reason}"
            raise type(exc)(self.source, reason) from exc

    def _with_retries(self, client: httpx.Client, url: httpx.URL) -> FetchedFile | httpx.URL:
        attempt = 0
        while True:
            try:
                return self._get(client, url)
            except _Transient as exc:
                if attempt >= self.retries:
                    tries = f"{attempt + 1} attempt" + ("s" if attempt else "")
                    raise FetchError(self.source, f"{exc.reason} (gave up after {tries})") from exc
                delay = RETRY_BACKOFF_S * 2**attempt * (1 + random.random() / 2)
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, MAX_RETRY_AFTER_S))
                log.warning(
                    "fetching %s: %s; retry %d/%d in %.1f s",
                    redact_url(str(url)),
                    exc.reason,
                    attempt + 1,
                    self.retries,
                    delay,
                )
                time.sleep(delay)
                attempt += 1

    def _get(self, client: httpx.Client, url: httpx.URL) -> FetchedFile | httpx.URL:
        """One GET: the stored file, or the next URL if the answer is a redirect."""
        try:
            with client.stream(
                "GET", url, follow_redirects=False, timeout=httpx.Timeout(self.timeout)
            ) as response:
                return self._handle(url, response)
        except UnsafeURLError as exc:  # raised at connect time by the guarded transport
            raise UnsafeURLError(self.source, exc.reason) from exc
        except httpx.TimeoutException as exc:
            raise _Transient(f"{_timeout_phase(exc)} timed out after {self.timeout:g} s") from exc
        except httpx.RemoteProtocolError as exc:
            if str(exc).startswith("Invalid URL in location header"):  # httpx's own wording
                raise FetchError(self.source, f"redirect to an invalid URL: {exc}") from exc
            raise _Transient(f"connection failed: {exc or type(exc).__name__}") from exc
        except httpx.NetworkError as exc:
            raise _Transient(f"connection failed: {exc or type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise FetchError(self.source, f"{type(exc).__name__}: {exc}") from exc

    def _handle(self, url: httpx.URL, response: httpx.Response) -> FetchedFile | httpx.URL:
        status = response.status_code
        if status in _REDIRECT_STATUSES:
            location = response.headers.get("location")
            if not location:
                raise FetchError(self.source, f"{_status_text(response)} without a Location")
            try:
                return url.join(location)
            except httpx.InvalidURL as exc:  # httpx normally refuses these before we see them
                raise FetchError(self.source, f"redirect to an invalid URL: {exc}") from exc
        if status == 429 or status >= 500:
            raise _Transient(_status_text(response), _retry_after(response))
        if not 200 <= status < 300:
            raise FetchError(self.source, _status_text(response))
        declared = _content_length(response)
        if declared is not None and declared > self.max_bytes:
            raise FetchError(self.source, too_large(declared, self.max_bytes))
        suffix = _pick_suffix(self.source, str(url), response.headers.get("content-type"))
        chunks = response.iter_bytes(CHUNK_SIZE)
        return _store(self.source, chunks, self.dest_dir, suffix, self.max_bytes)


def _status_text(response: httpx.Response) -> str:
    phrase = response.reason_phrase
    if not phrase:
        try:
            phrase = HTTPStatus(response.status_code).phrase
        except ValueError:
            phrase = ""
    return f"HTTP {response.status_code} {phrase}".rstrip()


def _timeout_phase(exc: httpx.TimeoutException) -> str:
    phases = {
        httpx.ConnectTimeout: "connect",
        httpx.ReadTimeout: "read",
        httpx.WriteTimeout: "write",
        httpx.PoolTimeout: "pool",
    }
    return next((name for kind, name in phases.items() if isinstance(exc, kind)), "request")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None  # HTTP-date form: use our own backoff


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "").strip()
    return int(value) if value.isdigit() else None


def _pick_suffix(source: str, final_url: str, content_type: str | None) -> str:
    """The original suffix if it is an image suffix, else one from the final URL or type."""
    for url in (source, final_url):
        suffix = url_suffix(url)
        if suffix in IMAGE_SUFFIXES:
            return suffix
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return _CONTENT_TYPE_SUFFIXES.get(media_type, "")


# --- object stores -----------------------------------------------------------------------


def _fetch_object(source: str, dest_dir: Path, max_bytes: int) -> FetchedFile:
    try:
        store, key = open_bucket(source)
    except SourceError as exc:  # this one source is malformed: only this photo fails
        raise FetchError(source, str(exc).removeprefix(f"{redact_url(source)}: ")) from exc
    try:
        size = store.head(key).size  # the size first: an oversized object is never read
        if size > max_bytes:
            raise FetchError(source, too_large(size, max_bytes))
        suffix = _pick_suffix(source, source, None)
        with closing(store.read_chunks(key, CHUNK_SIZE)) as chunks:
            return _store(source, chunks, dest_dir, suffix, max_bytes)
    except FetchError:
        raise
    except ValueError:  # "" (the bucket itself), or a key with empty or ".." segments
        reason = "not a file (a bucket)" if not key else "not a valid object key"
        raise FetchError(source, reason) from None
    except NotFound:
        if _is_prefix(store, key):
            raise FetchError(source, "not a file (a prefix or folder)") from None
        raise FetchError(source, "not found") from None
    except StorageError as exc:  # unreachable, refused credentials, ...
        raise FetchError(source, f"cannot read: {exc}") from exc


def _is_prefix(store: BucketStore, key: str) -> bool:
    try:
        return bool(store.list(key))
    except (StorageError, ValueError):
        return False


def _read_chunks(handle: BinaryIO) -> Iterator[bytes]:
    return iter(lambda: handle.read(CHUNK_SIZE), b"")


# --- identity without fetching -------------------------------------------------------------


def remote_identity(
    source: str, *, allow_private: bool = False, timeout: float = 10.0
) -> str | None:
    """What names a remote source's bytes without fetching them: the URL with its ETag or
    Last-Modified and its size, where the server gives them (None otherwise, or for a
    local path). A cache keyed on it is fetched again whenever the object changes."""
    scheme = url_scheme(source)
    try:
        if scheme in HTTP_SCHEMES:
            transport = None if allow_private else guarded_transport()
            with httpx.Client(
                transport=transport, trust_env=False, headers={"User-Agent": USER_AGENT}
            ) as client:
                response = client.head(source, timeout=timeout)
            validator = response.headers.get("etag") or response.headers.get("last-modified")
            size = response.headers.get("content-length")
            if response.status_code != 200 or not validator or not size:
                return None
            return f"{source}|{validator}|{size}"
        if scheme is not None and is_object_store(scheme):
            store, key = open_bucket(source)
            head = store.head(key)
            return f"{source}|{head.etag}|{head.size}" if head.etag else None
    except (httpx.HTTPError, SourceError, StorageError, UnsafeURLError):
        return None
    return None
