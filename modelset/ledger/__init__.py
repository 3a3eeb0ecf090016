"""The exactly-once ledger: what was paid for, keyed by what was paid for.

A submission's key is the upstream (base URL), the template_id, the sha256 of the
*source* photo and the preparation policy with its version number. The key gives a
stable ``request_id`` (one per paid attempt: ``--refresh`` and ``--retry-failed`` start a
new attempt on purpose).

One JSON record per key lives in ``<out>/.modelset/ledger/``, on whatever store the
output location is. Sending takes a :meth:`Ledger.claim`, an exclusive hold on the key
for the whole of intent -> send -> receipt, so two runs (or two tasks of one run) never
both send it: a ``flock`` on a local folder, a lease on a bucket (``locks.py``). Every
record write is a create-if-absent or a compare-and-swap on the ETag read when the claim
began, so even a holder that lost its lease cannot overwrite a newer record. A record
left in state ``intent`` with its hold free means the sender died with the outcome
unknown: it is resolved by looking the request_id up, never by sending blindly.

The upload index (``by-upload/``) claims the hash of what is sent, so a photo whose
prepared upload is byte-identical to one already paid for points at that set instead.
The task index (``by-task/<task_id>/``) names, for each task a submit created, the key
that paid and what its upload looks like, so one listing gives every look paid for
(``modelset.images.looks``: near-duplicates are planned, not paid). On a bucket, the
digest (``digest.py``) spares a run that lists the ledger reading the records it names
unchanged since a run saw them.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple, TypeVar, TypeVarTuple

from pydantic import ValidationError

from modelset import layout
from modelset.images.looks import LOOK_VERSION, Look
from modelset.ledger._exceptions import ClaimLost, RecordAppeared
from modelset.ledger.digest import Entries, decode, encode
from modelset.ledger.locks import DEFAULT_LEASE_S, FlockLocks, Hold, LeaseLocks, Locks, owner_name
from modelset.ledger.records import (
    LedgerRecord,
    SubmissionState,
    request_id_for,
    submission_key,
    upload_key,
)
from modelset.storage import (
    AlreadyExists,
    Blob,
    NotFound,
    PreconditionFailed,
    Store,
    off_loop,
    read_many,
    read_or_none,
    update,
)

__all__ = [
    "ClaimLost",
    "Ledger",
    "LedgerClaim",
    "LedgerRecord",
    "Listing",
    "RecordAppeared",
    "SubmissionState",
    "open_ledger",
    "request_id_for",
    "submission_key",
    "upload_key",
]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


# Listing a bucket's ledger takes one request per 1,000 keys (about four per set: the
# record, its leases and index entries); reading records one by one, one per record,
# absent ones included. A run lists when that is the cheaper way to learn what exists.
_LIST_FROM = 8
_KEYS_PER_RECORD_READ = 250


@dataclass(frozen=True)
class Listing:
    """What one listing of a bucket's ledger named, each object with its ETag, and the
    digest read with it (see :meth:`Ledger.listing`)."""

    etags: dict[str, str]
    remembered: Entries

    def __contains__(self, name: object) -> bool:
        return name in self.etags

    def vouched(self, key: str, name: str) -> tuple[str, LedgerRecord] | None:
        """The record stored at ``name`` as the digest has it, with its ETag, if that is
        the version the listing saw; else None (read it)."""
        etag, entry = self.etags.get(name), self.remembered.get(key)
        if not etag or entry is None or entry[0] != etag:
            return None
        try:
            return etag, LedgerRecord.model_validate_json(entry[1])
        except ValidationError:
            return None


class LedgerClaim:
    """The right to change one key's record, for as long as the claim lasts."""

    def __init__(
        self,
        ledger: Ledger,
        key: str,
        etag: str | None,
        record: LedgerRecord | None,
        hold: Hold,
        *,
        assumed_absent: bool = False,
    ) -> None:
        self._ledger = ledger
        self.key = key
        self._etag = etag
        self.record = record
        self.hold = hold
        self._assumed_absent = assumed_absent

    def time_left(self) -> float:
        """Seconds the hold is still good for (infinite for a flock)."""
        return self.hold.time_left()

    async def write(self, record: LedgerRecord) -> LedgerRecord:
        """Replace the record, only if nobody else wrote it since the claim began."""
        ledger = self._ledger
        record = ledger.stamped(record)
        indexed = self.record.task_id if self.record is not None else None
        data = record.model_dump_json().encode()
        try:
            self._etag = await ledger.run(self._put, data)
        except RecordAppeared:
            self._etag, self.record = await ledger.run(ledger.current, self.key)
            self._assumed_absent = False
            raise
        ledger.saw(self.key, self._etag, data)
        self.record = record
        if record.task_id is not None and record.task_id != indexed:
            await ledger.run(ledger.index_task, record)
        return record

    async def forget(self) -> None:
        """Drop the record (its send certainly created nothing)."""
        if self._etag is not None:
            await self._ledger.run(self._ledger.store.delete, self._ledger.record_key(self.key))
            self._etag = None
            self._ledger.known.pop(self.key, None)
        self.record = None

    def _put(self, data: bytes) -> str:
        store, name = self._ledger.store, self._ledger.record_key(self.key)
        try:
            if self._etag is None:
                return store.create(name, data)
            return store.swap(name, data, self._etag)
        except (AlreadyExists, PreconditionFailed) as exc:
            if isinstance(exc, AlreadyExists) and self._assumed_absent:
                raise RecordAppeared(f"the ledger record {self.key} appeared") from None
            raise ClaimLost(
                f"the ledger record {self.key} changed under this run's claim"
            ) from None


