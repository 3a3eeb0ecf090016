"""The batch flow run in this process: a progress bar, the confirmation of a large plan,
Ctrl-C to stop submitting, and the summary (``modelset run`` and ``modelset demo``)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import warnings
from typing import TYPE_CHECKING, Any

import typer

from modelset._exceptions import ExitCode
from modelset.cli.common import console, errors, fail, reported_errors
from modelset.cli.summary import print_summary
from modelset.options import RunOptions
from modelset.settings import Settings

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State
    from rich.progress import Progress

    from modelset.batch import RunListener, RunPlan, RunSummary


def prefect_defaults() -> None:
    """Prefect settings of a run from the command line, before Prefect is imported (it
    sets its logging up on import)."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The progress bar and summary say what a person needs; Prefect's run logs still
    # reach the Prefect server (and show here with PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL).
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


def run_flow(
    sources: list[str], template_ids: list[int], options: RunOptions, *, yes: bool = True
) -> RunSummary:
    """Run the batch flow in this process with a progress bar; returns its summary.

    Without ``yes``, a plan above ``HIDREAM_CONFIRM_THRESHOLD`` images is shown and
    confirmed first (refused with exit code 2 when nobody can answer). The first Ctrl-C
    stops submitting and writes the report; a second one aborts.
    """
    prefect_defaults()
    # Pillow warns about quirks of files it still reads; the report gives each photo's fate.
    warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from modelset.batch import RunListener
    from modelset.flows.generate import set_listener

    settings = Settings()
    ask = not (yes or options.max_images is not None or settings.max_images is not None)
    summaries: list[RunSummary] = []
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task("preparing photos", total=None)
        listener = RunListener(
            on_total=lambda total: progress.update(bar, description="generating sets", total=total),
            on_row=lambda row: progress.advance(bar),
            on_plan=lambda plan: not ask or confirmed(plan, progress, settings.confirm_threshold),
            on_summary=summaries.append,
        )
        set_listener(listener)
        with reported_errors():
            state = asyncio.run(_generate(sources, template_ids, options, listener))
            if not summaries:
                state.result()  # re-raises what stopped the flow before it summarised
    if not summaries:
        fail(state.message or "the run stopped before writing its report", ExitCode.USAGE)
    summary = summaries[0]
    print_summary(summary)
    if summary.plan.refused:
        fail(summary.plan.refused, ExitCode.USAGE)
    return summary


def confirmed(plan: RunPlan, progress: Progress, threshold: int) -> bool:
    """Whether the run goes on with ``plan``: asked of a person above ``threshold`` images,
    refused (the reason in ``plan.refused``) when nobody can answer."""
    if plan.images <= threshold:
        return True
    what = (
        f"this run would submit {plan.tasks} tasks generating up to {plan.images} "
        f"images ({plan.already_done} already done)"
    )
    if sys.stdin is None or not sys.stdin.isatty():
        plan.refused = (
            f"{what}, above the confirmation threshold of {threshold}: pass --yes or --max-images"
        )
        return False
    progress.stop()
    go_on = typer.confirm(f"{what}. Go on?", default=False)
    progress.start()
    if not go_on:
        console.print("nothing submitted")
    return go_on


async def _generate(
    sources: list[str], template_ids: list[int], options: RunOptions, listener: RunListener
) -> State[Any]:
    """The flow's final state; the first Ctrl-C sets ``listener.interrupted``."""
    from modelset.flows.generate import generate_model_sets

    loop = asyncio.get_running_loop()

    def interrupt() -> None:
        loop.remove_signal_handler(signal.SIGINT)  # a second Ctrl-C aborts
        errors.print("stopping: no new submits; writing the report (Ctrl-C aborts)")
        listener.interrupted.set()

    loop.add_signal_handler(signal.SIGINT, interrupt)
    return await generate_model_sets(sources, template_ids, options, return_state=True)
