"""The ``modelset`` command.

Exit codes, the same for every command: :mod:`modelset._exceptions`.
Prefect is imported only by the commands that orchestrate, so the others start fast.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn, TypeVar

import httpx
import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table

from modelset._exceptions import ExitCode, UsageError
from modelset.hidream import (
    AccountError,
    Gender,
    HiDreamClient,
    HiDreamError,
    TaskResult,
    Template,
)
from modelset.memory import limit_malloc_arenas
from modelset.options import RunOptions
from modelset.settings import Settings
from modelset.storage import StorageError

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State

    from modelset.flows.generate import RunSummary
    from modelset.report import ManifestRow
    from modelset.sources import PassedOver

app = typer.Typer(
    name="modelset",
    help="Turn model photos into HiDream model image sets, exactly once, with Prefect.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console()
errors = Console(stderr=True)

T = TypeVar("T")


def fail(message: str, code: ExitCode) -> NoReturn:
    errors.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn the errors a person can act on into one line and the right exit code."""
    try:
        yield
    except UsageError as exc:
        fail(str(exc), ExitCode.USAGE)
    except AccountError as exc:
        fail(exc.message, ExitCode.ACCOUNT)
    except HiDreamError as exc:
        fail(exc.message, ExitCode.ITEMS_FAILED)
    except StorageError as exc:
        fail(
            f"the output location failed: {exc}. Nothing paid for is lost: every set sent "
            "is in the ledger, or found again by its request_id. Run the same command again "
            "to finish; sets this run still held are taken over at once from this machine, "
            "from another one once their lease (HIDREAM_LEDGER_LEASE) runs out",
            ExitCode.ITEMS_FAILED,
        )
    except httpx.TransportError as exc:  # the HiDream client raises its own errors
        fail(prefect_unreachable(f"{type(exc).__name__}: {exc}"), ExitCode.ITEMS_FAILED)
    except RuntimeError as exc:
        if not str(exc).startswith(PREFECT_UNREACHABLE):
            raise
        fail(prefect_unreachable(str(exc)), ExitCode.ITEMS_FAILED)


PREFECT_UNREACHABLE = "Failed to reach API"  # how Prefect's client says it


def prefect_unreachable(detail: str) -> str:
    return (
        f"the Prefect server did not answer ({detail}). Nothing paid for is lost: the "
        "ledger in the output location, not Prefect, records what was sent. Check "
        "PREFECT_API_URL (`modelset doctor`), then run the same command again"
    )


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    with reported_errors():
        return asyncio.run(coroutine)


async def client_from_environment() -> HiDreamClient:
    from modelset.credentials import client_from_settings

    return await client_from_settings(Settings())


@app.command()
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


@app.command()
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
    from modelset.flows.collect import settle_unknown

    named: dict[tuple[str, int], str] = {}
    for entry in task or []:
        set_key, equals, task_id = entry.partition("=")
        item, slash, template = set_key.rpartition("/")
        if not (equals and slash and item and template.isdigit() and task_id):
            fail(f"--task {entry!r}: expected ITEM/TEMPLATE=TASK_ID", ExitCode.USAGE)
        named[(item, int(template))] = task_id
    settled = run_async(settle_unknown(out, named))
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


@app.command()
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


@app.command()
def sandbox(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8765,
    token: Annotated[str, typer.Option(help="The token clients must send.")] = "sandbox-token",  # noqa: S107
    latency_ms: Annotated[int, typer.Option(help="Added to every API call.")] = 200,
    generation_s: Annotated[float, typer.Option(help="Seconds until a set is final.")] = 2.0,
    images_per_set: Annotated[int, typer.Option(help="Images in every set.")] = 4,
    faults: Annotated[
        str,
        typer.Option(
            help="Fault rates, e.g. "
            '"throttle=0.1,server_error=0.05,no_credits=0,stall=0,fail=0,reject=0"; also '
            "lost_answer, malformed, unknown_status, expire, callback_dup, callback_early "
            "(docs/sandbox.md).",
        ),
    ] = "",
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible faults.")] = None,
    state: Annotated[
        Path | None, typer.Option("--state", help="Keep tasks across restarts in this file.")
    ] = None,
    request_id_lookup: Annotated[
        bool,
        typer.Option(
            "--request-id-lookup/--no-request-id-lookup",
            help="Find tasks by request_id in result queries (the public docs promise "
            "task_id only, so by default a request_id alone answers 'task not found').",
        ),
    ] = False,
) -> None:
    """Run the local HiDream sandbox (the upstream contract, with latency and faults)."""
    from modelset.sandbox import SandboxConfig, parse_faults, serve

    try:
        parsed = parse_faults(faults)
    except ValueError as exc:
        fail(f"--faults: {exc}", ExitCode.USAGE)
    serve(
        SandboxConfig(
            host=host,
            port=port,
            token=token,
            latency_ms=latency_ms,
            generation_s=generation_s,
            images_per_set=images_per_set,
            faults=parsed,
            seed=seed,
            state_file=state,
            lookup_by_request_id=request_id_lookup,
        )
    )