class Ledger:
    """The records of one output location, safe for concurrent runs on any machines that
    share it."""

    def __init__(self, store: Store, locks: Locks) -> None:
        self.store = store
        self.locks = locks
        self.owner = owner_name()
        # Each record's ETag as this process last wrote or read it, so a collector
        # finishes a record it has just seen with one compare-and-swap (:meth:`finish`);
        # on a bucket with its bytes too, which a run leaves in the digest (:meth:`remember`).
        self.known: dict[str, tuple[str, bytes]] = {}

    def saw(self, key: str, etag: str, data: bytes) -> None:
        """Note a record's version as written or read (its bytes only where a digest can
        be written: a folder's ledger is read file by file and has none)."""
        self.known[key] = (etag, b"" if self.store.is_local else data)

    def record_key(self, key: str) -> str:
        return f"{layout.LEDGER}/{key}.json"

    async def run(self, function: Callable[[*Ts], T], *args: *Ts) -> T:
        """Call a blocking ledger or store function from async code (see ``off_loop``)."""
        return await off_loop(self.store, function, *args)

    def stamped(self, record: LedgerRecord) -> LedgerRecord:
        return record.model_copy(
            update={"updated": datetime.now(UTC).isoformat(), "claimed_by": self.owner}
        )

    def read(self, key: str) -> LedgerRecord | None:
        return self.current(key)[1]

    def current(self, key: str) -> tuple[str | None, LedgerRecord | None]:
        """The record's ETag and the record, or (None, None) when there is none."""
        blob = read_or_none(self.store, self.record_key(key))
        return (None, None) if blob is None else (blob.etag, self._parsed(key, blob))

    def _parsed(self, key: str, blob: Blob) -> LedgerRecord:
        record = LedgerRecord.model_validate_json(blob.data)
        self.saw(key, blob.etag, blob.data)
        return record

    def listing(self, wanted: int) -> Listing | None:
        """The ledger's objects with their ETags, and the digest, where listing them takes
        fewer requests than reading ``wanted`` records one by one (a bucket's; a folder
        reads files); else None. What is not listed did not exist when listed: no request
        to learn so; what the digest holds at the listed ETag needs no request either."""
        if self.store.is_local or wanted < _LIST_FROM:
            return None
        limit = wanted * _KEYS_PER_RECORD_READ
        etags = self.store.list_etags(layout.LEDGER, limit=limit)
        if len(etags) >= limit:
            return None
        digest = read_or_none(self.store, layout.LEDGER_DIGEST)
        return Listing(etags, decode(None if digest is None else digest.data))

    def read_many(
        self, keys: Iterable[str], listed: Listing | None = None
    ) -> dict[str, LedgerRecord | None]:
        """Many records at once (concurrent requests on a bucket); with ``listed`` (see
        :meth:`listing`), only those it names are read, and of those only the ones the
        digest does not vouch for."""
        names = {key: self.record_key(key) for key in keys}
        records: dict[str, LedgerRecord | None] = {}
        for key, name in names.items():
            if listed is not None and (vouched := listed.vouched(key, name)) is not None:
                etag, records[key] = vouched
                self.known[key] = (etag, listed.remembered[key][1])
        found = self._read_listed([n for k, n in names.items() if k not in records], listed)
        for key, name in names.items():
            if key not in records:
                blob = found.get(name)
                records[key] = None if blob is None else self._parsed(key, blob)
        return records

    def remember(self, listed: Listing | None) -> None:
        """Leave the records this process saw in the digest, for the next run's listing;
        nothing to do without a listing (nothing the digest says was needed) or when the
        digest already says it all."""
        if listed is None:
            return
        seen = {
            key: (etag, data) for key, (etag, data) in list(self.known.items()) if etag and data
        }
        outdated = {
            key: etag
            for key, (etag, _) in listed.remembered.items()
            if listed.etags.get(self.record_key(key)) != etag and key not in seen
        }
        if not outdated and all(
            listed.remembered.get(key, ("",))[0] == etag for key, (etag, _) in seen.items()
        ):
            return

        def merged(current: bytes | None) -> tuple[bytes, None]:
            entries = decode(current)
            for key, etag in outdated.items():
                if entries.get(key, ("",))[0] == etag:  # no run saw a newer one since
                    del entries[key]
            entries.update(seen)
            return encode(entries), None

        update(self.store, layout.LEDGER_DIGEST, merged)

    def _read_listed(self, names: Iterable[str], listed: Listing | None) -> dict[str, Blob | None]:
        """The objects read at once; with ``listed``, only those it names (the others are
        absent from what it returns: they did not exist when listed)."""
        return read_many(self.store, [n for n in names if listed is None or n in listed])

    async def finish(self, record: LedgerRecord) -> LedgerRecord | None:
        """Write ``record`` over the version this process last wrote or read, with one
        compare-and-swap and no claim (collecting sends nothing); None when the record
        moved on meanwhile or was never seen here: then write it under a claim."""
        known = self.known.get(record.key)
        if known is None:
            return None
        record = self.stamped(record)
        data = record.model_dump_json().encode()
        try:
            etag = await self.run(self.store.swap, self.record_key(record.key), data, known[0])
        except PreconditionFailed:
            return None
        self.saw(record.key, etag, data)
        return record

    def index_task(self, record: LedgerRecord) -> None:
        """Name the task a submit created: ``by-task/<task_id>/<key>-<template_id>-v1-<look>``,
        an entry whose name says which key paid and what its upload looks like, so one
        listing gives every look paid for (near-duplicates) at no request of its own. A
        record without a look (written before looks) gets ``by-task/<task_id>``, holding
        its key."""
        assert record.task_id is not None
        task = f"{layout.LEDGER_BY_TASK}/{record.task_id}"
        if record.look is None:
            name, data = task, record.key.encode()
        else:
            entry = f"{record.key}-{record.template_id}-v{LOOK_VERSION}-{record.look}"
            name, data = f"{task}/{entry}", b""
        with contextlib.suppress(AlreadyExists):
            self.store.create(name, data)

    def find_by_task(self, task_id: str) -> LedgerRecord | None:
        """The record whose submit created ``task_id`` (for callbacks, which name only it)."""
        key = self._key_of_task(task_id)
        return None if key is None else self.read(key)

    def _key_of_task(self, task_id: str) -> str | None:
        task = f"{layout.LEDGER_BY_TASK}/{task_id}"
        for name in self.store.list(task):
            if (entry := _task_entry(name)) is not None and entry.task_id == task_id:
                return entry.key
        try:  # indexed before looks: the key is the entry's content
            return self.store.read(task).data.decode().strip()
        except (NotFound, ValueError):
            return None

    def find_by_request_id(self, request_id: str) -> LedgerRecord | None:
        """The record whose current attempt was sent with ``request_id`` (which names its
        key's first half: ``request_id_for``), for a callback of a send whose answer was
        lost; None if no record was sent with it."""
        try:
            prefix = uuid.UUID(request_id[:36]).hex
        except ValueError:
            return None
        # Stores list by whole path segments: the ledger's, then the keys that match.
        for key in self._record_keys():
            record = self.read(key) if key.startswith(prefix) else None
            if record is not None and record.request_id == request_id:
                return record
        return None

    def unknown_sends(self) -> list[LedgerRecord]:
        """Every record whose last send has an unknown outcome (one listing, then reads)."""
        keys = self._record_keys()
        found = read_many(self.store, [self.record_key(key) for key in keys])
        unknown = []
        for key in keys:
            blob = found.get(self.record_key(key))
            if blob is None:
                continue
            record = self._parsed(key, blob)
            if record.state in (SubmissionState.UNKNOWN, SubmissionState.INTENT):
                unknown.append(record)
        return unknown

    def _record_keys(self) -> list[str]:
        """The key of every record, from one listing of the ledger."""
        return [key for name in self.store.list(layout.LEDGER) if (key := _record_key_of(name))]

    def accepted(self) -> LedgerRecord | None:
        """Some record the service accepted (it holds a task_id), or None."""
        for name in self.store.list(layout.LEDGER_BY_TASK):
            entry = _task_entry(name)
            key = entry.key if entry is not None else self.store.read(name).data.decode()
            record = self.read(key.strip())
            if record is not None and record.task_id is not None:
                return record
        return None

    def paid_looks(self) -> dict[int, list[tuple[Look, str]]]:
        """Every look a task was created for, by template, with the key that paid (one
        listing of the task index, which every paid set writes anyway)."""
        looks: dict[int, list[tuple[Look, str]]] = {}
        for name in self.store.list(layout.LEDGER_BY_TASK):
            entry = _task_entry(name)
            if entry is not None and entry.version == LOOK_VERSION:
                looks.setdefault(entry.template_id, []).append((entry.look, entry.key))
        return looks

    def upload_owners(
        self, uploads: Iterable[str], listed: Listing | None = None
    ) -> dict[str, str | None]:
        """The key that paid (or is paying) for each upload hash, if any (read at once;
        with ``listed``, only the claims it names)."""
        names = {upload: f"{layout.LEDGER_BY_UPLOAD}/{upload}" for upload in uploads}
        found = self._read_listed(names.values(), listed)
        return {
            upload: None if (blob := found.get(name)) is None else blob.data.decode().strip()
            for upload, name in names.items()
        }

    async def claim_upload(self, upload: str, key: str) -> str:
        """Claim an upload hash for ``key``; returns the key that owns it (``key`` if won).

        An owner whose record is gone (its send certainly created nothing) is replaced.
        """

        def attempt() -> str:
            name = f"{layout.LEDGER_BY_UPLOAD}/{upload}"
            for _ in range(10):
                try:
                    self.store.create(name, key.encode())
                    return key
                except AlreadyExists:
                    pass
                current = read_or_none(self.store, name)
                if current is None:
                    continue
                owner = current.data.decode().strip()
                if owner == key or self.read(owner) is not None:
                    return owner
                try:
                    self.store.swap(name, key.encode(), current.etag)
                    return key
                except PreconditionFailed:
                    continue
            return key

        result: str = await self.run(attempt)
        return result

    async def release_upload(self, upload: str, key: str) -> None:
        """Give an upload hash back (this key's send certainly created nothing)."""

        def release() -> None:
            name = f"{layout.LEDGER_BY_UPLOAD}/{upload}"
            current = read_or_none(self.store, name)
            if current is not None and current.data.decode().strip() == key:
                self.store.delete(name)

        await self.run(release)

    @contextlib.asynccontextmanager
    async def claim(self, key: str, *, absent: bool = False) -> AsyncIterator[LedgerClaim]:
        """Hold the key exclusively for sending; the claim carries its current record.

        ``absent``: the record did not exist when planned (a listing did not name it), so
        it is not read again; if it was written meanwhile, the claim's first write (a
        create-if-absent) raises :class:`RecordAppeared`, with the record read."""
        async with self.locks.hold(key, wait=True) as hold:
            assert hold is not None
            if absent:
                yield LedgerClaim(self, key, None, None, hold, assumed_absent=True)
                return
            etag, record = await self.run(self.current, key)
            yield LedgerClaim(self, key, etag, record, hold)

    @contextlib.asynccontextmanager
    async def collecting(self, key: str, *, wait: bool) -> AsyncIterator[bool]:
        """Hold the right to download the key's set; False if someone else holds it.

        A batch holds it while it waits on a task, so the callback-triggered collector
        leaves that task to the batch.
        """
        async with self.locks.hold(f"{key}.collect", wait=wait, short=True) as hold:
            yield hold is not None


