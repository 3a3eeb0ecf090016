"""What a run into a bucket asks of it: on a real bucket every request is money and
10-50 ms of latency (docs/storage.md, "What a set costs").

Through a proxy that logs every request (``modelset.sandbox.bucket``), a first run:
learns which ledger records exist from a listing instead of asking for each (no record
is asked for only to hear it is not there); takes one lease per set and finishes the set
with one compare-and-swap; stores a set's thumbnails as one object; and reads back none
of the thumbnails it stored (the report and the summary use this run's copies); and
leaves the ledger's digest. A rerun with nothing to do reads no record (the listing
vouches for the digest's) and writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelset.sandbox.bucket import BucketProxy
from tests.conftest import SandboxFactory, make_bucket
from tests.test_infrastructure_faults import make_batch
from tests.test_reliability import MATRIX_SANDBOX, Harness, check_batch

PHOTOS = 12


@pytest.fixture
def logged_bucket(
    s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[BucketProxy, str]]:
    proxy = BucketProxy(s3_server).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    try:
        yield proxy, f"s3://{make_bucket(s3_server)}/out"
    finally:
        proxy.stop()


def asked(requests: list[tuple[str, str, int]], method: str, part: str) -> list[tuple[str, int]]:
    """(path, status) of the requests of ``method`` whose path contains ``part``."""
    return [(path, status) for m, path, status in requests if m == method and part in path]


@pytest.mark.usefixtures("prefect_server")
def test_a_first_run_asks_for_nothing_twice_and_a_rerun_only_reads(
    harness: Harness,
    sandbox_factory: SandboxFactory,
    logged_bucket: tuple[BucketProxy, str],
    tmp_path: Path,
) -> None:
    proxy, out = logged_bucket
    batch = make_batch(tmp_path / "batch", PHOTOS)
    sandbox = sandbox_factory(**MATRIX_SANDBOX)
    harness.point_at(sandbox)

    first = harness.run([str(batch)], out)
    assert first.is_completed(), first.message
    check_batch(out, sandbox, photos=PHOTOS)
    requests = list(proxy.answered)

    ledger_reads = asked(requests, "GET", "/.modelset/ledger/")
    assert [path for path, status in ledger_reads if status == 404] == []
    assert asked(requests, "GET", "/.modelset/thumbs/") == []
    assert len(asked(requests, "PUT", "/thumbnails.json")) == PHOTOS
    assert len(asked(requests, "PUT", ".lease")) == 2 * PHOTOS  # taken, released
    records = [p for p, _ in asked(requests, "PUT", "/.modelset/ledger/") if p.endswith(".json")]
    assert len(records) == 3 * PHOTOS  # intent, submitted, finished
    assert len(asked(requests, "PUT", "/.modelset/ledger-digest")) == 1

    done = len(proxy.answered)
    rerun = harness.run([str(batch)], out)
    assert rerun.is_completed(), rerun.message
    assert len(sandbox.submissions()) == PHOTOS, "the rerun paid again"
    again = proxy.answered[done:]
    assert asked(again, "GET", "/.modelset/ledger/") == []
    assert asked(again, "GET", "/.modelset/ledger-digest") == [
        (path, 200) for path, _ in asked(requests, "PUT", "/.modelset/ledger-digest")
    ]
    written = [path for method, path, _ in again if method in ("PUT", "POST", "DELETE")]
    probe = [path for path in written if "/.modelset/probe/" in path or path.endswith("?delete")]
    assert written == probe  # only the start's check of conditional writes (and its removal)