@app.command()
def run(
    sources: Annotated[
        list[str],
        typer.Argument(help="Files, folders, globs, URLs, CSV/JSONL manifests, s3:// ..."),
    ],
    template: Annotated[
        list[int], typer.Option("--template", "-t", help="Template id; repeat for several.")
    ],
    out: Annotated[
        str | None,
        typer.Option(
            help="Output location, the same across reruns: a folder or s3://bucket/prefix."
        ),
    ] = None,
    concurrency: Annotated[int | None, typer.Option(help="Sets in flight at once.")] = None,
    policy: Annotated[
        Literal["fix", "strict"], typer.Option(help="fix photos, or send only valid ones.")
    ] = "fix",
    fit: Annotated[Literal["crop", "pad"], typer.Option(help="How fix reaches 3:4.")] = "crop",
    pass_urls: Annotated[
        bool, typer.Option(help="Send valid http(s) photos as their URL, saving the upload.")
    ] = False,
    refresh: Annotated[bool, typer.Option(help="Pay again for everything.")] = False,
    retry_failed: Annotated[
        bool, typer.Option(help="Resubmit only items whose last outcome was failed.")
    ] = False,
    resubmit_unknown: Annotated[
        bool, typer.Option(help="Resend items whose earlier send has an unknown outcome.")
    ] = False,
    allow_near_duplicates: Annotated[
        bool,
        typer.Option(help="Pay for photos that look like one already paid for (re-saved copies)."),
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="Prepare and plan; submit nothing.")] = False,
    max_images: Annotated[
        int | None, typer.Option(help="Never pay for more generated images than this.")
    ] = None,
    review: Annotated[
        bool, typer.Option(help="Hold the sets for review before publishing (modelset review).")
    ] = False,
    publish_to: Annotated[
        str | None,
        typer.Option(help="Publish approved sets here (default: OUT/published)."),
    ] = None,
    regenerate_declined: Annotated[
        bool, typer.Option(help="Pay a new attempt for exactly the sets declined in review.")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask before a large run.")
    ] = False,
) -> None:
    """Generate model image sets for photos, exactly once per photo and template."""
    options = checked(
        RunOptions,
        policy=policy,
        fit=fit,
        pass_urls=pass_urls,
        concurrency=concurrency,
        refresh=refresh,
        retry_failed=retry_failed,
        resubmit_unknown=resubmit_unknown,
        allow_near_duplicates=allow_near_duplicates,
        dry_run=dry_run,
        max_images=max_images,
        out=out,
        review=review,
        publish_to=publish_to,
        regenerate_declined=regenerate_declined,
    )
    importing = preflight(sources, template, options)
    if importing is not None:
        importing.join()
    summary = run_flow(sources, template, options, yes=yes)
    finished.code = exit_code(summary)
    raise typer.Exit(finished.code)


M = TypeVar("M", bound=BaseModel)


class _Finished:
    code: int | None = None  # set once a run's flow has returned and its summary shown


finished = _Finished()


def main() -> None:
    """The ``modelset`` command (``python -m modelset`` too)."""
    atexit.register(_end_without_teardown)  # the first registered: it runs last
    limit_malloc_arenas()  # before the threads that import Prefect and hash the photos
    app(prog_name="modelset")


