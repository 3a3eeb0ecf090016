"""``run_batch``: from sources to a report in the output location, through an orchestrator.

The order of work is what makes it cheap to rerun: discover, hash local files, consult
the preparation cache and the ledger, and only then run stages, for what is left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from functools import partial

import anyio

from modelset import layout
from modelset.batch.orchestration import Orchestrator
from modelset.batch.photos import Photo, photos_of
from modelset.batch.planning import generate
from modelset.batch.preparing import prepare_all
from modelset.batch.runtime import BatchRuntime, open_runtime
from modelset.batch.shards import run_shards, shard_prefix
from modelset.batch.summary import THUMBNAIL_ROWS, RunListener, RunPlan, RunSummary
from modelset.budget import Budget
from modelset.images import Fit, Policy
from modelset.labels import find_font
from modelset.options import RunOptions
from modelset.report import read_manifest, remember_passed_over, update_report
from modelset.review import declined_attempts, mark_pending
from modelset.settings import Settings
from modelset.sources import PassedOver, discover
from modelset.stages import PrepareOptions, SubmitPolicy, Workspace, open_workspace
from modelset.storage import StorageError, Store, probe_conditional_writes


async def run_batch(
    sources: list[str],
    template_ids: list[int],
    options: RunOptions,
    orchestrator: Orchestrator,
    listener: RunListener | None = None,
    *,
    item: str | None = None,
) -> RunSummary:
    """Turn photos into model image sets, exactly once per photo and template, and write
    the report; ``item`` names the outputs' folder when ``sources`` is a single photo."""
    settings = Settings()
    listener = listener or RunListener()
    with open_workspace(options.out or settings.output_dir) as workspace:
        # A bucket's conditional-write probe takes a few requests one after another, and
        # the orchestrator's opening a few round trips: meanwhile the photos are found and
        # hashed, and the ledger read. Nothing is written before the probe.
        ready = asyncio.gather(
            _conditional_writes_checked(workspace.store), orchestrator.open(workspace.out)
        )
        try:
            return await _run_in(
                settings,
                workspace,
                orchestrator,
                sources,
                template_ids,
                options,
                listener,
                item,
                ready=ready,
            )
        finally:
            if not ready.cancel() and not ready.cancelled():
                ready.exception()  # a run that failed first reports its own failure


async def _conditional_writes_checked(store: Store) -> None:
    """Exactly-once on a bucket rests on conditional writes: the run sends nothing until
    the probe has seen the store honour them."""
    if not store.is_local:
        await anyio.to_thread.run_sync(probe_conditional_writes, store)


async def _run_in(
    settings: Settings,
    workspace: Workspace,
    orchestrator: Orchestrator,
    sources: list[str],
    template_ids: list[int],
    options: RunOptions,
    listener: RunListener,
    item: str | None,
    *,
    ready: Awaitable[object],
) -> RunSummary:
    passed_over = PassedOver()
    photos = photos_of(
        discover(sources, allow_file_urls=settings.allow_file_urls, passed_over=passed_over),
        template_ids,
        item,
        known={row.source: row.item for row in read_manifest(workspace.store)},
    )
    if options.shard_size and len(photos) > options.shard_size:
        await ready
        return await run_shards(photos, options, workspace, orchestrator, listener, passed_over)
    workspace.pictures.want(
        [f"{p.item}/{t}" for p in photos for t in p.template_ids][:THUMBNAIL_ROWS]
    )
    plan = await _planned_and_run(
        settings, workspace, orchestrator, photos, options, listener, ready
    )
    return await _reported(workspace, orchestrator, photos, options, plan, passed_over)


