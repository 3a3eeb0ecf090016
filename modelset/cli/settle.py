"""``modelset settle``: collect the sets paid for whose answer was lost."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from modelset._exceptions import ExitCode
from modelset.cli.common import console, fail, run_async


def settle(
    out: Annotated[str, typer.Argument(help="The output location: a folder or s3://...")],
    task: Annotated[
        list[str] | None,
        typer.Option(
            help="The task a lost send created, as ITEM/TEMPLATE=TASK_ID (HiDream's console "
            "lists the account's tasks); repeat.",
        ),
    ] = None,
) -> None:
    """Settle the sets paid, not collected: sends whose answer was lost.

    Each is collected where its task is known: named with --task, or found by its
    request_id where the service is proven to find tasks so. The others are listed with
    what settles them. Exit 0 when none is left unsettled, 1 otherwise.
    """
    from modelset.batch.settle import settle_unknown
    from modelset.tasks.orchestration import PrefectOrchestration

    named: dict[tuple[str, int], str] = {}
    for entry in task or []:
        set_key, equals, task_id = entry.partition("=")
        item, slash, template = set_key.rpartition("/")
        if not (equals and slash and item and template.isdigit() and task_id):
            fail(f"--task {entry!r}: expected ITEM/TEMPLATE=TASK_ID", ExitCode.USAGE)
        named[(item, int(template))] = task_id
    settled = run_async(settle_unknown(out, named, PrefectOrchestration()))
    if not settled:
        console.print(f"nothing to settle in {out}: no send has an unknown outcome")
        return
    table = Table("item", "template", "request_id", "outcome", title="paid, not collected")
    for one in settled:
        record = one.record
        table.add_row(record.item, str(record.template_id), record.request_id, one.outcome)
    console.print(table)
    if any(one.record.task_id is None for one in settled):
        raise typer.Exit(ExitCode.ITEMS_FAILED)
