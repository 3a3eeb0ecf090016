"""What a finished run shows, and the exit code it ends with."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from modelset._exceptions import ExitCode
from modelset.cli.common import console, errors

if TYPE_CHECKING:
    from modelset.batch import RunSummary
    from modelset.report import ManifestRow
    from modelset.sources import PassedOver


def exit_code(summary: RunSummary) -> ExitCode:
    if summary.plan.account_error:
        return ExitCode.ACCOUNT
    if summary.failed:
        return ExitCode.ITEMS_FAILED
    return ExitCode.OK


def print_summary(summary: RunSummary) -> None:
    from modelset.report import not_collected_notice, summarize

    counts = Table("status", "count", title="modelset run")
    for status, count in summarize(summary.rows).items():
        if count:
            counts.add_row(status, str(count))
    console.print(counts)
    print_passed_over(summary.plan.passed_over)
    print_rows("not succeeded", summary.not_succeeded)
    print_rows("near-duplicates: not paid", summary.near_duplicates)
    plan = summary.plan
    if plan.dry or any(row.status.value == "planned" for row in summary.rows):
        skipped = f"; {summary.skipped_alike()}" if summary.near_duplicates else ""
        console.print(
            f"plan: {plan.tasks} tasks to submit, up to {plan.images} images; "
            f"{plan.already_done} already done{skipped}",
            soft_wrap=True,
        )
    if plan.budget_left:
        console.print(f"budget: {plan.budget_left}", highlight=False, soft_wrap=True)
    if plan.account_error:
        errors.print(f"[bold red]account:[/] {plan.account_error}")
    if notice := not_collected_notice(summary.rows, summary.out):
        errors.print(f"[bold yellow]{notice}[/]", highlight=False, soft_wrap=True)
    if summary.pending:
        from modelset.flows.review import pending_message

        console.print(pending_message(len(summary.pending), summary.out), highlight=False)
    console.print(f"output: [bold]{summary.out}[/]")
    console.print(f"report: [bold]{summary.sheet}[/]", highlight=False, soft_wrap=True)
    if summary.link:
        console.print(
            f"report link (valid 7 days): {summary.link}", highlight=False, soft_wrap=True
        )


def print_passed_over(passed_over: PassedOver) -> None:
    """What the scan did not take, a line per reason (never wrapped: names stay whole)."""
    if not passed_over.total:
        return
    console.print(passed_over.heading(), highlight=False)
    for reason, count, names in passed_over.entries():
        console.print(
            f"  {reason}: {count} ({names})", markup=False, highlight=False, soft_wrap=True
        )


def print_rows(title: str, rows: list[ManifestRow]) -> None:
    """The first 20 rows with their status and reason, under ``title`` (if any)."""
    if not rows:
        return
    table = Table("item", "template", "status", "reason", title=title)
    for row in rows[:20]:
        table.add_row(row.item, str(row.template_id), row.status.value, row.reason or "")
    if len(rows) > 20:
        table.caption = f"... and {len(rows) - 20} more in manifest.csv"
    console.print(table)