def _end_without_teardown() -> None:
    """After a finished run and every other exit handler (Prefect's last logs and events,
    the shutdown of its temporary server), end the process without tearing its modules
    down one by one: with Prefect loaded that takes about 0.35 s, which a one-photo run
    (an upload event's) would pay every time, for nothing."""
    if finished.code is None:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(finished.code)


def checked(model: type[M], **values: Any) -> M:
    """The model of these option values, or exit 2 naming the first bad option."""
    try:
        return model(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        option = f"--{field.replace('_', '-')}: " if field else ""
        fail(f"{option}{error['msg']}", ExitCode.USAGE)


def settings_or_exit() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        name = f"HIDREAM_{str(error['loc'][0]).upper()}: " if error["loc"] else ""
        fail(f"{name}{error['msg']}", ExitCode.USAGE)


def preflight(
    sources: list[str], template_ids: list[int], options: RunOptions
) -> threading.Thread | None:
    """What can be refused before Prefect is even imported: the output location, a missing
    token, sources that do not exist; then (one catalogue request) unknown template ids,
    while Prefect and the flow are imported in a thread (returned, to join): the request
    and the import each take a good part of a second, and a one-photo run waits for both.
    A refused template starts no Prefect server all the same."""
    from modelset.catalogue import check_known, remember
    from modelset.hashing import start_hashing
    from modelset.sources import discover
    from modelset.storage import open_store

    settings = settings_or_exit()
    # A dry run needs no token; a Secret block is read through Prefect, in the flow.
    asks_for_token = not options.dry_run and not settings.api_token_block
    with reported_errors():
        open_store(options.out or settings.output_dir)
        if options.publish_to is not None:
            open_store(options.publish_to)
        if asks_for_token:
            settings.require_token()
        items = discover(sources, allow_file_urls=settings.allow_file_urls)
        if not asks_for_token:
            return None
        importing = start_importing_the_flow()
        start_hashing(Path(item.source) for item in items if "://" not in item.source)
        wanted = sorted({t for item in items for t in (item.template_ids or template_ids)})

        async def known() -> list[int]:
            async with await client_from_environment() as client:
                catalogue = sorted(template.id for template in await client.list_templates())
                remember(client.base_url, catalogue)
                return catalogue

        check_known(wanted, asyncio.run(known()))
    return importing


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the demo's report goes.")] = Path("output/demo"),
) -> None:
    """Run the pipeline on the bundled sample photos against an in-process sandbox."""
    from modelset.sandbox import SandboxConfig, SandboxServer

    photos = Path(__file__).parent / "demo" / "photos"
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
        summary = run_flow([str(photos)], DEMO_TEMPLATES, RunOptions(out=str(out)))
    raise typer.Exit(exit_code(summary))


DEMO_TEMPLATES = [20, 21]
DEMO_TOKEN = "demo-token"  # noqa: S105 - the in-process sandbox's own token


