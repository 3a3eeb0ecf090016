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
