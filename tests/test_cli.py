"""The `modelset` command's non-orchestrating commands against the sandbox."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from modelset.cli import app
from modelset.sandbox import SandboxServer
from tests.conftest import TOKEN, SandboxFactory, hidream_env, make_photo

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
        assert f'src="{preview.name}"' in page
        with Image.open(preview) as image:
            image.verify()
    assert "http" not in page.split('<div class="grid">')[1], "the page must work offline"


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


# -- failing fast, before Prefect ------------------------------------------------------


def cli_without_prefect(
    args: list[str], env: dict[str, str], cwd: Path, *, module: str = "prefect"
) -> tuple[int, str, bool]:
    """Run ``modelset ARGS``; returns the exit code, its output, and whether ``module``
    (Prefect; ``prefect.server``: what starting a Prefect server takes) or one of its
    submodules was imported (from ``python -X importtime``)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "modelset", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = done.stderr.splitlines()
    pattern = re.compile(rf"\|\s+{re.escape(module)}(\.|$)")
    imported = any(pattern.search(line) for line in lines)
    output = done.stdout + "\n".join(line for line in lines if not line.startswith("import time"))
    return done.returncode, output, imported


@pytest.fixture
def bare_env(tmp_path: Path) -> dict[str, str]:
    """The environment without any HIDREAM_* or Prefect setting."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HIDREAM_", "PREFECT_API"))
    }


def test_a_missing_token_exits_2_without_prefect(bare_env: dict[str, str], tmp_path: Path) -> None:
    photo = make_photo(tmp_path / "look.jpg")
    code, output, imported = cli_without_prefect(
        ["run", str(photo), "-t", "20"], bare_env, tmp_path
    )
    assert code == 2, output
    assert "HIDREAM_API_TOKEN" in output and "Traceback" not in output
    assert not imported, "Prefect was imported before the token was checked"


def test_a_missing_source_exits_2_without_prefect(bare_env: dict[str, str], tmp_path: Path) -> None:
    env = {**bare_env, "HIDREAM_API_TOKEN": TOKEN}
    code, output, imported = cli_without_prefect(
        ["run", str(tmp_path / "nowhere"), "-t", "20"], env, tmp_path
    )
    assert code == 2, output
    assert "does not exist" in " ".join(output.split())  # rich wraps a long path
    assert not imported


def test_a_malformed_option_names_itself(bare_env: dict[str, str], tmp_path: Path) -> None:
    photo = make_photo(tmp_path / "look.jpg")
    code, output, imported = cli_without_prefect(
        ["run", str(photo), "-t", "20", "--concurrency", "0"], bare_env, tmp_path
    )
    assert code == 2, output
    assert "--concurrency" in output and "Traceback" not in output
    assert not imported


def test_an_unknown_template_exits_2_after_one_catalogue_request(
    bare_env: dict[str, str],
    tmp_path: Path,
    sandbox: SandboxServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="modelset.sandbox")
    photo = make_photo(tmp_path / "look.jpg")
    env = {**bare_env, **hidream_env(sandbox)}
    # Prefect is imported meanwhile (the request and the import overlap), never used.
    code, output, started = cli_without_prefect(
        ["run", str(photo), "-t", "999"], env, tmp_path, module="prefect.server"
    )
    assert code == 2, output
    assert "unknown template id(s) 999" in output
    assert not started, "a Prefect server would have been started"
    requests = [r.getMessage() for r in caplog.records if r.name == "modelset.sandbox"]
    assert len([m for m in requests if "/template/" in m]) == 1, requests
    assert sandbox.submissions() == []


def test_an_unsupported_output_location_exits_2(bare_env: dict[str, str], tmp_path: Path) -> None:
    photo = make_photo(tmp_path / "look.jpg")
    env = {**bare_env, "HIDREAM_API_TOKEN": TOKEN}
    code, output, _ = cli_without_prefect(
        ["run", str(photo), "-t", "20", "--out", "ftp://host/x"], env, tmp_path
    )
    assert code == 2, output
    assert "unsupported output location" in output
    assert not (tmp_path / "ftp:").exists()


def test_run_options_refuse_unknown_fields() -> None:
    from pydantic import ValidationError

    from modelset.options import RunOptions

    with pytest.raises(ValidationError, match="reveiw"):
        RunOptions.model_validate({"reveiw": True})


def test_notify_upload_prints_its_own_line_only(prefect_server: str, tmp_path: Path) -> None:
    photo = make_photo(tmp_path / "look.jpg")
    done = subprocess.run(
        [sys.executable, "-m", "modelset", "notify-upload", str(photo), "-t", "20"],
        env={**os.environ, "PREFECT_API_URL": prefect_server},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("emitted modelset.photo.uploaded"), lines
