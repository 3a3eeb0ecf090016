"""The ledger's digest: the records a run saw, so the next run's listing vouches for them.

A rerun with nothing to do read every record of a bucket's ledger: a request each, with
its price and its latency. The digest is one object holding the records as runs last
saw them, each with its ETag. A run that lists the ledger (``Ledger.listing``) takes a
record from the digest only where the listing names the record with the same ETag: that
is the version the listing saw, what reading it then would have returned. Everything
else is read as before. An outdated entry costs a read, never a wrong answer; a lost or
unreadable digest costs the reads it would have saved.

One line per record, ``<key> <etag> <the record's JSON as stored>``, gzipped: entries are
kept as bytes and a record is parsed only when a run takes it (about 1 kB an entry in
memory, not the 3 kB of a parsed one).
"""

from __future__ import annotations

import gzip

_HEADER = b"modelset-ledger-digest v1"

Entries = dict[str, tuple[str, bytes]]
"""A record's key -> the ETag of the version seen, and that version's bytes."""


def encode(entries: Entries) -> bytes:
    """The digest's bytes; the same entries always give the same bytes."""
    lines = [_HEADER]
    for key in sorted(entries):
        etag, data = entries[key]
        if " " in key + etag or "\n" in key + etag or b"\n" in data:
            continue  # not one line: left out, read when wanted
        lines.append(b" ".join((key.encode(), etag.encode(), data)))
    return gzip.compress(b"\n".join(lines), mtime=0)


def decode(data: bytes | None) -> Entries:
    """The entries of a digest's bytes; none for a missing, unreadable or newer digest."""
    if data is None:
        return {}
    try:
        header, *lines = gzip.decompress(data).split(b"\n")
    except (OSError, EOFError):
        return {}
    if header != _HEADER:
        return {}
    entries: Entries = {}
    for line in lines:
        key, etag, record = line.split(b" ", 2) if line.count(b" ") >= 2 else (b"", b"", b"")
        if key and etag and record:
            entries[key.decode(errors="replace")] = (etag.decode(errors="replace"), record)
    return entries
