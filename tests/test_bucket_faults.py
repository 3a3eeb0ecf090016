"""The bucket store under a misbehaving S3: throttling, 5xx, dropped connections (before
and after a write landed), stalls and outages, injected by ``BucketProxy`` in front of
the session's moto server.

Retried: what S3 documents as retryable, within the attempts and the time budget.
Never resent blindly: a conditional write whose answer was lost, which is resolved by
reading the object back. Never retried: refused credentials.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest

from modelset.ledger.locks import LeaseLocks
from modelset.sandbox.bucket import BucketFaults, BucketProxy
from modelset.storage import AlreadyExists, PreconditionFailed, StoreUnavailable, update
from modelset.storage.objects import BucketStore, StoreRetry
from tests.conftest import make_bucket

QUICK = StoreRetry(attempts=6, budget=10.0, timeout=1.0, base=0.01, cap=0.05)


@pytest.fixture
def proxy(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[BucketProxy]:
    """A fault proxy in front of moto, with no faults until a test sets them;
    ``AWS_ENDPOINT_URL`` points at it for the test."""
    started = BucketProxy(s3_server, seed=11, stall_s=1.5).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", started.url)
    try:
        yield started
    finally:
        started.stop()


def bucket_store(proxy: BucketProxy, retry: StoreRetry = QUICK) -> BucketStore:
    return BucketStore(f"s3://{make_bucket(proxy.url)}/out", retry)


@pytest.mark.parametrize("fault", ["slowdown", "internal", "reset_before", "stall"])
def test_a_read_and_a_write_are_retried_past_a_transient_fault(
    proxy: BucketProxy, fault: str
) -> None:
    store = bucket_store(proxy)
    proxy.fail_next(fault)
    store.write("a.txt", b"one")
    proxy.fail_next(fault)
    assert store.read("a.txt").data == b"one"
    assert proxy.counts[fault] == 2


@pytest.mark.parametrize("fault", ["reset_after", "lost_answer", "internal", "reset_before"])
def test_a_create_whose_answer_was_lost_is_resolved_by_reading_it_back(
    proxy: BucketProxy, fault: str
) -> None:
    store = bucket_store(proxy)
    proxy.fail_next(fault)
    etag = store.create("claim.json", b"mine")
    assert store.read("claim.json").etag == etag
    # Taken by someone else meanwhile: the refusal stands, whatever was lost on the way.
    proxy.fail_next(fault)
    with pytest.raises(AlreadyExists):
        store.create("claim.json", b"theirs")
    assert store.read("claim.json").data == b"mine"


@pytest.mark.parametrize("fault", ["reset_after", "lost_answer", "internal", "reset_before"])
def test_a_swap_whose_answer_was_lost_is_resolved_by_reading_it_back(
    proxy: BucketProxy, fault: str
) -> None:
    store = bucket_store(proxy)
    first = store.create("lease.json", b"v1")
    proxy.fail_next(fault)
    second = store.swap("lease.json", b"v2", first)
    assert store.read("lease.json") == store.read("lease.json")
    assert store.read("lease.json").etag == second
    assert store.read("lease.json").data == b"v2"
    # A stale ETag stays refused, even when the refusal's answer is lost once.
    proxy.fail_next(fault)
    with pytest.raises(PreconditionFailed):
        store.swap("lease.json", b"v3", first)
    assert store.read("lease.json").data == b"v2"


@pytest.mark.parametrize("writes_on_top", [1, 3])
def test_a_lost_answer_is_not_sent_again_when_another_writer_already_built_on_it(
    proxy: BucketProxy, monkeypatch: pytest.MonkeyPatch, writes_on_top: int
) -> None:
    """Our swap lands, its answer is lost, and before we read it back another process
    swaps on top of it (once, or several times): ours is known to have landed, so a counter
    goes up by one per write, not one more (``update`` retries a refused swap with a fresh
    read)."""
    store = bucket_store(proxy)
    store.write("counter", b"0")
    other = BucketStore(store.url, QUICK)  # another process's view of the same bucket
    read_back = store._landed

    def after_another_writer(key: str, token: str, before: str | None) -> str | None:
        for _ in range(writes_on_top):
            current = other.read("counter")
            other.swap("counter", str(int(current.data) + 1).encode(), current.etag)
        return read_back(key, token, before)

    monkeypatch.setattr(store, "_landed", after_another_writer)
    before = store.read("counter")
    proxy.fail_next("reset_after")  # the swap's: it lands, its answer does not
    store.swap("counter", b"1", before.etag)  # succeeds: refused, update() would bump again
    assert store.read("counter").data == str(1 + writes_on_top).encode()
    assert proxy.counts["reset_after"] == 1


def test_concurrent_updates_on_a_faulty_bucket_lose_no_increment(proxy: BucketProxy) -> None:
    store = bucket_store(proxy)
    proxy.set_faults(BucketFaults(slowdown=0.1, internal=0.05, reset_before=0.02, reset_after=0.02))

    def increment(current: bytes | None) -> tuple[bytes, None]:
        return str(int(current or b"0") + 1).encode(), None

    def worker() -> None:
        for _ in range(10):
            update(store, "counter", increment)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    proxy.set_faults(BucketFaults())
    assert store.read("counter").data == b"40"
    faults = sum(proxy.counts[name] for name in ("slowdown", "internal", "reset_before"))
    assert faults + proxy.counts["reset_after"] > 0, proxy.counts


def test_an_outage_longer_than_the_budget_fails_clearly_and_in_time(proxy: BucketProxy) -> None:
    store = bucket_store(proxy, StoreRetry(attempts=50, budget=2.0, timeout=1.0, base=0.1, cap=0.5))
    proxy.outage(30)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        store.read("anything")
    took = time.monotonic() - started
    assert info.value.transient
    message = str(info.value)
    assert "gave up after" in message and store.url in message, message
    assert "testing" not in message  # no credential in the message
    assert took < 4.0, took


def test_an_outage_within_the_budget_is_waited_out(proxy: BucketProxy) -> None:
    patient = StoreRetry(attempts=50, budget=10.0, timeout=1.0, base=0.1, cap=0.5)
    store = bucket_store(proxy, patient)
    proxy.outage(1.5)
    store.write("after.txt", b"kept")
    assert store.read("after.txt").data == b"kept"
    assert proxy.counts["outage"] >= 2


def test_refused_credentials_are_not_retried(proxy: BucketProxy) -> None:
    store = bucket_store(proxy)
    before = proxy.counts["requests"]
    proxy.fail_next("denied", "denied")
    with pytest.raises(StoreUnavailable) as info:
        store.read("x")
    assert not info.value.transient
    assert "access refused" in str(info.value), info.value
    assert proxy.counts["requests"] - before == 1


async def test_a_lease_this_process_could_not_release_is_taken_back_at_once(
    proxy: BucketProxy,
) -> None:
    store = bucket_store(proxy, StoreRetry(attempts=3, budget=1.0, timeout=1.0, base=0.01))
    locks = LeaseLocks(store, "ledger", duration_s=600)
    async with locks.hold("key", wait=True) as held:
        assert held is not None
        proxy.outage(1.5)  # the release fails: the lease stays on the store
    proxy.outage(0)  # the release has given up: the store is back
    assert json.loads(store.read("ledger/key.lease").data)["expires"] > time.time() + 500
    # Another run of this process still sees a live lease; this one knows it let go.
    async with LeaseLocks(store, "ledger", duration_s=600).hold("key", wait=False) as other:
        assert other is None
    # One try: taken back, not waited for.
    async with locks.hold("key", wait=False) as again:
        assert again is not None