class _TaskEntry(NamedTuple):
    task_id: str
    key: str
    template_id: int
    version: int  # of the look
    look: Look


def _task_entry(name: str) -> _TaskEntry | None:
    """What a task index entry named by its look says; None for anything else (an entry
    written before looks, holding its key)."""
    task, _, entry = name.removeprefix(f"{layout.LEDGER_BY_TASK}/").partition("/")
    parts = entry.split("-")
    if len(parts) != 4 or not parts[1].isdigit():
        return None
    key, template_id, version, look = parts
    try:
        parsed = Look.parse(look)
        return _TaskEntry(task, key, int(template_id), int(version.removeprefix("v")), parsed)
    except ValueError:
        return None


def _record_key_of(name: str) -> str | None:
    """The key of a record's object name (``.modelset/ledger/<key>.json``), else None."""
    key = name.removeprefix(f"{layout.LEDGER}/").removesuffix(".json")
    if len(key) == 64 and name.endswith(".json") and all(c in "0123456789abcdef" for c in key):
        return key
    return None


def open_ledger(store: Store, *, lease_s: float = DEFAULT_LEASE_S) -> Ledger:
    """A folder's ledger locks with ``flock``; a bucket's with leases."""
    if store.is_local:
        folder = store.local_path(layout.LEDGER)
        assert folder is not None
        return Ledger(store, FlockLocks(folder))
    return Ledger(store, LeaseLocks(store, layout.LEDGER, lease_s))
