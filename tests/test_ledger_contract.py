"""One contract for both ledgers: a folder's (``flock``) and a bucket's (leases on moto's S3).

What a caller relies on: a claim is exclusive while it lasts; every record write is a
create-if-absent or a compare-and-swap, so a writer whose claim went stale cannot
overwrite a newer record; the task and upload indexes point at the key that paid. The
bucket's leases add their own promises: an expired lease is taken over, a live one is
waited for, and a renewal that fails marks the hold lost so the holder stops sending.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelset import layout
from modelset.budget import PeriodBudget
from modelset.hidream import HiDreamClient
from modelset.images.looks import Look
from modelset.ledger import (
    ClaimLost,
    Ledger,
    LedgerRecord,
    RecordAppeared,
    SubmissionState,
    open_ledger,
    request_id_for,
)
from modelset.ledger.digest import decode, encode
from modelset.ledger.locks import LeaseLocks
from modelset.sandbox import SandboxServer
from modelset.sandbox.app import SUBMIT_PATH
from modelset.stages import PreparedPhoto, PrepareOptions, SubmitPolicy, submit_once
from modelset.storage import Store, open_store
from tests.conftest import TOKEN, WAIT_S, SandboxFactory, make_photo, until

KEY = "a" * 64


@pytest.fixture(params=["folder", "bucket"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "folder":
        yield open_store(tmp_path / "out")
    else:
        yield open_store(request.getfixturevalue("bucket"))


def record(key: str = KEY, state: SubmissionState = SubmissionState.INTENT, **extra: object):
    return LedgerRecord(
        key=key,
        state=state,
        request_id=request_id_for(key, 1),
        template_id=20,
        source_sha256="b" * 64,
        **extra,
    )


async def test_the_task_index_names_the_look_paid_for_and_still_finds_older_entries(
    store: Store,
) -> None:
    ledger = open_ledger(store)
    look = Look(0x0123456789ABCDEF, bytes(range(36)))
    other = "c" * 64
    async with ledger.claim(KEY) as claim:
        await claim.write(record(look=str(look)))
        await claim.write(record(state=SubmissionState.SUBMITTED, task_id="t-1", look=str(look)))
    # A task indexed before looks: its entry is a file holding the key.
    async with ledger.claim(other) as claim:
        await claim.write(record(other, state=SubmissionState.SUBMITTED, task_id="t-10"))
    assert ledger.paid_looks() == {20: [(look, KEY)]}
    found = ledger.find_by_task("t-1")
    assert found is not None and found.key == KEY
    older = ledger.find_by_task("t-10")  # "t-1" is a prefix of it: never confused
    assert older is not None and older.key == other
    assert ledger.find_by_task("t-2") is None
    assert ledger.accepted() is not None


async def test_a_send_whose_answer_was_lost_is_found_by_its_request_id(store: Store) -> None:
    ledger = open_ledger(store)
    lost, sibling, answered = KEY, "a" * 32 + "f" * 32, "d" * 64  # sibling: same first half
    async with ledger.claim(lost) as claim:
        await claim.write(
            record(lost, state=SubmissionState.UNKNOWN, attempt=2).model_copy(
                update={"request_id": request_id_for(lost, 2)}
            )
        )
    async with ledger.claim(sibling) as claim:
        await claim.write(record(sibling, state=SubmissionState.INTENT))
    async with ledger.claim(answered) as claim:
        await claim.write(record(answered, state=SubmissionState.SUBMITTED, task_id="t-9"))

    found = ledger.find_by_request_id(request_id_for(lost, 2))
    assert found is not None and found.key == lost
    other = ledger.find_by_request_id(request_id_for(sibling, 1))
    assert other is not None and other.key == sibling
    assert ledger.find_by_request_id(request_id_for(lost, 3)) is None
    assert ledger.find_by_request_id("not-a-request-id") is None
    assert sorted(r.key for r in ledger.unknown_sends()) == sorted([lost, sibling])


async def test_a_claim_creates_then_swaps_the_record(store: Store) -> None:
    ledger = open_ledger(store)
    assert ledger.read(KEY) is None
    async with ledger.claim(KEY) as claim:
        assert claim.record is None
        await claim.write(record())
        await claim.write(record(state=SubmissionState.SUBMITTED, task_id="t-1"))
    found = ledger.read(KEY)
    assert found is not None and found.state is SubmissionState.SUBMITTED
    assert ledger.find_by_task("t-1") == found
    assert ledger.find_by_task("t-unknown") is None
    assert ledger.accepted() == found


async def test_claims_of_one_key_never_overlap(store: Store) -> None:
    ledger = open_ledger(store)
    inside: list[int] = []
    overlaps = 0

    async def one(index: int) -> None:
        nonlocal overlaps
        async with ledger.claim(KEY) as claim:
            inside.append(index)
            if len(inside) > 1:
                overlaps += 1
            attempt = 0 if claim.record is None else claim.record.attempt
            await asyncio.sleep(0.02)
            await claim.write(record(attempt=attempt + 1))
            inside.remove(index)

    await asyncio.gather(*(one(i) for i in range(5)))
    assert overlaps == 0
    final = ledger.read(KEY)
    assert final is not None and final.attempt == 5  # every claim saw the one before it


async def test_a_record_changed_under_a_claim_is_not_overwritten(store: Store) -> None:
    ledger = open_ledger(store)
    async with ledger.claim(KEY) as claim:
        await claim.write(record())
        # Someone who does not hold the claim writes the record (a stale holder, a bug):
        store.write(f".modelset/ledger/{KEY}.json", record(attempt=7).model_dump_json().encode())
        with pytest.raises(ClaimLost):
            await claim.write(record(state=SubmissionState.SUBMITTED, task_id="late"))
    found = ledger.read(KEY)
    assert found is not None and found.attempt == 7 and found.task_id is None


async def test_a_claim_on_a_fresh_key_loses_to_a_concurrent_create(store: Store) -> None:
    ledger = open_ledger(store)
    async with ledger.claim(KEY) as claim:
        assert claim.record is None
        store.create(f".modelset/ledger/{KEY}.json", record(attempt=3).model_dump_json().encode())
        with pytest.raises(ClaimLost):
            await claim.write(record())
    found = ledger.read(KEY)
    assert found is not None and found.attempt == 3


async def test_a_claim_planned_absent_finds_a_record_written_meanwhile(store: Store) -> None:
    """Planned from a listing that did not name the record, written since by another run:
    the claim's first write (a create) is refused with the record read, and nothing is
    overwritten; the claim then goes on from the record as it is."""
    ledger = open_ledger(store)
    async with open_ledger(store).claim(KEY) as other:
        await other.write(record(state=SubmissionState.SUBMITTED, task_id="t-other"))
    async with ledger.claim(KEY, absent=True) as claim:
        assert claim.record is None
        with pytest.raises(RecordAppeared):
            await claim.write(record())
        assert claim.record is not None and claim.record.task_id == "t-other"
        await claim.write(claim.record.model_copy(update={"reason": "seen"}))
    found = ledger.read(KEY)
    assert found is not None and (found.task_id, found.reason) == ("t-other", "seen")


async def send_look(
    client: HiDreamClient,
    ledger: Ledger,
    photo: Path,
    run_id: str,
    *,
    absent: bool = False,
    budget: PeriodBudget | None = None,
) -> LedgerRecord:
    """``submit_once`` of the photo ``look`` under :data:`KEY`, for the run ``run_id``
    (reserving four images of ``budget``, if any)."""
    return await submit_once(
        client,
        ledger,
        key=KEY,
        prepared=PreparedPhoto(source=str(photo), source_sha256="c" * 64, upload_sha256="d" * 64),
        prepare=PrepareOptions(),
        item="look",
        template_id=20,
        rules=SubmitPolicy(run_id=run_id),
        upload=photo,
        absent=absent,
        budget=budget,
        images=4,
    )


async def test_a_send_planned_absent_is_not_sent_again_when_another_run_sent_it(
    store: Store, sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    sandbox = sandbox_factory()
    photo = make_photo(tmp_path / "look.jpg")
    budget = PeriodBudget(store, limit=8)
    async with HiDreamClient(TOKEN, base_url=sandbox.base_url) as client:
        # Both runs planned before either sent: each takes the key as absent.
        first = await send_look(
            client, open_ledger(store), photo, "run-1", absent=True, budget=budget
        )
        second = await send_look(
            client, open_ledger(store), photo, "run-2", absent=True, budget=budget
        )
    assert first.state is SubmissionState.SUBMITTED
    assert second.task_id == first.task_id
    assert len(sandbox.submissions()) == 1
    assert budget.left().left == 4, "the second run's reservation came back: nothing sent"


async def test_finishing_swaps_the_version_last_seen_and_never_a_newer_one(store: Store) -> None:
    ledger = open_ledger(store)
    async with ledger.claim(KEY) as claim:
        submitted = await claim.write(record(state=SubmissionState.SUBMITTED, task_id="t-1"))
    done = submitted.model_copy(update={"state": SubmissionState.FINISHED, "outcome": "succeeded"})
    assert await ledger.finish(done) is not None
    found = ledger.read(KEY)
    assert found is not None and found.state is SubmissionState.FINISHED
    # Another run starts a new attempt; a late finish of the old one must not win.
    async with open_ledger(store).claim(KEY) as claim:
        assert claim.record is not None
        newer = claim.record.model_copy(update={"attempt": 2, "task_id": "t-2"})
        await claim.write(newer.model_copy(update={"state": SubmissionState.SUBMITTED}))
    assert await ledger.finish(done) is None
    found = ledger.read(KEY)
    assert found is not None and (found.task_id, found.state) == ("t-2", SubmissionState.SUBMITTED)
    assert await open_ledger(store).finish(done) is None  # a ledger that never saw it


async def test_a_bucket_ledger_is_listed_and_only_listed_records_are_read(
    bucket: str, tmp_path: Path
) -> None:
    store = open_store(bucket)
    ledger = open_ledger(store)
    async with ledger.claim(KEY) as claim:
        written = await claim.write(record())
    listed = ledger.listing(wanted=20)
    assert listed is not None and ledger.record_key(KEY) in listed
    absent = "e" * 64
    assert open_ledger(store).read_many([KEY, absent], listed) == {KEY: written, absent: None}
    assert ledger.listing(wanted=1) is None  # one record: reading it is cheaper than listing
    assert open_ledger(open_store(tmp_path / "out")).listing(99) is None  # a folder reads files


async def test_a_listing_takes_records_unchanged_since_the_digest_from_it(bucket: str) -> None:
    store = open_store(bucket)
    first, second, third = "a" * 64, "c" * 64, "d" * 64
    ledger = open_ledger(store)
    for key in (first, second, third):
        async with ledger.claim(key) as claim:
            await claim.write(record(key, state=SubmissionState.SUBMITTED, task_id=key[:8]))
    ledger.remember(ledger.listing(wanted=20))
    digest = store.read(layout.LEDGER_DIGEST)

    # Since then another process finished one set and dropped another's record.
    other = open_ledger(store)
    async with other.claim(second) as claim:
        assert claim.record is not None
        finished = await claim.write(
            claim.record.model_copy(update={"state": SubmissionState.FINISHED})
        )
    async with other.claim(third) as claim:
        await claim.forget()

    rerun = open_ledger(store)
    listed = rerun.listing(wanted=20)
    assert listed is not None
    assert listed.vouched(first, rerun.record_key(first)) is not None
    assert listed.vouched(second, rerun.record_key(second)) is None  # changed: read again
    records = rerun.read_many([first, second, third], listed)
    assert records[first] == ledger.read(first)
    assert records[second] == finished
    assert records[third] is None
    done = finished.model_copy(update={"outcome": "succeeded"})
    assert await rerun.finish(done) is not None  # the ETag it learnt is the record's

    rerun.remember(listed)
    updated = store.read(layout.LEDGER_DIGEST)
    assert updated.etag != digest.etag
    again = open_ledger(store)
    listed = again.listing(wanted=20)
    assert listed is not None and set(listed.remembered) == {first, second}
    assert again.read_many([first, second], listed) == {k: rerun.read(k) for k in (first, second)}
    again.remember(listed)  # it says nothing the digest does not: not written again
    assert store.read(layout.LEDGER_DIGEST).etag == updated.etag


def test_the_digest_keeps_each_record_as_stored_and_only_what_is_one_line() -> None:
    stored = record().model_dump_json().encode()
    entries = {KEY: ('"0a1b"', stored), "c" * 64: ('W/"2c"', b'{"a": 1}')}
    assert decode(encode(entries)) == entries
    assert encode(entries) == encode(dict(reversed(entries.items())))  # written once
    odd = {**entries, "d" * 64: ('"3d"', b'{\n"a": 1}'), "e" * 64: ('"a b"', stored)}
    assert decode(encode(odd)) == entries  # left out, read when wanted
    assert decode(b"not a digest") == {} == decode(None)


async def test_a_damaged_digest_costs_reads_not_answers(bucket: str) -> None:
    store = open_store(bucket)
    ledger = open_ledger(store)
    async with ledger.claim(KEY) as claim:
        written = await claim.write(record())
    store.write(layout.LEDGER_DIGEST, b"not a digest")
    listed = ledger.listing(wanted=20)
    assert listed is not None and listed.remembered == {}
    assert open_ledger(store).read_many([KEY], listed) == {KEY: written}
    ledger.remember(listed)
    listed = open_ledger(store).listing(wanted=20)
    assert listed is not None and listed.vouched(KEY, ledger.record_key(KEY)) is not None


async def test_forget_drops_the_record(store: Store) -> None:
    ledger = open_ledger(store)
    async with ledger.claim(KEY) as claim:
        await claim.write(record())
        await claim.forget()
    assert ledger.read(KEY) is None
    async with ledger.claim(KEY) as claim:
        assert claim.record is None


async def test_collecting_is_exclusive_and_can_be_declined(store: Store) -> None:
    ledger = open_ledger(store)
    async with ledger.collecting(KEY, wait=False) as first:
        assert first
        async with ledger.collecting(KEY, wait=False) as second:
            assert not second
    async with ledger.collecting(KEY, wait=False) as again:
        assert again


async def test_an_upload_hash_has_one_owner(store: Store) -> None:
    ledger = open_ledger(store)
    upload, first, second = "u" * 64, "1" * 64, "2" * 64
    for key in (first, second):  # an upload is claimed once its key's intent is on record
        async with ledger.claim(key) as claim:
            await claim.write(record(key))
    owners = await asyncio.gather(
        ledger.claim_upload(upload, first), ledger.claim_upload(upload, second)
    )
    assert len(set(owners)) == 1
    [owner] = set(owners)
    assert ledger.upload_owners([upload]) == {upload: owner}
    # An owner whose send certainly created nothing gives the upload back.
    await ledger.release_upload(upload, owner)
    other = second if owner == first else first
    assert await ledger.claim_upload(upload, other) == other


async def test_an_owner_without_a_record_is_replaced(store: Store) -> None:
    ledger = open_ledger(store)
    upload, gone, second = "u" * 64, "1" * 64, "2" * 64
    assert await ledger.claim_upload(upload, gone) == gone  # its record was never written
    assert await ledger.claim_upload(upload, second) == second


# -- leases (bucket) -------------------------------------------------------------------


def lease_key(name: str = KEY) -> str:
    return f".modelset/ledger/{name}.lease"


def leased(bucket: str, duration_s: float = 900.0) -> tuple[Store, Ledger]:
    store = open_store(bucket)
    return store, Ledger(store, LeaseLocks(store, ".modelset/ledger", duration_s))


def ghost_lease(store: Store, expires: float) -> None:
    body = json.dumps({"owner": "ghost:1", "expires": expires}).encode()
    store.write(lease_key(), body)


async def test_an_expired_lease_is_taken_over(bucket: str) -> None:
    store, ledger = leased(bucket)
    ghost_lease(store, time.time() - 1)  # its holder died and stopped renewing
    # One try, which a claim makes first: taken over, not waited for.
    async with ledger.locks.hold(KEY, wait=False) as hold:
        assert hold is not None and hold.time_left() > 800
    assert json.loads(store.read(lease_key()).data)["expires"] == 0.0  # released


async def test_a_live_lease_is_waited_for(bucket: str) -> None:
    store, ledger = leased(bucket)
    ghost_lease(store, time.time() + 1.5)
    started = time.monotonic()
    async with ledger.claim(KEY):
        waited = time.monotonic() - started
    assert waited >= 1.0, f"claimed a key held by a live lease after {waited:.2f} s"


async def test_a_failed_renewal_marks_the_hold_lost(bucket: str) -> None:
    store, ledger = leased(bucket, duration_s=0.6)
    async with ledger.claim(KEY) as claim:
        assert not claim.hold.lost.is_set()
        renewals = [claim.hold.expires]  # each renewal moves the expiry

        def renewed_twice_or_lost() -> bool:
            if claim.hold.expires != renewals[-1]:
                renewals.append(claim.hold.expires)
            return len(renewals) > 2 or claim.hold.lost.is_set()

        await until(renewed_twice_or_lost, what=lambda: f"renewals: {renewals}")
        assert not claim.hold.lost.is_set()
        ghost_lease(store, time.time() + 60)  # taken over behind our back
        async with asyncio.timeout(WAIT_S):
            await claim.hold.lost.wait()
    # The holder that lost its lease does not release the new holder's lease.
    assert json.loads(store.read(lease_key()).data)["owner"] == "ghost:1"


@pytest.mark.parametrize("proven", [True, False], ids=["lookup-proven", "documented"])
async def test_a_lost_lease_stops_the_send_and_a_rerun_finds_it(
    bucket: str, sandbox_factory: SandboxFactory, tmp_path: Path, proven: bool
) -> None:
    """The holder stops sending when its lease goes; the next claimer resolves the intent
    by a request_id lookup proven to work, and never sends it again; without the proof
    it leaves it unknown, sent once."""
    sandbox: SandboxServer = sandbox_factory(latency_ms=1500, lookup_by_request_id=proven)
    photo = make_photo(tmp_path / "look.jpg")
    store, ledger = leased(bucket, duration_s=0.9)
    client = HiDreamClient(TOKEN, base_url=sandbox.base_url, request_id_lookup_proven=proven)

    async def steal_lease() -> None:
        # While the send is in the service's hands (its latency), after its intent.
        await until(lambda: sandbox.in_flight(SUBMIT_PATH), what="no send reached the sandbox")
        ghost_lease(store, time.time() + 0.6)

    async with client:
        first, _ = await asyncio.gather(send_look(client, ledger, photo, "run-1"), steal_lease())
        assert first.state is SubmissionState.UNKNOWN
        assert "lease was lost" in (first.reason or "")
        on_record = ledger.read(KEY)
        assert on_record is not None and on_record.state is SubmissionState.INTENT
        # The sandbox is done with the request the holder abandoned: its task is created
        # or it is not, before the next claimer looks.
        await until(lambda: sandbox.in_flight() == 0, what="the abandoned send never ended")
        second = await send_look(client, ledger, photo, "run-2")
    if not proven:
        assert second.state is SubmissionState.UNKNOWN
        assert (second.reason or "").startswith("paid, not collected")
        assert len(sandbox.submissions()) <= 1
        return
    assert second.state is SubmissionState.SUBMITTED
    # Whether or not the abandoned request reached the service, it is paid for once: found
    # by its request_id, or (never created) sent by the second run.
    [paid] = sandbox.submissions()
    assert second.task_id == paid["task_id"]


async def test_a_lease_of_a_dead_process_of_this_host_is_taken_over_at_once(
    bucket: str,
) -> None:
    """After a kill -9 the rerun on the same machine does not wait out the lease."""
    store, ledger = leased(bucket)
    code = "from modelset.ledger.locks import owner_name; print(owner_name())"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await child.communicate()
    dead = out.decode().strip()
    body = json.dumps({"owner": dead, "expires": time.time() + 900}).encode()
    store.write(lease_key(), body)
    # One try, which a claim makes first: taken over, not waited out.
    async with ledger.locks.hold(KEY, wait=False) as hold:
        assert hold is not None and hold.time_left() > 800
