"""``modelset review``: list the sets waiting for review, or decide them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from modelset._exceptions import ExitCode
from modelset.cli.common import console, errors, reported_errors, run_async

if TYPE_CHECKING:
    from modelset.flows.review import ShellReview
    from modelset.storage import Store


def review(
    out: Annotated[str, typer.Argument(help="The output location: a folder or s3://...")],
    approve: Annotated[
        list[str] | None,
        typer.Option(help="A set to approve and publish, as <item>/<template_id>; repeat."),
    ] = None,
    reject: Annotated[
        list[str] | None, typer.Option(help="A set to decline, as <item>/<template_id>; repeat.")
    ] = None,
    approve_all: Annotated[
        bool, typer.Option(help="Approve every pending set not named by --reject.")
    ] = False,
    note: Annotated[str, typer.Option(help="Kept with every decision made now.")] = "",
    reviewer: Annotated[str, typer.Option(help="Who decides (manifest and events).")] = "",
    publish_to: Annotated[
        str | None, typer.Option(help="Publish here instead of the run's place.")
    ] = None,
) -> None:
    """List the sets waiting for review in OUT, or decide them and publish the approved.

    A deployment run suspended waiting on some of them is resumed with the same decision,
    and publishes them itself. Exit code 0 when every named set was decided, 2 for an
    unknown or conflicting one.
    """
    from modelset.storage import open_store

    with reported_errors():
        store = open_store(out)
    if not (approve or reject or approve_all):
        print_pending(store)
        return
    from modelset.flows.review import review_from_shell

    done = run_async(
        review_from_shell(
            store,
            approve=approve or [],
            reject=reject or [],
            approve_all=approve_all,
            note=note,
            reviewer=reviewer,
            publish_to=publish_to,
        )
    )
    print_decided(done)
    raise typer.Exit(ExitCode.USAGE if done.decided.problems else ExitCode.OK)


def print_pending(store: Store) -> None:
    """The sets pending review, with the suspended run waiting on each, if any."""
    from modelset.review import Review, all_waiting, latest_decisions

    pending = [d for d in latest_decisions(store) if d.review is Review.PENDING]
    if not pending:
        console.print(f"nothing waits for review in {store.url}", highlight=False)
        return
    waiting = {key: w for w in all_waiting(store) for key in w.set_keys}
    table = Table("set", "images", "source", "waiting run", title="pending review")
    for decision in pending:
        run = waiting.get(decision.set_key)
        table.add_row(
            decision.set_key,
            str(len(decision.outputs)),
            decision.source,
            (run.flow_run_name or run.flow_run_id) if run else "",
        )
    console.print(table)
    console.print(
        "decide with --approve KEY / --reject KEY (repeatable) or --approve-all",
        highlight=False,
    )


def print_decided(done: ShellReview) -> None:
    """What was decided here or handed to the runs waiting on it, and what was not."""
    for name, keys in done.resumed.items():
        console.print(
            f"resumed flow run {name}: it decides and publishes {', '.join(keys)}",
            highlight=False,
        )
    for decision in done.decided.decided:
        where = f" -> {decision.published[0].rsplit('/', 1)[0]}" if decision.published else ""
        console.print(
            f"{decision.review.value}: {decision.set_key}{where}", highlight=False, soft_wrap=True
        )
    if done.decided.approved and not done.events_sent:
        console.print(
            "no Prefect API (PREFECT_API_URL is not set): no modelset.set.published event was sent",
            highlight=False,
            soft_wrap=True,
        )
    for key, why in done.decided.problems.items():
        errors.print(f"[bold red]not decided:[/] {key}: {why}", highlight=False, soft_wrap=True)
