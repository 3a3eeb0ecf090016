"""The engine run in-process, without Prefect: what only the in-process orchestrator does
itself (shards as runs of this process, a Secret block it cannot read)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from modelset import UsageError
from modelset.batch import InProcess, run_batch
from modelset.options import RunOptions
from modelset.report import read_manifest
from modelset.sandbox import SandboxServer
from tests.conftest import make_photo


def test_a_sharded_batch_runs_its_shards_in_this_process_and_pays_once(
    env: dict[str, str], sandbox: SandboxServer, tmp_path: Path
) -> None:
    for index in range(5):
        make_photo(tmp_path / "in" / f"s{index}.jpg", colour=(index * 40, 90, 160))
    out = str(tmp_path / "out")
    options = RunOptions(out=out, shard_size=2)

    summary = asyncio.run(run_batch([str(tmp_path / "in")], [20], options, InProcess()))

    assert summary.plan.tasks == 3, "three shards: 2, 2 and 1 photos"
    assert [row.status for row in summary.rows] == ["succeeded"] * 5
    assert len(sandbox.submissions()) == 5
    assert len(read_manifest(out)) == 5


def test_a_secret_block_needs_prefect_and_says_so(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HIDREAM_API_TOKEN", raising=False)
    monkeypatch.setenv("HIDREAM_API_TOKEN_BLOCK", "hidream-token")
    make_photo(tmp_path / "in" / "a.jpg")
    options = RunOptions(out=str(tmp_path / "out"))
    with pytest.raises(UsageError, match="set HIDREAM_API_TOKEN instead"):
        asyncio.run(run_batch([str(tmp_path / "in")], [20], options, InProcess()))
