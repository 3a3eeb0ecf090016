"""Errors raised while discovering and fetching input photos, and URL redaction."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from modelset.errors import UsageError

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class SourceError(UsageError):
    """A usage problem with what the user pointed at; the whole run should stop."""


class NoImagesFound(SourceError):
    """A folder, glob or prefix that exists but holds no image (an empty inbox)."""


class FetchError(Exception):
    """One source could not be fetched; only that photo fails.

    ``source`` is the redacted source (no userinfo, no query string) and ``reason`` a short
    human-readable cause such as ``"HTTP 404 Not Found"``.
    """

    def __init__(self, source: str, reason: str) -> None:
        self.source = redact_url(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")

    def __reduce__(self) -> tuple[type[FetchError], tuple[str, str]]:
        # Keep the two-argument constructor working through pickle (worker threads/processes).
        return (type(self), (self.source, self.reason))


class UnsafeURLError(FetchError):
    """The URL (or a redirect hop) points at an address we refuse to contact."""


def url_scheme(spec: str) -> str | None:
    """The lower-cased scheme of ``spec`` if it looks like ``scheme://...``, else None."""
    match = _SCHEME_RE.match(spec)
    return match.group(1).lower() if match else None


def redact_url(value: str) -> str:
    """``value`` with userinfo, query string and fragment removed if it is a URL.

    Presigned object-store URLs carry credentials in the query string, and ``user:pass@``
    carries them in the authority, so neither may reach logs or exception messages.
    Local paths are returned unchanged.
    """
    if url_scheme(value) is None:
        return value
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. a malformed IPv6 literal; fall back to plain string surgery
        value = re.sub(r"^([^:]+://)[^/?#]*@", r"\1", value)
        return re.split(r"[?#]", value, maxsplit=1)[0]
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{netloc}{parts.path}"  # not urlunsplit: it drops "//" before "/"
