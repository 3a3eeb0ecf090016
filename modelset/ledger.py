"""The exactly-once ledger: what was paid for, keyed by what was paid for.

A submission's key is the upstream (base URL), the template_id, the sha256 of the
*source* photo and the preparation policy with its version number. The key gives a
stable ``request_id`` (one per paid attempt: ``--refresh`` and ``--retry-failed`` start a
new attempt on purpose).

One JSON record per key lives in ``<out>/.modelset/ledger/``. Claiming a key takes an
exclusive ``flock`` on its lock file for the whole of intent -> send -> receipt, so two
runs (or two tasks of one run) can never both send it. The kernel drops the lock when a
process dies, so a record left in state ``intent`` with its lock free means the sender
crashed with the outcome unknown: it is resolved by looking the request_id up, never by
sending blindly. ``flock`` holds on local disks and NFSv4; on an object store the ledger
needs a different lock (docs/scale-out.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field

from modelset.atomic import write_text

LEDGER_KEY_VERSION = 1
_LOCK_POLL_SECONDS = 0.05
_TASK_INDEX = "by-task"


class SubmissionState(StrEnum):
    INTENT = "intent"  # claimed; the request may be on its way
    SUBMITTED = "submitted"  # the service answered with a task
    UNKNOWN = "outcome_unknown"  # sent, and whether a task exists could not be learnt
    FINISHED = "finished"  # the set's outcome is known (see ``outcome``)


class LedgerRecord(BaseModel):
    key: str
    attempt: int = 1
    state: SubmissionState
    request_id: str
    template_id: int
    source: str = ""
    item: str = ""  # the folder the set is downloaded into
    source_sha256: str
    upload_sha256: str | None = None
    task_id: str | None = None
    sub_task_ids: list[str] = Field(default_factory=list)
    outcome: str | None = None  # succeeded | failed | rejected, once FINISHED
    reason: str | None = None
    outputs: list[str] = Field(default_factory=list)
    claimed_by: str = ""  # host:pid of the last writer
    claimed_by_run: str = ""  # the run that made this attempt
    updated: str = ""

    @property
    def images_paid(self) -> int:
        return len(self.sub_task_ids)


def submission_key(
    *, base_url: str, template_id: int, source_sha256: str, policy: str, version: int
) -> str:
    """The exactly-once key: what is paid for, never the code or Pillow's bytes."""
    material = "|".join(
        [
            f"modelset-ledger-v{LEDGER_KEY_VERSION}",
            base_url.rstrip("/").lower(),
            str(template_id),
            source_sha256,
            policy,
            f"prep-v{version}",
        ]
    )
    return hashlib.sha256(material.encode()).hexdigest()


def request_id_for(key: str, attempt: int) -> str:
    """Stable per key and attempt, shaped like the service's own ids."""
    return str(uuid.UUID(key[:32])) if attempt == 1 else f"{uuid.UUID(key[:32])}-{attempt}"


class Ledger:
    """One folder of records, safe for concurrent runs on machines that share it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._owner = f"{socket.gethostname()}:{os.getpid()}"

    def read(self, key: str) -> LedgerRecord | None:
        path = self._record_path(key)
        try:
            return LedgerRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None

    def write(self, record: LedgerRecord) -> LedgerRecord:
        """Atomically replace the key's record (callers hold the claim)."""
        record = record.model_copy(
            update={"updated": datetime.now(UTC).isoformat(), "claimed_by": self._owner}
        )
        write_text(self._record_path(record.key), record.model_dump_json())
        if record.task_id is not None:
            self._index_task(record.task_id, record.key)
        return record

    def _index_task(self, task_id: str, key: str) -> None:
        entry = self.root / _TASK_INDEX / task_id
        if not entry.exists():
            write_text(entry, key)

    def forget(self, key: str) -> None:
        """Drop a record whose send certainly created nothing (callers hold the claim)."""
        self._record_path(key).unlink(missing_ok=True)

    def find_by_task(self, task_id: str) -> LedgerRecord | None:
        """The record whose submit created ``task_id`` (for callbacks, which name only it)."""
        try:
            key = (self.root / _TASK_INDEX / task_id).read_text(encoding="utf-8").strip()
        except (FileNotFoundError, ValueError):
            return None
        return self.read(key)

    @contextlib.asynccontextmanager
    async def claim(self, key: str) -> AsyncIterator[LedgerRecord | None]:
        """Hold the key exclusively for sending; yields its current record (None if never)."""
        async with self._locked(f"{key}.lock", wait=True):
            yield self.read(key)

    @contextlib.asynccontextmanager
    async def collecting(self, key: str, *, wait: bool) -> AsyncIterator[bool]:
        """Hold the right to download the key's set; False if someone else holds it.

        A batch holds it while it waits on a task, so the callback-triggered collector
        leaves that task to the batch.
        """
        async with self._locked(f"{key}.collect.lock", wait=wait) as held:
            yield held

    @contextlib.asynccontextmanager
    async def _locked(self, name: str, *, wait: bool) -> AsyncIterator[bool]:
        descriptor = os.open(self.root / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not wait:
                        yield False
                        return
                    await asyncio.sleep(_LOCK_POLL_SECONDS)
            try:
                yield True
            finally:
                fcntl.flock(descriptor, fcntl.LOCK_UN)
        finally:
            os.close(descriptor)

    def _record_path(self, key: str) -> Path:
        return self.root / f"{key}.json"