async def _planned_and_run(
    settings: Settings,
    workspace: Workspace,
    orchestrator: Orchestrator,
    photos: list[Photo],
    options: RunOptions,
    listener: RunListener,
    ready: Awaitable[object],
) -> RunPlan:
    rules = await _submit_policy(settings, workspace, orchestrator, options)
    if options.visible_label:  # refused before anything is paid for, not at publishing
        await anyio.to_thread.run_sync(find_font, options.visible_label, settings.label_font)
    async with open_runtime(
        settings,
        workspace,
        orchestrator,
        prepare=_prepare_options(settings, options),
        rules=rules,
        deadline_s=options.deadline_s,
        concurrency=options.concurrency,
        need_client=not options.dry_run,
    ) as runtime:
        await prepare_all(photos, runtime, settings.base_url, ready)
        await ready
        plan = await generate(
            photos,
            runtime,
            base_url=settings.base_url,
            concurrency=options.concurrency or settings.concurrency,
            budget=_run_budget(settings, workspace, options),
            dry_run=options.dry_run,
            listener=listener,
        )
        await _remember_records(runtime)
    return plan


async def _submit_policy(
    settings: Settings, workspace: Workspace, orchestrator: Orchestrator, options: RunOptions
) -> SubmitPolicy:
    return SubmitPolicy(
        run_id=orchestrator.run_id(),
        refresh=options.refresh,
        retry_failed=options.retry_failed,
        resubmit_unknown=options.resubmit_unknown,
        allow_near_duplicates=options.allow_near_duplicates,
        regenerate=await anyio.to_thread.run_sync(declined_attempts, workspace.store)
        if options.regenerate_declined
        else {},
        send_window_s=settings.send_window(),
    )


def _prepare_options(settings: Settings, options: RunOptions) -> PrepareOptions:
    return PrepareOptions(
        policy=Policy(options.policy),
        fit=Fit(options.fit),
        max_fetch_bytes=settings.max_fetch_bytes,
        allow_private_urls=settings.allow_private_urls,
        pass_urls=options.pass_urls,
    )


def _run_budget(settings: Settings, workspace: Workspace, options: RunOptions) -> Budget:
    """The run's cap on images (shared by a sharded run's children)."""
    return Budget(
        cap=options.max_images if options.max_images is not None else settings.max_images,
        default_set_size=settings.images_per_set,
        shared=(workspace.store, f"{shard_prefix(options.shard_of)}/{layout.SHARD_BUDGET}")
        if options.shard_of
        else None,
    )


async def _reported(
    workspace: Workspace,
    orchestrator: Orchestrator,
    photos: list[Photo],
    options: RunOptions,
    plan: RunPlan,
    passed_over: PassedOver,
) -> RunSummary:
    """The report written (and published) from the plan's rows, in the batch's order."""
    plan.passed_over = passed_over
    if not options.shard_of:  # a shard's manifest passes nothing over: its parent's scan did
        await anyio.to_thread.run_sync(remember_passed_over, workspace.store, passed_over)
    if plan.account_error and options.shard_of:
        # The parent learns it from here: it exits 3 as an unsharded run would.
        workspace.store.write(
            f"{shard_prefix(options.shard_of)}/{layout.SHARD_ACCOUNT_ERROR}",
            plan.account_error.encode(),
        )
    rows = [plan.rows[(p.source, t)] for p in photos for t in p.template_ids]
    pending = await anyio.to_thread.run_sync(
        partial(
            mark_pending,
            workspace.store,
            rows,
            asked=options.review and not options.dry_run,
            publish_to=options.publish_to,
            visible_label=options.visible_label,
            visible_label_position=options.visible_label_position,
        )
    )
    sheet = await anyio.to_thread.run_sync(
        partial(update_report, workspace.store, rows, copies=workspace.kept)
    )
    await orchestrator.publish(rows, workspace, sheet=sheet, passed_over=passed_over)
    orchestrator.log.info("report written: %s", sheet)
    return RunSummary.written(workspace, rows, sheet, plan, pending)


async def _remember_records(runtime: BatchRuntime) -> None:
    """Leave the ledger's digest for the next run (a rerun then reads no record it holds);
    a digest not written costs that run its reads, never a result."""
    try:
        await anyio.to_thread.run_sync(runtime.ledger.remember, runtime.listing)
    except StorageError as exc:
        runtime.orchestrator.log.warning("the ledger's digest was not saved: %s", exc)
