"""What a source's URL may show: its scheme, and the URL without its credentials."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


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