def prefect_defaults() -> None:
    """Prefect settings of a run from the command line, before Prefect is imported (it
    sets its logging up on import)."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The progress bar and summary say what a person needs; Prefect's run logs still
    # reach the Prefect server (and show here with PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL).
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


def start_importing_the_flow() -> threading.Thread:
    """Import Prefect and the flow (about a second) in a thread, while the run waits on
    the catalogue request; the run imports it when that is done, and gets any import
    error then."""
    prefect_defaults()

    def load() -> None:
        with contextlib.suppress(Exception):
            importlib.import_module("modelset.flows.generate")

    importing = threading.Thread(target=load, name="import-flow", daemon=True)
    importing.start()
    return importing


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

    from modelset.flows.generate import (
        RunListener,
        RunPlan,
        generate_model_sets,
        set_listener,
    )

    settings = Settings()
    capped = options.max_images is not None or settings.max_images is not None
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

        def on_total(total: int) -> None:
            progress.update(bar, description="generating sets", total=total)

        def on_row(row: ManifestRow) -> None:
            progress.advance(bar)

        def on_plan(plan: RunPlan) -> bool:
            if yes or capped or plan.images <= settings.confirm_threshold:
                return True
            what = (
                f"this run would submit {plan.tasks} tasks generating up to {plan.images} "
                f"images ({plan.already_done} already done)"
            )
            if sys.stdin is None or not sys.stdin.isatty():
                plan.refused = (
                    f"{what}, above the confirmation threshold of "
                    f"{settings.confirm_threshold}: pass --yes or --max-images"
                )
                return False
            progress.stop()
            go_on = typer.confirm(f"{what}. Go on?", default=False)
            progress.start()
            if not go_on:
                console.print("nothing submitted")
            return go_on

        listener = RunListener(
            on_total=on_total, on_row=on_row, on_plan=on_plan, on_summary=summaries.append
        )
        set_listener(listener)

        async def run_batch() -> State[Any]:
            loop = asyncio.get_running_loop()

            def interrupt() -> None:
                loop.remove_signal_handler(signal.SIGINT)  # a second Ctrl-C aborts
                errors.print("stopping: no new submits; writing the report (Ctrl-C aborts)")
                listener.interrupted.set()

            loop.add_signal_handler(signal.SIGINT, interrupt)
            return await generate_model_sets(sources, template_ids, options, return_state=True)

        with reported_errors():
            state = asyncio.run(run_batch())
            if not summaries:
                state.result()  # re-raises what stopped the flow before it summarised
    if not summaries:
        fail(state.message or "the run stopped before writing its report", ExitCode.USAGE)
    summary = summaries[0]
    print_summary(summary)
    if summary.plan.refused:
        fail(summary.plan.refused, ExitCode.USAGE)
    return summary


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


def exit_code(summary: RunSummary) -> ExitCode:
    if summary.plan.account_error:
        return ExitCode.ACCOUNT
    if summary.failed:
        return ExitCode.ITEMS_FAILED
    return ExitCode.OK


@app.command("review")
def review_command(
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
    from modelset.review import Review, all_waiting, latest_decisions
    from modelset.storage import open_store

    with reported_errors():
        store = open_store(out)
    if not (approve or reject or approve_all):
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
    raise typer.Exit(ExitCode.USAGE if done.decided.problems else ExitCode.OK)


@app.command()
def serve() -> None:
    """Serve every deployment of prefect.yaml from this process (no work pool needed)."""
    if not os.environ.get("PREFECT_API_URL"):
        fail("modelset serve needs a Prefect server: set PREFECT_API_URL", ExitCode.USAGE)
    from modelset.deployments.serve import serve_all

    with reported_errors():
        serve_all()


@app.command()
def callbacks(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8780,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Run the HiDream callback receiver (POST /hidream/callback/{secret})."""
    settings = Settings()
    if settings.callback_secret is None or not settings.callback_secret.get_secret_value():
        fail("the receiver needs HIDREAM_CALLBACK_SECRET", ExitCode.USAGE)
    from modelset.deployments.callbacks import serve_receiver

    serve_receiver(host, port, settings)


@app.command("notify-upload")
def notify_upload(
    source: Annotated[str, typer.Argument(help="The uploaded photo: a path or URL.")],
    template: Annotated[
        list[int], typer.Option("--template", "-t", help="Template id; repeat for several.")
    ],
    item: Annotated[str | None, typer.Option(help="Name for the outputs, e.g. a SKU.")] = None,
) -> None:
    """Announce an uploaded photo: emits modelset.photo.uploaded for the on-upload deployment."""
    if not os.environ.get("PREFECT_API_URL"):
        fail("notify-upload needs a Prefect server: set PREFECT_API_URL", ExitCode.USAGE)
    from modelset.deployments.uploads import emit_upload

    try:
        event_id = emit_upload(source, template, item)
    except FileNotFoundError as exc:
        fail(str(exc), ExitCode.USAGE)
    console.print(f"emitted modelset.photo.uploaded ({event_id})")


@app.command()
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
    from pydantic import ValidationError
    from rich.text import Text

    from modelset.doctor import exit_code as doctor_exit_code
    from modelset.doctor import run_checks

    try:
        settings = Settings()
    except ValidationError as exc:
        fail(f"the HIDREAM_* settings are invalid: {exc}", ExitCode.USAGE)
    results = asyncio.run(
        run_checks(settings, out=out, template_ids=template or [], prefect_yaml=prefect_yaml)
    )
    for result in results:
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
        console.print(line, soft_wrap=True, highlight=False)
    raise typer.Exit(doctor_exit_code(results))
