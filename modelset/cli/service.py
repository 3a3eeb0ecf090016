"""``modelset templates`` and ``modelset status``: what the HiDream service says."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from modelset._exceptions import ExitCode
from modelset.cli.common import client_from_environment, console, run_async
from modelset.hidream import Gender, TaskResult, Template


def templates(
    gender: Annotated[Gender | None, typer.Option(help="Only templates for this gender.")] = None,
    gallery: Annotated[
        Path | None,
        typer.Option(help="Write an offline HTML gallery of every preview into this folder."),
    ] = None,
) -> None:
    """List the model image set templates (or write a gallery of their previews)."""

    async def fetch() -> list[Template]:
        async with await client_from_environment() as client:
            return await client.list_templates(gender)

    if gallery is not None:
        from modelset.gallery import write_gallery

        async def write() -> Path:
            async with await client_from_environment() as client:
                return await write_gallery(client, gallery, gender)

        console.print(f"gallery: [bold]{run_async(write()).resolve()}[/]")
        return
    table = Table("id", "gender", "preview")
    for template in run_async(fetch()):
        table.add_row(str(template.id), template.gender, template.show_image)
    console.print(table)


def status(task_id: Annotated[str, typer.Argument(help="The task_id a submit returned.")]) -> None:
    """Show a task's sub-tasks, their status and image URLs."""

    async def fetch() -> TaskResult:
        async with await client_from_environment() as client:
            return await client.get_result(task_id=task_id)

    result = run_async(fetch())
    table = Table("sub_task_id", "status", "done", "image / reason")
    for sub in result.sub_task_results:
        table.add_row(
            sub.sub_task_id,
            sub.task_status.name.lower(),
            f"{sub.task_completion:.0%}",
            sub.image or sub.description,
        )
    console.print(table)
    failed = [s for s in result.sub_task_results if s.task_status.is_final and not s.succeeded]
    if failed:
        raise typer.Exit(ExitCode.ITEMS_FAILED)
    if not result.finished:
        console.print("still running", style="yellow")
