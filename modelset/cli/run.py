"""``modelset run``: generate model image sets, exactly once per photo and template."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated, Any, Literal, TypeVar

import typer
from pydantic import BaseModel, ValidationError

from modelset._exceptions import ExitCode
from modelset.cli.batch import run_flow
from modelset.cli.common import fail
from modelset.cli.preflight import preflight
from modelset.cli.summary import exit_code
from modelset.options import LabelPosition, RunOptions

M = TypeVar("M", bound=BaseModel)


class _Finished:
    code: ExitCode | None = None  # set once a run's flow has returned and its summary shown


finished = _Finished()


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
    visible_label: Annotated[
        str | None,
        typer.Option(help="Draw this text (e.g. 'AI生成') on the published copies."),
    ] = None,
    visible_label_position: Annotated[
        LabelPosition, typer.Option(help="The corner or edge the visible label is drawn at.")
    ] = "bottom-right",
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
        visible_label=visible_label,
        visible_label_position=visible_label_position,
    )
    importing = preflight(sources, template, options)
    if importing is not None:
        importing.join()
    summary = run_flow(sources, template, options, yes=yes)
    finished.code = exit_code(summary)
    raise typer.Exit(finished.code)


def checked(model: type[M], **values: Any) -> M:
    """The model of these option values, or exit 2 naming the first bad option."""
    try:
        return model(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        option = f"--{field.replace('_', '-')}: " if field else ""
        fail(f"{option}{error['msg']}", ExitCode.USAGE)


def end_without_teardown() -> None:
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
