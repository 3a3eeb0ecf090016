"""One contract, every store: the folder store on a temp folder and the bucket store on a
real S3 server (moto's, in a subprocess). Each test names a promise of
:class:`modelset.storage.Store` that the ledger, the budget and the report rest on.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from modelset import layout
from modelset.sandbox.bucket import BucketProxy
from modelset.storage import (
    AlreadyExists,
    Blob,
    BucketStore,
    ConditionalWritesIgnored,
    FolderStore,
    NotFound,
    PreconditionFailed,
    Store,
    is_remote,
    open_store,
    probe_conditional_writes,
    update,
)


@pytest.fixture(params=["folder", "bucket"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "folder":
        folder = open_store(tmp_path / "out")
        assert isinstance(folder, FolderStore)
        return folder
    bucket = open_store(request.getfixturevalue("bucket"))
    assert isinstance(bucket, BucketStore)
    return bucket


def test_open_store_names_the_location_as_given(bucket: str, tmp_path: Path) -> None:
    on_bucket = open_store(bucket)
    assert (on_bucket.url, on_bucket.is_local) == (bucket, False)
    in_folder = open_store(tmp_path / "out")
    assert (in_folder.url, in_folder.is_local) == (str(tmp_path / "out"), True)


@pytest.mark.parametrize(
    ("name", "remote"),
    [
        ("s3://shop/in/a.jpg", True),
        ("https://example.com/a.jpg", True),
        ("file:///photos/a.jpg", True),
        ("/photos/a.jpg", False),
        ("photos/a:b.jpg", False),
    ],
)
def test_a_url_is_remote_and_a_path_is_not(name: str, remote: bool) -> None:
    assert is_remote(name) is remote


def test_reading_a_missing_key_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.read("nothing/here.json")
    with pytest.raises(NotFound):
        store.head("nothing/here.json")
    with pytest.raises(NotFound):
        store.read_chunks("nothing/here.json")
    with pytest.raises(NotFound):
        store.read_start("nothing/here.json", 16)


def test_a_prefix_is_not_an_object(store: Store) -> None:
    store.write("folder/inside.txt", b"x")
    with pytest.raises(NotFound):
        store.read("folder")
    with pytest.raises(NotFound):
        store.head("folder")


def test_write_read_round_trip_and_every_write_changes_the_etag(store: Store) -> None:
    etags = []
    # Same length each time: an ETag made of the size alone would not change.
    for data in (b"first", b"other", b"third"):
        etag = store.write("a/key.json", data)
        blob = store.read("a/key.json")
        assert (blob.data, blob.etag) == (data, etag)
        assert store.head("a/key.json").etag == etag
        etags.append(etag)
    assert len(set(etags)) == 3
    assert all(etags)


def test_write_file_streams_a_file_and_read_chunks_streams_it_back(
    store: Store, tmp_path: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    source = tmp_path / "big.bin"
    source.write_bytes(data)

    etag = store.write_file("images/big.bin", source)

    blob = store.read("images/big.bin")
    assert blob.data == data
    assert blob.etag == etag
    head = store.head("images/big.bin")
    assert (head.size, head.etag) == (len(data), etag)
    with closing(store.read_chunks("images/big.bin", chunk_size=1024 * 1024)) as stream:
        chunks = list(stream)
    assert b"".join(chunks) == data
    assert len(chunks) > 1  # streamed, not read whole


def test_read_start_reads_the_first_bytes_of_long_short_and_empty_objects(
    store: Store,
) -> None:
    store.write("long.bin", b"0123456789" * 1000)
    store.write("short.bin", b"abc")
    store.write("empty.bin", b"")
    assert store.read_start("long.bin", 16) == b"0123456789012345"
    assert store.read_start("short.bin", 16) == b"abc"
    assert store.read_start("empty.bin", 16) == b""


def test_create_twice_raises_already_exists_and_keeps_the_first(store: Store) -> None:
    etag = store.create("ledger/claim.json", b"mine")
    assert store.read("ledger/claim.json").etag == etag
    with pytest.raises(AlreadyExists):
        store.create("ledger/claim.json", b"yours")
    assert store.read("ledger/claim.json").data == b"mine"


def test_swap_with_the_current_etag_succeeds_and_a_stale_one_fails(store: Store) -> None:
    first = store.write("state.json", b"one")
    second = store.swap("state.json", b"two", first)
    assert second != first
    assert store.read("state.json") == Blob(b"two", second)

    with pytest.raises(PreconditionFailed):
        store.swap("state.json", b"lost", first)
    assert store.read("state.json").data == b"two"

    third = store.swap("state.json", b"three", second)
    assert store.read("state.json").etag == third


def test_swap_of_a_missing_key_fails(store: Store) -> None:
    etag = store.write("gone.json", b"here")
    store.delete("gone.json")
    with pytest.raises(PreconditionFailed):
        store.swap("gone.json", b"back", etag)
    with pytest.raises(NotFound):
        store.read("gone.json")


def test_list_returns_sorted_keys_below_a_prefix_and_only_those(store: Store) -> None:
    keys = ["a/b/2.json", "ab", "a/bc", "a/b/1/deep.json", "a/b.json", "z"]
    for key in keys:
        store.write(key, key.encode())
    store.swap("z", b"changed", store.read("z").etag)  # leaves no lock file in a listing

    assert store.list("a/b") == ["a/b/1/deep.json", "a/b/2.json"]
    assert store.list("a") == ["a/b.json", "a/b/1/deep.json", "a/b/2.json", "a/bc"]
    assert store.list("") == sorted(keys)
    assert store.list("nothing") == []
    assert store.list("ab") == []  # an object, not a prefix


def test_a_limited_list_gives_the_first_keys_and_says_there_may_be_more(store: Store) -> None:
    keys = [f"many/{n:02d}" for n in range(12)]
    for key in reversed(keys):
        store.write(key, b"x")

    assert store.list("many", limit=5) == keys[:5]  # five back: there may be more
    assert store.list("many", limit=12) == keys
    assert store.list("many", limit=50) == keys  # fewer than the limit: that is all


def test_list_etags_names_what_list_names_with_the_etag_of_each_version(store: Store) -> None:
    written = {key: store.write(key, key.encode()) for key in ("e/1", "e/2", "e/3/deep")}
    written["e/2"] = store.swap("e/2", b"changed", written["e/2"])

    listed = store.list_etags("e")
    assert list(listed) == store.list("e")
    assert listed == written
    assert listed["e/2"] == store.read("e/2").etag == store.head("e/2").etag
    assert store.list_etags("e", limit=2) == {key: written[key] for key in ("e/1", "e/2")}
    assert store.list_etags("nothing") == {}


def test_delete_is_idempotent(store: Store) -> None:
    store.write("tmp/x", b"x")
    store.delete("tmp/x")
    with pytest.raises(NotFound):
        store.read("tmp/x")
    store.delete("tmp/x")
    store.delete("never/was")
    assert store.list("tmp") == []


BAD_KEYS = ["../escape", "a/../../escape", "/etc/passwd", "a//b", "a/./b", "", "a/"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_that_could_leave_the_location_raise_value_error(store: Store, key: str) -> None:
    verbs: list[Callable[[], object]] = [
        lambda: store.read(key),
        lambda: store.head(key),
        lambda: store.read_chunks(key),
        lambda: store.write(key, b"x"),
        lambda: store.create(key, b"x"),
        lambda: store.swap(key, b"x", "etag"),
        lambda: store.delete(key),
        lambda: store.local_path(key),
        lambda: store.presign(key, timedelta(minutes=1)),
    ]
    if key:  # "" lists everything
        verbs.append(lambda: store.list(key))
    for verb in verbs:
        with pytest.raises(ValueError, match="not a storage key"):
            verb()
    assert store.list("") == []


def test_update_does_not_write_bytes_that_did_not_change(store: Store) -> None:
    store.write("doc.json", b"same")
    etag = store.read("doc.json").etag
    assert update(store, "doc.json", lambda current: (b"same", "kept")) == "kept"
    assert store.read("doc.json").etag == etag  # not written again: on a bucket, no request


def test_update_is_exact_under_concurrent_writers(store: Store) -> None:
    threads, increments = 8, 5
    seen: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def increment(current: bytes | None) -> tuple[bytes, int]:
        count = 0 if current is None else int(json.loads(current)["count"])
        return json.dumps({"count": count + 1}).encode(), count + 1

    def worker() -> None:
        try:
            start.wait()
            for _ in range(increments):
                seen.append(update(store, "budget/counter.json", increment))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()

    assert errors == []
    total = threads * increments
    assert json.loads(store.read("budget/counter.json").data) == {"count": total}
    # Every increment saw its own value: no two writers won the same compare-and-swap.
    assert sorted(seen) == list(range(1, total + 1))


def test_the_probe_passes_and_leaves_nothing_behind(store: Store) -> None:
    probe_conditional_writes(store)
    assert store.list(layout.PROBE) == []


def test_the_probe_refuses_a_store_that_ignores_conditional_writes(
    careless_bucket: str, careless_s3: BucketProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    careless = open_store(careless_bucket)
    dropped = careless_s3.counts["dropped"]
    with pytest.raises(ConditionalWritesIgnored) as info:
        probe_conditional_writes(careless)
    assert careless_bucket in str(info.value)
    assert careless_s3.counts["dropped"] > dropped  # the proxy, not a broken store, caused it
    assert careless.list(layout.PROBE) == []
    # The same bucket straight on the server (no proxy) passes: the headers made the
    # difference.
    monkeypatch.setenv(
        "AWS_ENDPOINT_URL", f"http://{careless_s3.upstream_host}:{careless_s3.upstream_port}"
    )
    probe_conditional_writes(open_store(careless_bucket))


def test_presign_gives_a_link_that_needs_no_credentials(store: Store) -> None:
    data = b"\x89PNG not really"
    store.write("thumbs/a.png", data)
    url = store.presign("thumbs/a.png", timedelta(minutes=5))
    if store.is_local:
        assert url is None
        return
    assert url is not None
    assert url.startswith(("http://", "https://"))
    with httpx.Client(trust_env=False) as client:  # no credentials of any kind
        response = client.get(url)
    assert (response.status_code, response.content) == (200, data)


def test_local_path_is_the_file_for_a_folder_and_none_for_a_bucket(store: Store) -> None:
    store.write("report/index.html", b"<html>")
    path = store.local_path("report/index.html")
    if store.is_local:
        assert path is not None
        assert path.read_bytes() == b"<html>"
    else:
        assert path is None
