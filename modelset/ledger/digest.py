"""The ledger's digest: the records a run saw, so the next run's listing vouches for them.

A rerun with nothing to do read every record of a bucket's ledger: a request each, with
its price and its latency. The digest is one object holding the records as runs last
saw them, each with its ETag. A run that lists the ledger (``Ledger.listing``) takes a
record from the digest only where the listing names the record with the same ETag: that
is the version the listing saw, what reading it then would have returned. Everything
else is read as before. An outdated entry costs a read, never a wrong answer; a lost or
unreadable digest costs the reads it would have saved.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

DIGEST_KEY = ".modelset/ledger-digest.json.gz"
_VERSION = 1

Entries = dict[str, tuple[str, dict[str, Any]]]
"""A record's key -> the ETag of the version seen, and that version's fields."""


def encode(entries: Entries) -> bytes:
    """The digest's bytes; the same entries always give the same bytes."""
    body = {"version": _VERSION, "records": {key: list(entries[key]) for key in sorted(entries)}}
    return gzip.compress(json.dumps(body, separators=(",", ":")).encode(), mtime=0)


def decode(data: bytes | None) -> Entries:
    """The entries of a digest's bytes; none for a missing, unreadable or newer digest."""
    if data is None:
        return {}
    try:
        body = json.loads(gzip.decompress(data))
        if body.get("version") != _VERSION:
            return {}
        return {key: (str(etag), dict(fields)) for key, (etag, fields) in body["records"].items()}
    except (OSError, EOFError, ValueError, TypeError, AttributeError, KeyError):
        return {}
