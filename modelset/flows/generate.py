"""``generate_model_sets``: the batch flow, from sources to a report in the output location.

The engine is the core's (``modelset.batch``); this module runs it under Prefect
(``PrefectOrchestration``), and adds what only a flow run knows: whether a schedule or an
automation started it, whether a worker runs it in a folder it deletes, and the review
a deployment run may suspend for.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.states import Completed, Failed

from modelset._exceptions import UsageError
from modelset.batch import RunListener, RunPlan, RunSummary, run_batch
from modelset.flows.review import (
    can_wait_for_review,
    pending_message,
    resume_review,
    review_in_run,
)
from modelset.options import RunOptions
from modelset.settings import Settings
from modelset.storage import is_relative_location, open_store
from modelset.tasks.orchestration import PrefectOrchestration

_listener: RunListener = RunListener()


def set_listener(listener: RunListener) -> None:
    """Install progress hooks for flows run in this process (the CLI's progress bar)."""
    global _listener
    _listener = listener


@flow(name="generate-model-sets", persist_result=False, log_prints=False)
async def generate_model_sets(
    sources: list[str],
    template_ids: list[int],
    options: RunOptions | None = None,
    item: str | None = None,
) -> State[Any]:
    """Turn photos into HiDream model image sets, exactly once per photo and template.

    Args:
        sources: files, folders, globs, http(s) URLs, manifests (CSV or JSON Lines) or
            object-store URLs.
        template_ids: the set templates to generate for every photo (a manifest row's own
            template_id takes precedence for that row).
        options: policy, concurrency, reruns, budget and sharding; see RunOptions.
        item: the name of the outputs' folder when ``sources`` is a single photo (e.g. a
            SKU from an upload event).
    """
    options = options or RunOptions()
    if options.review and (resumed := await resume_review_of(options)) is not None:
        return resumed
    settings = Settings()
    listener = _listener
    if started_unattended() and options.max_images is None and settings.max_images is None:
        listener = _refusing(listener, UNATTENDED_NEEDS_CAP)
    options = options.model_copy(
        update={
            "out": output_location(options.out or settings.output_dir, setting=OUT_SETTING),
            "publish_to": publish_location(options),
        }
    )
    orchestrator = PrefectOrchestration(settings.concurrency_limit)
    summary = await run_batch(sources, template_ids, options, orchestrator, listener, item=item)
    listener.on_summary(summary)
    return await _final_state(summary, options)


async def _final_state(summary: RunSummary, options: RunOptions) -> State[Any]:
    message = f"{summary.message()}; report: {summary.sheet}" + (
        f" (link valid 7 days: {summary.link})" if summary.link else ""
    )
    if summary.plan.account_error:
        return Failed(message=f"{summary.plan.account_error}; {message}")
    if summary.plan.refused:
        return Failed(message=f"{summary.plan.refused}; report: {summary.sheet}")
    failed = summary.failed
    if summary.pending and options.shard_of is None and can_wait_for_review():
        store = open_store(summary.out)
        return await review_in_run(
            store, summary.out, summary.pending, batch_message=message, batch_failed=failed
        )
    if summary.pending:
        message = f"{message}; {pending_message(len(summary.pending), summary.out)}"
    if failed:
        return Failed(message=message)
    return Completed(message=message)


async def resume_review_of(options: RunOptions) -> State[Any] | None:
    """The end of the review this run suspended for, when it runs again after it."""
    if not can_wait_for_review():
        return None
    location = output_location(options.out or Settings().output_dir, setting=OUT_SETTING)
    store = open_store(location)
    return await resume_review(store, store.url)


UNATTENDED_NEEDS_CAP = (
    "runs started by a schedule or an event spend only under a cap: set the max_images "
    "option or HIDREAM_MAX_IMAGES; nothing was submitted"
)


def started_unattended() -> bool:
    """Whether a schedule or an automation (an event trigger) created this flow run."""
    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    if run is None:
        return False
    return bool(run.auto_scheduled) or (
        run.created_by is not None and run.created_by.type == "AUTOMATION"
    )


def _refusing(listener: RunListener, reason: str) -> RunListener:
    def refuse(plan: RunPlan) -> bool:
        if plan.tasks == 0:
            return True
        plan.refused = reason
        return False

    return replace(listener, on_plan=refuse)


def output_location(location: str, *, setting: str) -> str:
    """The output location, refused when relative in a deployment run with no working
    directory of its own: a worker runs such a flow in a folder it deletes afterwards."""
    if is_relative_location(location) and runs_in_throwaway_folder():
        raise UsageError(
            f"{setting} is the relative folder {location!r}: a worker "
            "runs this deployment in a temporary folder it deletes afterwards. Set an "
            "absolute folder or a bucket (s3://bucket/prefix), or name a working directory "
            f"for deployment runs ({WORKING_DIRECTORY_SET}=/absolute/folder)"
        )
    return location


def publish_location(options: RunOptions) -> str | None:
    """Where approved sets go, when not ``<out>/published``: checked like the output."""
    if options.publish_to is None:
        return None
    return output_location(options.publish_to, setting="options.publish_to")


def runs_in_throwaway_folder() -> bool:
    """Whether this is a deployment run whose deployment sets no working directory."""
    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    if run is None or run.deployment_id is None:
        return False
    return not os.environ.get(WORKING_DIRECTORY_SET)


WORKING_DIRECTORY_SET = "MODELSET_WORKING_DIRECTORY"
OUT_SETTING = "options.out (or HIDREAM_OUTPUT_DIR)"
