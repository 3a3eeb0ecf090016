"""The photo hashes a run starts while Prefect is imported are the ledger keys' input:
one taken early must never stand for a file that changed since."""

from __future__ import annotations

import hashlib
from pathlib import Path

from modelset.hashing import hash_file, hash_files, start_hashing


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_hash_started_early_stands_only_for_the_file_as_it_was(tmp_path: Path) -> None:
    photo, big = tmp_path / "a.jpg", tmp_path / "b.jpg"
    photo.write_bytes(b"first")
    big.write_bytes(b"x" * 3_000_000)
    start_hashing([photo, big, tmp_path / "gone.jpg"])  # a missing file is left to the run
    photo.write_bytes(b"second, longer")  # changed after its hash was started

    assert hash_files([big, photo]) == [sha256(b"x" * 3_000_000), sha256(b"second, longer")]
    assert hash_file(big) == sha256(b"x" * 3_000_000)  # taken once, hashed again after
