"""The `modelset` command's non-orchestrating commands against the sandbox."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from modelset.cli import app
from modelset.sandbox import SandboxServer
from tests.conftest import TOKEN, SandboxFactory, make_photo

runner = CliRunner()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer) -> None:
    monkeypatch.setenv("HIDREAM_BASE_URL", sandbox.base_url)
    monkeypatch.setenv("HIDREAM_API_TOKEN", TOKEN)
    monkeypatch.delenv("HIDREAM_API_TOKEN_BLOCK", raising=False)


@pytest.mark.usefixtures("env")
def test_templates_lists_the_catalogue() -> None:
    result = runner.invoke(app, ["templates", "--gender", "woman"])
    assert result.exit_code == 0, result.output
    assert re.search(r"\b20\b", result.output)
    assert "woman" in result.output


@pytest.mark.usefixtures("env")
def test_gallery_holds_every_template_offline(tmp_path: Path, sandbox: SandboxServer) -> None:
    result = runner.invoke(app, ["templates", "--gallery", str(tmp_path / "gallery")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "gallery" / "index.html").read_text()
    previews = sorted((tmp_path / "gallery").glob("template-*.jpg"))
    ids = {int(p.stem.split("-")[1]) for p in previews}
    assert 20 in ids
    assert len(ids) >= 8
    for preview in previews:
        assert f"src='{preview.name}'" in page
        with Image.open(preview) as image:
            image.verify()
    assert "http" not in page.split("<div class='grid'>")[1], "the page must work offline"


def test_missing_token_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer
) -> None:
    monkeypatch.setenv("HIDREAM_BASE_URL", sandbox.base_url)
    monkeypatch.delenv("HIDREAM_API_TOKEN", raising=False)
    monkeypatch.delenv("HIDREAM_API_TOKEN_BLOCK", raising=False)
    monkeypatch.chdir(Path(__file__).parent)  # no stray .env
    result = runner.invoke(app, ["templates"])
    assert result.exit_code == 2
    assert "HIDREAM_API_TOKEN" in result.output
    assert "Traceback" not in result.output


def test_refused_account_exits_3_and_never_shows_the_token(
    monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer
) -> None:
    monkeypatch.setenv("HIDREAM_BASE_URL", sandbox.base_url)
    monkeypatch.setenv("HIDREAM_API_TOKEN", "expired-token-9z9z")
    result = runner.invoke(app, ["templates"])
    assert result.exit_code == 3
    assert "token" in result.output
    assert "expired-token-9z9z" not in result.output


@pytest.mark.usefixtures("env")
def test_status_shows_every_sub_task(sandbox: SandboxServer, tmp_path: Path) -> None:
    import asyncio

    from modelset.hidream import HiDreamClient

    async def submit() -> str:
        async with HiDreamClient(TOKEN, base_url=sandbox.base_url) as client:
            receipt = await client.submit_variation(make_photo(tmp_path / "p.jpg"), 20)
            await client.wait_for_result(receipt.task_id, deadline=10)
            return receipt.task_id

    task_id = asyncio.run(submit())
    result = runner.invoke(app, ["status", task_id])
    assert result.exit_code == 0, result.output
    assert result.output.count("succeeded") == 4


def test_status_of_failed_sub_tasks_exits_1(
    monkeypatch: pytest.MonkeyPatch, sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    import asyncio

    from modelset.hidream import HiDreamClient

    failing = sandbox_factory(faults={"fail": 1.0})
    monkeypatch.setenv("HIDREAM_BASE_URL", failing.base_url)
    monkeypatch.setenv("HIDREAM_API_TOKEN", TOKEN)

    async def submit() -> str:
        async with HiDreamClient(TOKEN, base_url=failing.base_url) as client:
            receipt = await client.submit_variation(make_photo(tmp_path / "p.jpg"), 20)
            await client.wait_for_result(receipt.task_id, deadline=10)
            return receipt.task_id

    result = runner.invoke(app, ["status", asyncio.run(submit())])
    assert result.exit_code == 1
    assert "generation failed" in result.output


def test_sandbox_command_rejects_bad_faults() -> None:
    result = runner.invoke(app, ["sandbox", "--faults", "explode=2"])
    assert result.exit_code == 2
    assert "--faults" in result.output
