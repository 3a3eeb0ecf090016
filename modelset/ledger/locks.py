"""How a ledger key is held exclusively: a ``flock`` on a folder, a lease on a bucket.

A :class:`Hold` says how long it is still good for (``time_left``) and sets ``lost``
when it can no longer be trusted. A ``flock`` is never lost: the kernel drops it only
when its process dies. A lease is an object of its own, created with create-if-absent
and renewed by compare-and-swap every third of its duration; a failed renewal sets
``lost`` and the holder stops sending. An expired lease means its holder is gone (it
would have renewed), and so does a lease of a process of this host that no longer runs:
the next claimer takes it over with a compare-and-swap. So does a lease of this very
process that it could not release (the store was down) and holds no longer: a submit
retried after the bucket came back must not wait out its own earlier attempt's lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import math
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import anyio

from modelset.storage import AlreadyExists, NotFound, PreconditionFailed, StorageError, Store

log = logging.getLogger("modelset.ledger")

DEFAULT_LEASE_S = 15 * 60.0
# Collecting sends nothing: two collectors at worst download the same images twice, so
# a dead collector's hold may lapse sooner than a sender's.
COLLECT_LEASE_S = 60.0
_POLL_FIRST_S = 0.05
_POLL_MAX_S = 1.0


def owner_name() -> str:
    """Who holds a lease: host, pid and the process's start time (so a reused pid is
    not mistaken for the holder)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_started(os.getpid())}"


def _started(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, starttime, after "pid (comm)"


def holder_is_gone(owner: str) -> bool:
    """Whether a lease's holder certainly died: a process of this host that no longer
    runs. A holder on another host (another container) is only known gone by expiry."""
    host, _, rest = owner.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit() or not started:
        return False
    return _started(int(pid)) != started


@dataclass
class Hold:
    """An exclusive hold on one name, while the ``hold`` context lasts."""

    expires: float = math.inf  # wall-clock seconds
    lost: asyncio.Event = field(default_factory=asyncio.Event)

    def time_left(self) -> float:
        return self.expires - time.time()


class Locks(Protocol):
    def hold(
        self, name: str, *, wait: bool, short: bool = False
    ) -> contextlib.AbstractAsyncContextManager[Hold | None]:
        """Hold ``name`` exclusively; None when ``wait`` is False and someone holds it.

        ``short``: a hold whose loss costs nothing but duplicate work (collecting), which
        a lease may let lapse sooner."""
        ...


class FlockLocks:
    """A lock file per name in a local folder; the kernel frees it when a process dies."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)

    @contextlib.asynccontextmanager
    async def hold(
        self, name: str, *, wait: bool, short: bool = False
    ) -> AsyncIterator[Hold | None]:
        descriptor = os.open(self.folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            delay = _POLL_FIRST_S
            while True:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not wait:
                        yield None
                        return
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _POLL_FIRST_S * 4)
            try:
                yield Hold()
            finally:
                fcntl.flock(descriptor, fcntl.LOCK_UN)
        finally:
            os.close(descriptor)


class LeaseLocks:
    """A lease object per name on a store that honours conditional writes."""

    def __init__(
        self,
        store: Store,
        prefix: str,
        duration_s: float = DEFAULT_LEASE_S,
        short_duration_s: float = COLLECT_LEASE_S,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.duration_s = duration_s
        self.short_duration_s = min(short_duration_s, duration_s)
        self.owner = owner_name()
        self._held: set[str] = set()
        self._unreleased: set[str] = set()  # ours, not held, still on the store

    @contextlib.asynccontextmanager
    async def hold(
        self, name: str, *, wait: bool, short: bool = False
    ) -> AsyncIterator[Hold | None]:
        key = f"{self.prefix}/{name}.lease"
        duration = self.short_duration_s if short else self.duration_s
        etag = await self._acquire(key, duration, wait=wait)
        if etag is None:
            yield None
            return
        self._held.add(key)
        self._unreleased.discard(key)
        hold = Hold(expires=time.time() + duration)
        renewing = asyncio.create_task(self._renew(key, etag, hold, duration))
        try:
            yield hold
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                etag = await renewing
            if hold.lost.is_set() or not await self._release(key, etag):
                self._unreleased.add(key)
            self._held.discard(key)

    def _body(self, expires: float) -> bytes:
        return json.dumps({"owner": self.owner, "expires": expires}).encode()

    async def _acquire(self, key: str, duration: float, *, wait: bool) -> str | None:
        delay = _POLL_FIRST_S
        told = False
        while True:
            etag = await anyio.to_thread.run_sync(self._try_acquire, key, duration)
            if etag is not None or not wait:
                return etag
            if not told and delay >= _POLL_MAX_S:
                log.warning("waiting for %s: another run holds it until its lease ends", key)
                told = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX_S)

    def _try_acquire(self, key: str, duration: float) -> str | None:
        body = self._body(time.time() + duration)
        try:
            return self.store.create(key, body)
        except AlreadyExists:
            pass
        try:
            current = self.store.read(key)
        except NotFound:
            return None  # released and removed meanwhile: try again
        try:
            lease = json.loads(current.data)
            expires, holder = float(lease["expires"]), str(lease["owner"])
        except (ValueError, KeyError, TypeError):
            expires, holder = 0.0, ""  # an unreadable lease protects nothing
        abandoned_by_us = holder == self.owner and key in self._unreleased
        if expires > time.time() and not holder_is_gone(holder) and not abandoned_by_us:
            return None
        try:
            return self.store.swap(key, body, current.etag)
        except PreconditionFailed:
            return None  # someone else took it over first

    async def _renew(self, key: str, etag: str, hold: Hold, duration: float) -> str:
        """Renew every third of the duration until cancelled; returns the last ETag."""
        try:
            while True:
                await asyncio.sleep(duration / 3)
                expires = time.time() + duration
                etag = await anyio.to_thread.run_sync(
                    self.store.swap, key, self._body(expires), etag
                )
                hold.expires = expires
        except asyncio.CancelledError:
            return etag
        except StorageError:
            hold.lost.set()
            return etag

    async def _release(self, key: str, etag: str) -> bool:
        """Whether the lease was released. A released lease is an expired one: the next
        claimer swaps it, and a slow holder can never delete a lease someone else took
        over."""
        try:
            await anyio.to_thread.run_sync(self.store.swap, key, self._body(0.0), etag)
        except StorageError:
            return False
        return True
