"""scan_inbox: only what is new, rejected photos reported once, quiet nights Completed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.objects import State

from modelset.flows.inbox import scan_inbox
from modelset.options import RunOptions
from modelset.sandbox import SandboxServer
from tests.conftest import make_photo

pytestmark = pytest.mark.usefixtures("prefect_server", "env")


def scan(inbox: Path, out: Path) -> State[Any]:
    async def go() -> State[Any]:
        return await scan_inbox(
            str(inbox), [20], RunOptions(out=str(out), max_images=100), return_state=True
        )

    return asyncio.run(go())


def test_nightly_scan_processes_only_new_photos(sandbox: SandboxServer, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    out = tmp_path / "out"
    make_photo(inbox / "a.jpg", colour=(200, 0, 0))
    (inbox / "broken.jpg").write_bytes(b"<html>nope</html>")

    first = scan(inbox, out)
    assert first.is_failed(), "the rejected photo is reported on its first night"
    assert "broken" in (first.message or "")
    assert len(sandbox.submissions()) == 1

    quiet = scan(inbox, out)
    assert quiet.is_completed(), quiet.message
    assert "nothing new" in (quiet.message or "")
    assert len(sandbox.submissions()) == 1

    make_photo(inbox / "b.jpg", colour=(0, 200, 0))
    third = scan(inbox, out)
    assert third.is_completed(), third.message
    assert len(sandbox.submissions()) == 2


def test_an_empty_inbox_is_a_quiet_night(sandbox: SandboxServer, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    state = scan(inbox, tmp_path / "out")
    assert state.is_completed(), state.message
    assert "nothing new" in (state.message or "")
    assert "report:" in (state.message or "")
    assert sandbox.submissions() == []


def test_a_missing_inbox_fails_naming_the_path_and_the_parameter(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-inbox"
    state = scan(missing, tmp_path / "out")
    assert state.is_failed()
    assert str(missing) in (state.message or "")
    assert "inbox parameter" in (state.message or "")


def test_an_inbox_in_a_bucket_remembers_what_it_finished(
    sandbox: SandboxServer, bucket: str, tmp_path: Path
) -> None:
    from modelset.storage import open_store

    photos = open_store(bucket.replace("/out", "/inbox"))
    photos.write_file("a.jpg", make_photo(tmp_path / "a.jpg", colour=(10, 20, 200)))
    out = bucket
    for _ in range(2):

        async def go() -> State[Any]:
            return await scan_inbox(
                photos.url, [20], RunOptions(out=out, max_images=100), return_state=True
            )

        state = asyncio.run(go())
        assert state.is_completed(), state.message
    assert "nothing new" in (state.message or "")
    assert len(sandbox.submissions()) == 1
