"""``modelset demo``: the pipeline on the bundled photos, against an in-process sandbox."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from modelset.cli.batch import run_flow
from modelset.cli.common import console
from modelset.cli.summary import exit_code
from modelset.options import RunOptions

DEMO_TEMPLATES = [20, 21]
DEMO_TOKEN = "demo-token"  # noqa: S105 - the in-process sandbox's own token
DEMO_PHOTOS = Path(__file__).parent.parent / "demo" / "photos"


def demo(
    out: Annotated[Path, typer.Option(help="Where the demo's report goes.")] = Path("output/demo"),
) -> None:
    """Run the pipeline on the bundled sample photos against an in-process sandbox."""
    from modelset.sandbox import SandboxConfig, SandboxServer

    config = SandboxConfig(port=0, token=DEMO_TOKEN, latency_ms=100, generation_s=2.0)
    with SandboxServer(config) as server:
        os.environ.update(
            {
                "HIDREAM_BASE_URL": server.base_url,
                "HIDREAM_API_TOKEN": config.token,
                "HIDREAM_ALLOW_PRIVATE_URLS": "true",
                "HIDREAM_API_TOKEN_BLOCK": "",
            }
        )
        console.print(f"sandbox listening on {server.base_url}")
        summary = run_flow([str(DEMO_PHOTOS)], DEMO_TEMPLATES, RunOptions(out=str(out)))
    raise typer.Exit(exit_code(summary))
