"""``modelset doctor``: the checks of :mod:`modelset.doctor`, one line each."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from rich.text import Text

from modelset._exceptions import ExitCode
from modelset.cli.common import console, fail
from modelset.settings import Settings

if TYPE_CHECKING:
    from modelset.doctor import CheckResult


def doctor(
    out: Annotated[
        str | None,
        typer.Option(help="The output location to check (default: HIDREAM_OUTPUT_DIR)."),
    ] = None,
    template: Annotated[
        list[int] | None,
        typer.Option("--template", "-t", help="A template id that must exist; repeat."),
    ] = None,
    prefect_yaml: Annotated[
        Path | None,
        typer.Option(
            "--prefect-yaml",
            help="The prefect.yaml whose work pools to check (default: the repository's, "
            "else ./prefect.yaml).",
        ),
    ] = None,
) -> None:
    """Check what a run needs (token, templates, output, Prefect, callbacks); pays nothing.

    One line per check. Exit code 0 when what the configured mode needs is fine, 3 when
    the service refuses the account, 2 otherwise.
    """
    from modelset.doctor import exit_code, run_checks

    try:
        settings = Settings()
    except ValidationError as exc:
        fail(f"the HIDREAM_* settings are invalid: {exc}", ExitCode.USAGE)
    results = asyncio.run(
        run_checks(settings, out=out, template_ids=template or [], prefect_yaml=prefect_yaml)
    )
    for result in results:
        console.print(report_line(result), soft_wrap=True, highlight=False)
    raise typer.Exit(exit_code(results))


def report_line(result: CheckResult) -> Text:
    """``<mark> <name>: <detail>``, then what to do: ✓ fine, ✗ failed, ! advice, - not run."""
    if result.skipped:
        mark, style = "-", "dim"
    elif result.ok:
        mark, style = "✓", "green"
    elif result.needed or result.refused:
        mark, style = "✗", "bold red"
    else:
        mark, style = "!", "yellow"
    line = Text.assemble((mark, style), " ", (result.name, "bold"), ": ", result.detail)
    if result.hint:
        line.append(f" → {result.hint}", style="cyan")
    return line
