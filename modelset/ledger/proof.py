"""Whether the service finds a task by the request_id it was sent with: proven, not assumed.

The public docs promise results by ``task_id`` only. A submit whose answer was lost (a
timeout, a 502, a dropped connection) may have created and billed a task; looking its
``request_id`` up tells which only where the service answers such lookups, and a service
that answers "not found" for every request_id would have each resend paid twice. So the
lookup is used only with a proof for the base URL: a lookup, by request_id, of a request
the service accepted (its task_id is in the ledger) that returned that very task_id.

The pipeline takes the proof itself, with one GET, the first time the ledger holds an
accepted request, and keeps it in the output location (``.modelset/lookup-proofs/``), one
object per base URL with the date it was taken: every later run, worker and
``modelset doctor`` reads it. A lookup that answered "not found", named another task or
was refused is kept too (proof that it does not work), so no run asks again. A lookup
that could not be made (an outage) proves nothing and is not kept.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime

from pydantic import BaseModel, ValidationError

from modelset import layout
from modelset.hidream import HiDreamClient, HiDreamError, RequestRejected, TaskNotFound
from modelset.ledger import Ledger
from modelset.ledger.records import LedgerRecord
from modelset.storage import StorageError, Store, off_loop, read_or_none


class LookupProof(BaseModel):
    """What one lookup by request_id of an accepted request answered, at one base URL."""

    base_url: str
    finds_by_request_id: bool
    request_id: str
    task_id: str  # the task the service created for that request
    answer: str  # what the lookup returned, for a person
    checked: str  # when, ISO 8601 UTC

    def describe(self) -> str:
        day = self.checked[:10]
        if self.finds_by_request_id:
            return (
                f"proven on {day}: {self.base_url} found task {self.task_id} by its "
                f"request_id {self.request_id}"
            )
        return (
            f"not proven ({day}): looking request_id {self.request_id} of task "
            f"{self.task_id} up at {self.base_url} answered {self.answer}"
        )


def proof_key(base_url: str) -> str:
    name = hashlib.sha256(base_url.rstrip("/").lower().encode()).hexdigest()[:24]
    return f"{layout.LOOKUP_PROOFS}/{name}.json"


def read_proof(store: Store, base_url: str) -> LookupProof | None:
    blob = read_or_none(store, proof_key(base_url))
    if blob is None:
        return None
    try:
        proof = LookupProof.model_validate_json(blob.data)
    except ValidationError:
        return None
    return proof if proof.base_url == base_url.rstrip("/") else None


async def take_proof(
    client: HiDreamClient, store: Store, accepted: LedgerRecord
) -> LookupProof | None:
    """Look ``accepted`` (a record holding the task_id its request created) up by its
    request_id, once, and keep what that proves; None when the lookup could not be made."""
    assert accepted.task_id is not None
    try:
        found = await client.get_result(request_id=accepted.request_id)
    except TaskNotFound:
        finds, answer = False, "'task not found'"
    except RequestRejected as exc:
        finds, answer = False, f"a refusal ({exc.message})"
    except HiDreamError:
        return None
    else:
        finds = found.task_id == accepted.task_id
        answer = f"task {found.task_id}" if found.task_id else "a result naming no task"
    proof = LookupProof(
        base_url=client.base_url,
        finds_by_request_id=finds,
        request_id=accepted.request_id,
        task_id=accepted.task_id,
        answer=answer,
        checked=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    await off_loop(store, store.write, proof_key(client.base_url), proof.model_dump_json().encode())
    return proof


class RequestIdLookup:
    """One run's use of the proof: read once, taken at most once, applied to the client.

    ``enabled`` False (``HIDREAM_LOOKUP_BY_REQUEST_ID=false``): never looked up at all.
    """

    def __init__(self, client: HiDreamClient, store: Store, *, enabled: bool) -> None:
        self.client = client
        self.store = store
        self.enabled = enabled
        self.proof: LookupProof | None = None
        self._lock = asyncio.Lock()
        self._reading: asyncio.Future[None] | None = None

    def start(self) -> None:
        """Read the proof kept for this base URL in the background (no submit waits on it:
        until it is read, a lost answer is unknown, and resolved once it is)."""
        if self.enabled and self._reading is None:
            self._reading = asyncio.ensure_future(self._read())

    def stop(self) -> None:
        if self._reading is not None:
            self._reading.cancel()

    async def accepted(self, record: LedgerRecord) -> None:
        """A request the service accepted: the proof is taken from it if none is known."""
        if not self.enabled or self.proof is not None or record.task_id is None:
            return
        await self._read_once()
        async with self._lock:
            if self.proof is None:
                proof = await take_proof(self.client, self.store, record)
                if proof is not None:
                    self._apply(proof)

    async def proven_for(self, ledger: Ledger) -> bool:
        """Whether a lost answer may be looked up now: by the proof kept, else by one taken
        from a request of the ledger the service accepted."""
        if not self.enabled:
            return False
        await self._read_once()
        if self.proof is None:
            record = await ledger.run(ledger.accepted)
            if record is not None:
                await self.accepted(record)
        return self.proven

    @property
    def proven(self) -> bool:
        return self.proof is not None and self.proof.finds_by_request_id

    async def _read_once(self) -> None:
        self.start()
        if self._reading is not None:
            await asyncio.shield(self._reading)

    async def _read(self) -> None:
        try:
            proof = await off_loop(self.store, read_proof, self.store, self.client.base_url)
        except StorageError:
            return  # unknown: a lost answer stays unknown, never resent
        async with self._lock:
            if proof is not None and self.proof is None:
                self._apply(proof)

    def _apply(self, proof: LookupProof) -> None:
        self.proof = proof
        self.client.request_id_lookup_proven = proof.finds_by_request_id
