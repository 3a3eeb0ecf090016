"""``generate_model_sets``: the batch flow, from sources to a report on disk.

The order of work is what makes it cheap to rerun: discover, hash local files, consult
the preparation cache and the ledger, and only then create task runs, for what is left.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from modelset.budget import Budget
from modelset.errors import UsageError
from modelset.flows.review import (
    can_wait_for_review,
    pending_message,
    resume_review,
    review_in_run,
)
from modelset.hashing import hash_files
from modelset.hidream import AccountError
from modelset.images import Fit, Policy
from modelset.images.looks import Look
from modelset.ledger import LedgerRecord, SubmissionState
from modelset.options import RunOptions
from modelset.report import (
    INDEX_HTML,
    STATE_DIR,
    ManifestRow,
    Status,
    input_thumbnail_key,
    not_collected_notice,
    read_manifest,
    remember_passed_over,
    update_report,
)
from modelset.review import (
    PUBLISHED_FOLDER,
    Decision,
    declined_attempts,
    mark_pending,
    pending_among,
)
from modelset.settings import Settings
from modelset.sources import PassedOver, SourceItem, discover, remote_identity
from modelset.stages import (
    PreparedPhoto,
    PrepareOptions,
    SubmitPolicy,
    Workspace,
    is_local_file,
    key_for,
    needs_submit,
    open_workspace,
    row_for,
    stored_preview,
    upload_key_for,
    upload_key_of,
)
from modelset.storage import (
    StorageError,
    Store,
    is_relative_location,
    locate,
    open_store,
    probe_conditional_writes,
    read_or_none,
)
from modelset.tasks.artifacts import THUMBNAIL_ROWS, ProgressArtifact, publish_results
from modelset.tasks.catalogue import check_templates
from modelset.tasks.photos import FetchItem, fetch_photos, prepare_photos, validate_photos
from modelset.tasks.results import OutputLocationResults, results_storage
from modelset.tasks.runtime import BatchRuntime, collect, open_runtime, unsearched
from modelset.tasks.submission import submit_photo

if TYPE_CHECKING:
    from PIL import Image

    from modelset.images import likeness

PREPARE_CHUNK = 16
FIRST_CHUNK = 4  # a chunk's three task runs cost more than preparing a few more photos
PREPARING_CHUNKS = max(2, os.cpu_count() or 1)  # chunks prepared at once, in order


@dataclass
class Photo:
    """One source to process, with the item name its outputs go under."""

    source: str
    item: str
    template_ids: list[int]
    prepared: PreparedPhoto | None = None
    paid_upload: str | None = None  # the upload's sha256, for a photo whose sets are done
    # Its sets' ledger records by template, when every one is finished (read once).
    finished: dict[int, LedgerRecord] = field(default_factory=dict)
    sha256: str | None = None  # a local source's hash, known before it is prepared
    preparing: asyncio.Future[Any] | None = None  # its chunk's stages, until done


async def _prepared(photos: list[Photo]) -> None:
    """Wait until every photo has its PreparedPhoto (its chunk's stages are done)."""
    await asyncio.gather(*{p.preparing for p in photos if p.preparing is not None})


@dataclass
class RunPlan:
    """What a run found, planned and did; filled in as it goes."""

    rows: dict[tuple[str, int], ManifestRow] = field(default_factory=dict)
    tasks: int = 0  # tasks the run submits (or, dry, would submit)
    images: int = 0  # ... and the images they generate at most
    already_done: int = 0
    dry: bool = False  # planned only: nothing was to be submitted
    refused: str | None = None  # the plan was not confirmed: why
    budget_left: str | None = None  # what the budget across runs has left, if one is set
    stopped: str | None = None  # submitting stopped mid-run: why
    account_error: str | None = None
    passed_over: PassedOver = field(default_factory=PassedOver)  # files the scan did not take


@dataclass
class RunSummary:
    out: str  # the output location: a folder or s3://bucket/prefix
    rows: list[ManifestRow]
    sheet: str  # where index.html is
    plan: RunPlan
    link: str | None = None  # an https link to index.html, where the store can sign one
    pending: list[Decision] = field(default_factory=list)  # sets waiting for review

    @classmethod
    def written(
        cls,
        workspace: Workspace,
        rows: list[ManifestRow],
        sheet: str,
        plan: RunPlan,
        pending: list[Decision],
    ) -> RunSummary:
        """The summary of a run whose report is written, with a link where one can be signed."""
        return cls(
            out=workspace.out,
            rows=rows,
            sheet=sheet,
            plan=plan,
            link=report_link(workspace.store),
            pending=pending,
        )

    @property
    def not_succeeded(self) -> list[ManifestRow]:
        """Rows that did not end as they should: a near-duplicate skipped did."""
        return [
            row
            for row in self.rows
            if row.status is not Status.SUCCEEDED and row.near_duplicate_of is None
        ]

    @property
    def failed(self) -> bool:
        """Whether a set failed (a dry run's planned sets did not)."""
        return any(row.status is not Status.PLANNED for row in self.not_succeeded)

    @property
    def near_duplicates(self) -> list[ManifestRow]:
        """Rows skipped as near-duplicates of a photo paid for."""
        return [row for row in self.rows if row.near_duplicate_of is not None]

    def skipped_alike(self) -> str:
        """``1 near-duplicate skipped``, ``3 near-duplicates skipped``."""
        alike = len(self.near_duplicates)
        return f"{alike} near-duplicate{'' if alike == 1 else 's'} skipped"

    def message(self) -> str:
        lost = not_collected_notice(self.rows, self.out)
        message = f"{lost}; {self._outcomes()}" if lost else self._outcomes()
        left = self.plan.budget_left
        return f"{message}; budget: {left}" if left else message

    def _outcomes(self) -> str:
        failing = self.not_succeeded
        if not failing:
            alike = len(self.near_duplicates)
            skipped = f"; {self.skipped_alike()} (paid for once)" if alike else ""
            return f"all {len(self.rows) - alike} succeeded{skipped}"
        reasons = "; ".join(
            f"{row.item}/{row.template_id}: {row.status.value} ({row.reason})"
            for row in failing[:10]
        )
        more = f"; and {len(failing) - 10} more" if len(failing) > 10 else ""
        return f"{len(failing)} of {len(self.rows)} did not succeed: {reasons}{more}"


@dataclass
class RunListener:
    """Hooks the CLI uses to draw progress, confirm the plan and stop on Ctrl-C.

    The flow works the same without them (deployments, the UI, tests).
    """

    on_total: Callable[[int], None] = lambda total: None
    on_row: Callable[[ManifestRow], None] = lambda row: None
    on_plan: Callable[[RunPlan], bool] = lambda plan: True
    on_summary: Callable[[RunSummary], None] = lambda summary: None
    interrupted: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Progress:
    total: int
    done: int = 0
    listener: RunListener = field(default_factory=RunListener)
    artifact: ProgressArtifact | None = None

    async def advance(self, row: ManifestRow) -> None:
        self.done += 1
        self.listener.on_row(row)
        if self.artifact is not None:
            await self.artifact.update(self.done)


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
    listener = _listener
    if started_unattended() and options.max_images is None and Settings().max_images is None:
        listener = _refusing(listener, UNATTENDED_NEEDS_CAP)
    summary = await run_batch(sources, template_ids, options, listener, item=item)
    listener.on_summary(summary)
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


async def run_batch(
    sources: list[str],
    template_ids: list[int],
    options: RunOptions,
    listener: RunListener,
    *,
    item: str | None = None,
) -> RunSummary:
    settings = Settings()
    location = output_location(options.out or settings.output_dir, setting=OUT_SETTING)
    with open_workspace(location) as workspace:
        # Saving the result storage block takes a few API round trips, and a bucket's
        # conditional-write probe a few requests one after another: meanwhile the photos
        # are found and hashed, and the ledger read. Nothing is written before the probe.
        storage = asyncio.ensure_future(results_storage(workspace.out))
        probe = asyncio.ensure_future(_conditional_writes_checked(workspace.store))
        try:
            return await _run_batch_in(
                settings, workspace, storage, probe, sources, template_ids, options, listener, item
            )
        finally:
            for pending in (storage, probe):
                if not pending.cancel() and not pending.cancelled():
                    pending.exception()  # a run that failed first reports its own failure


async def _conditional_writes_checked(store: Store) -> None:
    """Exactly-once on a bucket rests on conditional writes: the run sends nothing until
    the probe has seen the store honour them."""
    if not store.is_local:
        await anyio.to_thread.run_sync(probe_conditional_writes, store)


async def _run_batch_in(
    settings: Settings,
    workspace: Workspace,
    storage: asyncio.Future[OutputLocationResults],
    probe: asyncio.Future[None],
    sources: list[str],
    template_ids: list[int],
    options: RunOptions,
    listener: RunListener,
    item: str | None,
) -> RunSummary:
    log = get_run_logger()
    passed_over = PassedOver()
    photos = _photos(
        discover(sources, allow_file_urls=settings.allow_file_urls, passed_over=passed_over),
        template_ids,
        item,
        known={row.source: row.item for row in read_manifest(workspace.store)},
    )
    if options.shard_size and len(photos) > options.shard_size:
        await probe
        return await run_shards(photos, options, workspace, listener, passed_over)
    shown = [f"{p.item}/{t}" for p in photos for t in p.template_ids][:THUMBNAIL_ROWS]
    workspace.pictures.want(shown)  # the summary's sets, pictured as they arrive
    rules = SubmitPolicy(
        run_id=str(flow_run.get_id() or uuid.uuid4()),
        refresh=options.refresh,
        retry_failed=options.retry_failed,
        resubmit_unknown=options.resubmit_unknown,
        allow_near_duplicates=options.allow_near_duplicates,
        regenerate=await anyio.to_thread.run_sync(declined_attempts, workspace.store)
        if options.regenerate_declined
        else {},
        send_window_s=settings.send_window(),
    )
    prepare = PrepareOptions(
        policy=Policy(options.policy),
        fit=Fit(options.fit),
        max_fetch_bytes=settings.max_fetch_bytes,
        allow_private_urls=settings.allow_private_urls,
        pass_urls=options.pass_urls,
    )
    async with open_runtime(
        settings,
        workspace,
        prepare=prepare,
        rules=rules,
        deadline_s=options.deadline_s,
        concurrency=options.concurrency,
        need_client=not options.dry_run,
    ) as runtime:
        await _prepare_all(photos, runtime, settings.base_url, storage, probe)
        await probe
        plan = await _generate(
            photos,
            runtime,
            base_url=settings.base_url,
            concurrency=options.concurrency or settings.concurrency,
            budget=Budget(
                cap=options.max_images if options.max_images is not None else settings.max_images,
                default_set_size=settings.images_per_set,
                shared=(workspace.store, f"{shard_prefix(options.shard_of)}/budget.json")
                if options.shard_of
                else None,
            ),
            dry_run=options.dry_run,
            listener=listener,
        )
        await _remember_records(runtime)
    plan.passed_over = passed_over
    if not options.shard_of:  # a shard's manifest passes nothing over: its parent's scan did
        await anyio.to_thread.run_sync(remember_passed_over, workspace.store, passed_over)
    if plan.account_error and options.shard_of:
        # The parent learns it from here: it exits 3 as an unsharded run would.
        workspace.store.write(
            f"{shard_prefix(options.shard_of)}/{ACCOUNT_ERROR}", plan.account_error.encode()
        )
    rows = [plan.rows[(p.source, t)] for p in photos for t in p.template_ids]
    pending = await anyio.to_thread.run_sync(
        partial(
            mark_pending,
            workspace.store,
            rows,
            asked=options.review and not options.dry_run,
            publish_to=publish_location(options),
        )
    )
    sheet = await anyio.to_thread.run_sync(
        partial(update_report, workspace.store, rows, copies=workspace.kept)
    )
    await publish_results(rows, workspace, sheet=sheet, passed_over=passed_over)
    log.info("report written: %s", sheet)
    return RunSummary.written(workspace, rows, sheet, plan, pending)


async def _remember_records(runtime: BatchRuntime) -> None:
    """Leave the ledger's digest for the next run (a rerun then reads no record it holds);
    a digest not written costs that run its reads, never a result."""
    try:
        await anyio.to_thread.run_sync(runtime.ledger.remember, runtime.listing)
    except StorageError as exc:
        get_run_logger().warning("the ledger's digest was not saved: %s", exc)


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


def report_link(store: Store) -> str | None:
    """A link to ``index.html`` valid for seven days, where the store can sign one."""
    return store.presign(INDEX_HTML, REPORT_LINK_VALIDITY)


REPORT_LINK_VALIDITY = timedelta(days=7)


def _photos(
    items: list[SourceItem],
    template_ids: list[int],
    single_item: str | None,
    known: dict[str, str],
) -> list[Photo]:
    """Each source with the folder its sets go under: stable across reruns, never shared.

    ``known`` maps sources to the names earlier runs gave them in this output folder;
    a new source never takes one of those names, nor one given earlier in this run.
    """
    taken = set(known.values()) | {PUBLISHED_FOLDER}  # <out>/published holds approved sets
    photos = []
    for item in items:
        given = item.item or (single_item if len(items) == 1 else None)
        name = known.get(item.source) if given is None else None
        if name is None:
            base = _safe_name(given or _stem(item.source))
            name, suffix = base, 2
            while name in taken and known.get(item.source) != name:
                name, suffix = f"{base}-{suffix}", suffix + 1
        taken.add(name)
        photos.append(Photo(item.source, name, item.template_ids or list(template_ids)))
    return photos


def _stem(source: str) -> str:
    tail = source.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    return Path(tail).stem or "photo"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "photo"


async def _prepare_all(
    photos: list[Photo],
    runtime: BatchRuntime,
    base_url: str,
    saving: Awaitable[OutputLocationResults],
    probe: Awaitable[None],
) -> None:
    """Give every photo its PreparedPhoto: from the ledger for sets already finished (no
    task run at all), else through the fetch, validate and prepare stages in chunks,
    started here and awaited by ``_generate`` (``Photo.preparing``). Nothing is written
    to the output location before the probe has passed: a refused one is left as it was."""
    local = [photo.source for photo in photos if is_local_file(photo.source)]
    digests = await anyio.to_thread.run_sync(hash_files, [Path(source) for source in local])
    hashes = dict(zip(local, digests, strict=True))
    for photo in await _finished(photos, hashes, runtime, base_url):
        digest = hashes[photo.source]
        photo.prepared = PreparedPhoto(
            source=photo.source,
            source_sha256=digest,
            validated=True,
            upload_key=upload_key_of(digest, runtime.prepare),
            upload_sha256=photo.paid_upload,
            thumbnail=input_thumbnail_key(digest),
        )
    pending = [photo for photo in photos if photo.prepared is None]
    identities = await _identities(pending, runtime)
    items = [
        FetchItem(source=p.source, sha256=hashes.get(p.source), identity=identities.get(p.source))
        for p in pending
    ]
    total = len(photos)
    if not pending:
        return
    for photo in pending:
        photo.sha256 = hashes.get(photo.source)
    await probe
    storage = await saving
    # A few chunks at a time, in order, so the first photos are ready first: submitting
    # starts while later photos are still being prepared (_generate).
    in_order = asyncio.Semaphore(PREPARING_CHUNKS)

    async def chunk(start: int, end: int, before: asyncio.Future[None] | None) -> None:
        photos = pending[start:end]
        async with in_order:
            prepared = await _stages(
                photos, items[start:end], runtime, storage, label=f"{start + 1}-{end} of {total}"
            )
        if before is not None:
            # Photos become ready in the batch's order, so that of two with the same
            # upload the first in the batch is always the one paid for.
            await asyncio.wait([before])
        for photo, result in zip(photos, prepared, strict=True):
            photo.prepared = result

    preparing: asyncio.Future[None] | None = None
    for start, end in chunk_bounds(len(pending)):
        preparing = asyncio.ensure_future(chunk(start, end, preparing))
        for photo in pending[start:end]:
            photo.preparing = preparing


def chunk_bounds(count: int) -> list[tuple[int, int]]:
    """Where the chunks of ``count`` photos begin and end: 4 photos, 8, then
    ``PREPARE_CHUNK`` at a time, so the first set is submitted after four photos are
    prepared (not sixteen) and later photos still take few task runs."""
    bounds, start, size = [], 0, FIRST_CHUNK
    while start < count:
        end = min(start + size, count)
        bounds.append((start, end))
        start, size = end, min(size * 2, PREPARE_CHUNK)
    return bounds


async def _stages(
    photos: list[Photo],
    items: list[FetchItem],
    runtime: BatchRuntime,
    storage: OutputLocationResults,
    *,
    label: str,
) -> list[PreparedPhoto]:
    """One chunk through fetch, validate and prepare: three task runs, cached by Prefect
    in the output location."""

    def sourced(results: list[PreparedPhoto]) -> list[PreparedPhoto]:
        # Cached values carry no source (a path is never cached): put the chunk's back.
        return [
            r.model_copy(update={"source": p.source}) for p, r in zip(photos, results, strict=True)
        ]

    fetched = sourced(
        await fetch_photos.with_options(result_storage=storage)(items, runtime, label)
    )
    checked = sourced(
        await validate_photos.with_options(result_storage=storage)(fetched, runtime, label)
    )
    return sourced(
        await prepare_photos.with_options(result_storage=storage)(checked, runtime, label)
    )


async def _finished(
    photos: list[Photo], hashes: dict[str, str], runtime: BatchRuntime, base_url: str
) -> list[Photo]:
    """The local photos whose every set is finished in the ledger: nothing to prepare."""
    keys = {
        photo.source: [
            key_for(base_url, t, hashes[photo.source], runtime.prepare) for t in photo.template_ids
        ]
        for photo in photos
        if photo.source in hashes
    }
    ledger = runtime.ledger
    wanted = [key for wanted in keys.values() for key in wanted]
    listed = await runtime.ledger_listing(len(wanted))
    records = await anyio.to_thread.run_sync(ledger.read_many, wanted, listed)
    runtime.planned.update(records)
    done = []
    for photo in photos:
        found = [records[key] for key in keys.get(photo.source, [])]
        if found and all(
            record is not None
            and record.state is SubmissionState.FINISHED
            and not needs_submit(record, runtime.rules)
            for record in found
        ):
            photo.paid_upload = found[0].upload_sha256 if found[0] else None
            photo.finished = {
                t: record
                for t, record in zip(photo.template_ids, found, strict=True)
                if record is not None
            }
            done.append(photo)
    return done


async def _identities(photos: list[Photo], runtime: BatchRuntime) -> dict[str, str | None]:
    """Remote sources' identities (URL + validators), looked up a few at a time."""
    remote = [photo.source for photo in photos if "://" in photo.source]
    limiter = anyio.CapacityLimiter(8)
    found: dict[str, str | None] = {}

    async def look(source: str) -> None:
        found[source] = await anyio.to_thread.run_sync(
            partial(remote_identity, source, allow_private=runtime.prepare.allow_private_urls),
            limiter=limiter,
        )

    async with anyio.create_task_group() as group:
        for source in remote:
            group.start_soon(look, source)
    return found


@dataclass
class _SetJob:
    photo: Photo
    template_id: int
    key: str
    sending: bool  # False: submitted earlier, only collected now
    paid_as: str | None = None  # the key an identical upload was paid under, if another
    # Planned from the source's hash while its photo was still being prepared: the
    # upload checks of planning are made once it is (``_when_prepared``).
    unprepared: bool = False
    fresh: bool = False  # its key had no record when planned
    # A better copy of its picture planned later in this run takes its place while its
    # send has not begun (``_LookChecks``): the photo it gave way to, and how far apart.
    gave_way_to: tuple[Photo, int] | None = None
    sending_begun: bool = False


async def _generate(
    photos: list[Photo],
    runtime: BatchRuntime,
    *,
    base_url: str,
    concurrency: int,
    budget: Budget,
    dry_run: bool,
    listener: RunListener,
) -> RunPlan:
    """Consult the ledger, then submit and collect what is left; one row per photo+template.

    Local photos still being prepared are planned from their source's hash (what the
    ledger key is made of), so their sets start as soon as their chunk is ready; the
    checks that need the prepared upload are made then (``_when_prepared``). A dry run,
    or a batch with remote sources, plans once everything is prepared.
    """
    plan = RunPlan(dry=dry_run)
    streaming = not dry_run and all(p.prepared is not None or p.sha256 for p in photos)
    if not streaming:
        await _prepared(photos)
    first_by_hash: dict[tuple[str, int], Photo] = {}
    first_by_upload: dict[tuple[str, int], Photo] = {}
    wanted: list[tuple[Photo, int, str]] = []
    jobs: list[_SetJob] = []
    duplicates: list[tuple[Photo, int, Photo]] = []
    later: list[tuple[Photo, int, LedgerRecord | None, str]] = []  # rows once prepared
    for photo in photos:
        prepared = photo.prepared
        if prepared is not None and (not prepared.ready or prepared.source_sha256 is None):
            for template_id in photo.template_ids:
                plan.rows[(photo.source, template_id)] = _row(photo, template_id, None)
            continue
        digest = prepared.source_sha256 if prepared is not None else photo.sha256
        assert digest is not None
        for template_id in photo.template_ids:
            original = first_by_hash.setdefault((digest, template_id), photo)
            if original is photo and prepared is not None and prepared.upload_sha256:
                original = first_by_upload.setdefault((prepared.upload_sha256, template_id), photo)
            if original is not photo:
                duplicates.append((photo, template_id, original))
                continue
            key = key_for(base_url, template_id, digest, runtime.prepare)
            wanted.append((photo, template_id, key))
    ledger = runtime.ledger
    # Records read while preparing was planned are not read twice.
    records = {key: runtime.planned[key] for _, _, key in wanted if key in runtime.planned}
    unread = [key for _, _, key in wanted if key not in records]
    listed = await runtime.ledger_listing(len(unread))
    records.update(await anyio.to_thread.run_sync(ledger.read_many, unread, listed))
    # A key never sent may have been paid under another (the same picture, other bytes).
    uploads = {
        key: _upload_key(photo, template_id, base_url, runtime.prepare)
        for photo, template_id, key in wanted
        if records[key] is None and not runtime.rules.refresh and photo.prepared is not None
    }
    owners = await anyio.to_thread.run_sync(ledger.upload_owners, uploads.values(), listed)
    paid_under = {
        key: owner
        for key, upload in uploads.items()
        if (owner := owners[upload]) not in (None, key)
    }
    records.update(await anyio.to_thread.run_sync(ledger.read_many, set(paid_under.values())))
    for photo, template_id, key in wanted:
        record = records[key]
        sending = needs_submit(record, runtime.rules)
        paid_as = paid_under.get(key)
        if paid_as is not None:
            record, sending = records[paid_as], False
        if sending or (record is not None and record.state is SubmissionState.SUBMITTED):
            unprepared = photo.prepared is None
            jobs.append(
                _SetJob(photo, template_id, key, sending, paid_as, unprepared, record is None)
            )
        else:
            plan.already_done += 1
            later.append((photo, template_id, record, key))
    looks = _LookChecks(runtime)
    jobs = await _without_near_duplicates(jobs, looks, plan)
    plan.budget_left = await _budget_left(runtime)
    plan.tasks = sum(1 for job in jobs if job.sending)  # at most: see _when_prepared
    sizes = {t: budget.set_size(t) for t in {job.template_id for job in jobs if job.sending}}
    plan.images = sum(sizes[job.template_id] for job in jobs if job.sending)
    if dry_run or not listener.on_plan(plan):
        await _prepared(photos)
        for job in jobs:
            plan.rows[(job.photo.source, job.template_id)] = _row(
                job.photo,
                job.template_id,
                None,
                status="planned",
                reason=plan.refused
                or (
                    "would be submitted"
                    if job.sending
                    else "submitted earlier; a real run collects it"
                ),
            )
    elif jobs:
        if runtime.client is not None and plan.tasks:
            # Only when something is sent: a rerun with every set done makes no task run.
            await check_templates(
                runtime.client,
                sorted({job.template_id for job in jobs if job.sending}),
                results_in=runtime.workspace.out,
            )
        checks = _UploadChecks(base_url, first_by_upload, duplicates, looks, _ChunkGate(jobs))
        await _run_jobs(jobs, runtime, plan, budget, concurrency, listener, checks)
        if plan.tasks:  # what is left after this run's sets
            plan.budget_left = await _budget_left(runtime)
    await _prepared(photos)
    for photo, template_id, record, key in later:
        plan.rows[(photo.source, template_id)] = _paid_row(photo, template_id, record, key)
    for photo, template_id, original in duplicates:
        model = plan.rows[(original.source, template_id)]
        note = f"{_sameness(photo, original)} as {original.source}"
        assert photo.prepared is not None
        plan.rows[(photo.source, template_id)] = model.model_copy(
            update={
                "source": photo.source,
                "item": photo.item,
                "source_sha256": photo.prepared.source_sha256,
                "thumbnail": photo.prepared.thumbnail,
                "reason": f"{note}; {model.reason}" if model.reason else note,
            }
        )
    _with_paid_sets(plan.rows)
    return plan


async def _budget_left(runtime: BatchRuntime) -> str | None:
    """What the budget across runs has left, where one is set."""
    if runtime.budget is None:
        return None
    left = await anyio.to_thread.run_sync(runtime.budget.left)
    return left.describe()


def _with_paid_sets(rows: dict[tuple[str, int], ManifestRow]) -> None:
    """Give each near-duplicate's row the images of the set paid for its picture in this
    run (a catalogue that reads rows gets them for both items), following a photo that
    gave way to a better copy to that copy."""
    by_photo = {(row.source_sha256, row.template_id): row for row in rows.values()}
    for key, row in rows.items():
        paid, hops = by_photo.get((row.near_duplicate_of, row.template_id)), 0
        while paid is not None and paid.near_duplicate_of is not None and hops < len(rows):
            paid, hops = by_photo.get((paid.near_duplicate_of, row.template_id)), hops + 1
        if row.near_duplicate_of is None or paid is None or paid.near_duplicate_of is not None:
            continue  # paid in an earlier run: its images came with the match
        reason = row.reason
        if hops:
            reason = f"near-duplicate of {paid.item} (through a copy it gave way to)"
        rows[key] = row.model_copy(
            update={
                "near_duplicate_of": paid.source_sha256,
                "outputs": paid.outputs,
                "reason": reason,
            }
        )


@dataclass
class _UploadChecks:
    """What planning checks of the prepared upload, for sets planned before it existed."""

    base_url: str
    first_by_upload: dict[tuple[str, int], Photo]
    duplicates: list[tuple[Photo, int, Photo]]
    looks: _LookChecks
    gate: _ChunkGate


class _ChunkGate:
    """Sets planned before their photos were prepared are sent once every set of their
    chunk is checked: of two copies prepared together, the better is then the one sent."""

    def __init__(self, jobs: list[_SetJob]) -> None:
        self._unchecked: dict[int, int] = {}
        self._checked: dict[int, asyncio.Event] = {}
        for job in jobs:
            if job.unprepared:
                chunk = id(job.photo.preparing)
                self._unchecked[chunk] = self._unchecked.get(chunk, 0) + 1
                self._checked.setdefault(chunk, asyncio.Event())

    def checked(self, job: _SetJob) -> None:
        chunk = id(job.photo.preparing)
        self._unchecked[chunk] -= 1
        if not self._unchecked[chunk]:
            self._checked[chunk].set()

    async def wait(self, job: _SetJob) -> None:
        """Until every set of the job's chunk is checked."""
        await self._checked[id(job.photo.preparing)].wait()


_GO_ON = "go on"
_DUPLICATE = "duplicate"


async def _when_prepared(
    job: _SetJob, runtime: BatchRuntime, plan: RunPlan, checks: _UploadChecks
) -> ManifestRow | str:
    """Wait for the job's photo to be prepared, then make planning's upload checks: its
    row when nothing is left to do (rejected, paid under another key, a near-duplicate),
    ``_DUPLICATE`` (its row is the original's, made at the end), else ``_GO_ON``
    (submit, or collect what another key paid for)."""
    photo, template_id = job.photo, job.template_id
    if photo.preparing is not None:
        # Shielded: an interrupted set must not cancel its whole chunk's preparation.
        await asyncio.shield(photo.preparing)
    prepared = photo.prepared
    assert prepared is not None
    job.unprepared = False
    if not prepared.ready or prepared.upload_sha256 is None:
        plan.tasks -= job.sending
        return _row(photo, template_id, None)
    original = checks.first_by_upload.setdefault((prepared.upload_sha256, template_id), photo)
    if original is not photo:
        plan.tasks -= job.sending
        checks.duplicates.append((photo, template_id, original))
        return _DUPLICATE
    if not job.fresh:
        return _GO_ON
    # One photo at a time, in the batch's order (the lock is first come, first served, and
    # photos come here in that order): of two photos alike, the first is the one paid for.
    async with checks.looks.turn:
        if not runtime.rules.refresh:
            ledger = runtime.ledger
            upload = _upload_key(photo, template_id, checks.base_url, runtime.prepare)
            owner = (await ledger.run(ledger.upload_owners, [upload], runtime.listing))[upload]
            if owner is not None and owner != job.key:
                record = await ledger.run(ledger.read, owner)
                plan.tasks -= job.sending
                job.paid_as, job.sending = owner, False
                if record is not None and record.state is SubmissionState.SUBMITTED:
                    return _GO_ON
                plan.already_done += 1
                return _paid_row(photo, template_id, record, job.key)
        if job.sending and (like := (await checks.looks.repeats(template_id, [job]))[0]):
            plan.tasks -= 1
            return _near_duplicate_row(photo, template_id, like)
    return _GO_ON


@dataclass(frozen=True)
class _Likeness:
    """The paid (or planned) photo a photo looks like, and its set's images if paid."""

    item: str
    source_sha256: str | None
    distance: int
    outputs: tuple[str, ...] = ()

    @classmethod
    def of(cls, photo: Photo, distance: int) -> _Likeness:
        assert photo.prepared is not None
        return cls(photo.item, photo.prepared.source_sha256, distance)


class _LookChecks:
    """Planning's near-duplicate check: a photo about to be paid for that looks like one
    paid for with the same template is skipped. Of photos of this run that are the same
    picture, the best source is sent (``PreparedPhoto.source_rank``, then the batch's
    order): a better copy planned later takes the place of one whose send has not begun."""

    def __init__(self, runtime: BatchRuntime) -> None:
        self.runtime = runtime
        self._by_template: dict[int, likeness.NearDuplicates[str | Photo]] = {}
        self.turn = asyncio.Lock()  # held by a photo checked as it is prepared
        self._paid: dict[int, list[tuple[Look, str]]] | None = None  # listed once, if needed
        self._planned: dict[tuple[int, int], _SetJob] = {}  # by id(photo), template
        # Taking a place (in a worker thread) and beginning a send (in the event loop)
        # exclude each other: a copy never takes the place of a set being sent.
        self._places = threading.Lock()

    def begin_sending(self, job: _SetJob) -> _Likeness | None:
        """The better copy the job's photo gave way to, if one did; else the job's send
        begins, and no copy takes its place any more."""
        with self._places:
            if job.gave_way_to is not None:
                return _Likeness.of(*job.gave_way_to)
            job.sending_begun = True
            return None

    def _takes_over(
        self, template_id: int, photo: str | Photo, match: likeness.Match[str | Photo]
    ) -> bool:
        """Whether ``photo`` takes the place of the planned photo it repeats (``match``):
        a better source, while that one's send has not begun."""
        assert isinstance(photo, Photo) and isinstance(match.ref, Photo)
        assert photo.prepared is not None and match.ref.prepared is not None
        if photo.prepared.source_rank <= match.ref.prepared.source_rank:
            return False
        with self._places:
            giving_way = self._planned[(id(match.ref), template_id)]
            if giving_way.sending_begun:
                return False
            giving_way.gave_way_to = (photo, match.distance)
            for (_, template), job in self._planned.items():
                gave_way = job.gave_way_to
                if template == template_id and gave_way is not None and gave_way[0] is match.ref:
                    job.gave_way_to = (photo, gave_way[1])
            return True

    async def repeats(self, template_id: int, jobs: list[_SetJob]) -> list[_Likeness | None]:
        """For each job's photo (in order), what it repeats; photos that repeat nothing are
        planned, so a later photo like them is skipped. Never called by two at once: at
        planning, then under ``turn``."""
        found: list[_Likeness | None] = [None] * len(jobs)
        if self.runtime.rules.allow_near_duplicates:
            return found
        looked = [
            (i, job.photo, job.key, _look(job.photo))
            for i, job in enumerate(jobs)
            if job.photo.prepared and job.photo.prepared.look
        ]
        # numpy, only once a photo is to be checked: a rerun with nothing to do never is.
        from modelset.images.likeness import LookIndex, NearDuplicates
        from modelset.images.sameness import same_picture

        ledger = self.runtime.ledger
        near = self._by_template.get(template_id)
        if near is None:
            if self._paid is None:
                self._paid = await ledger.run(ledger.paid_looks)
            recorded = self._paid.get(template_id, [])
            index = await anyio.to_thread.run_sync(LookIndex[str | Photo], recorded)
            near = self._by_template[template_id] = NearDuplicates(index)
        keys = {id(photo): key for _, photo, key, _ in looked}
        self._planned.update({(id(job.photo), template_id): job for job in jobs})
        records: dict[str, LedgerRecord | None] = {}
        previews: dict[str, Image.Image | None] = {}
        store = self.runtime.workspace.store

        def preview(source_sha256: str | None) -> Image.Image | None:
            if source_sha256 is None:
                return None
            if source_sha256 not in previews:
                previews[source_sha256] = stored_preview(store, source_sha256)
            return previews[source_sha256]

        def confirm(photo: str | Photo, ref: str | Photo) -> bool:
            """Whether a candidate the look found is the same picture, region by region (a
            preview gone cannot confirm it: paying for a copy is the lesser harm)."""
            assert isinstance(photo, Photo) and photo.prepared is not None
            if isinstance(ref, Photo):
                assert ref.prepared is not None
                other = ref.prepared.source_sha256
            else:
                # Its own key, paid meanwhile by another run, is no near-duplicate: the
                # claim finds that record and collects the set.
                if ref == keys[id(photo)]:
                    return False
                if ref not in records:
                    records[ref] = ledger.read(ref)
                record = records[ref]
                if record is None:
                    return False
                other = record.source_sha256
            mine, theirs = preview(photo.prepared.source_sha256), preview(other)
            return mine is not None and theirs is not None and same_picture(mine, theirs)

        entries = [(look, photo) for _, photo, _, look in looked]
        takes_over = partial(self._takes_over, template_id)
        matches = await anyio.to_thread.run_sync(near.check, entries, confirm, takes_over)
        for (position, _, _, _), match in zip(looked, matches, strict=True):
            if match is None:
                continue
            if isinstance(match.ref, Photo):
                found[position] = _Likeness.of(match.ref, match.distance)
                continue
            record = records[match.ref]
            assert record is not None
            found[position] = _Likeness(
                record.item, record.source_sha256, match.distance, tuple(record.outputs)
            )
        return found


def _look(photo: Photo) -> Look:
    assert photo.prepared is not None and photo.prepared.look is not None
    return Look.parse(photo.prepared.look)


async def _without_near_duplicates(
    jobs: list[_SetJob], looks: _LookChecks, plan: RunPlan
) -> list[_SetJob]:
    """The jobs left once the prepared photos about to be paid for that repeat a paid or
    planned one are taken out (their rows say which); the others are checked as they
    are prepared (``_when_prepared``)."""
    checked: dict[int, list[_SetJob]] = {}
    for job in jobs:
        if job.sending and job.fresh and not job.unprepared and job.paid_as is None:
            checked.setdefault(job.template_id, []).append(job)
    skipped: set[int] = set()
    for template_id, candidates in checked.items():
        likes = await looks.repeats(template_id, candidates)
        for job, like in zip(candidates, likes, strict=True):
            if job.gave_way_to is not None:
                like = _Likeness.of(*job.gave_way_to)
            if like is not None:
                skipped.add(id(job))
                row = _near_duplicate_row(job.photo, template_id, like)
                plan.rows[(job.photo.source, template_id)] = row
    return [job for job in jobs if id(job) not in skipped]


def _near_duplicate_row(photo: Photo, template_id: int, like: _Likeness) -> ManifestRow:
    reason = f"near-duplicate of {like.item} (distance {like.distance})"
    row = _row(photo, template_id, None, status="skipped", reason=reason)
    update = {"near_duplicate_of": like.source_sha256, "outputs": list(like.outputs)}
    return row.model_copy(update=update)


def _sameness(photo: Photo, original: Photo) -> str:
    assert photo.prepared is not None and original.prepared is not None
    if photo.prepared.source_sha256 == original.prepared.source_sha256:
        return "same photo"
    return "same picture (an identical upload)"


def _upload_key(photo: Photo, template_id: int, base_url: str, options: PrepareOptions) -> str:
    assert photo.prepared is not None
    return upload_key_for(base_url, template_id, photo.prepared.sent_sha256(options), options)


def _paid_row(photo: Photo, template_id: int, record: LedgerRecord | None, key: str) -> ManifestRow:
    """The row of a photo+template from its record, or from the record of the identical
    upload it was paid under (another key), with a reason saying so."""
    row = _row(photo, template_id, record)
    if record is None or record.key == key:
        return row
    note = f"same picture (an identical upload) as {record.source}, paid once"
    return row.model_copy(update={"reason": f"{note}; {row.reason}" if row.reason else note})


async def _run_jobs(
    jobs: list[_SetJob],
    runtime: BatchRuntime,
    plan: RunPlan,
    budget: Budget,
    concurrency: int,
    listener: RunListener,
    checks: _UploadChecks | None = None,
) -> None:
    """Every set concurrently within ``concurrency``; an interrupt stops them all."""
    listener.on_total(len(jobs))
    progress = _Progress(
        total=len(jobs), listener=listener, artifact=await ProgressArtifact.create(len(jobs))
    )
    slots = asyncio.Semaphore(concurrency)
    running = [
        asyncio.ensure_future(_one_set(job, runtime, slots, plan, budget, progress, checks))
        for job in jobs
    ]
    everything: asyncio.Future[Any] = asyncio.gather(*running, return_exceptions=True)
    interrupted: asyncio.Future[Any] = asyncio.ensure_future(listener.interrupted.wait())
    await asyncio.wait([everything, interrupted], return_when=asyncio.FIRST_COMPLETED)
    if listener.interrupted.is_set():
        plan.stopped = "interrupted"
        for future in running:
            future.cancel()
    interrupted.cancel()
    await asyncio.gather(everything, return_exceptions=True)
    await _prepared([job.photo for job in jobs])  # an interrupted set's row needs it
    for job, future in zip(jobs, running, strict=True):
        row: ManifestRow | None
        if future.cancelled():
            row = _interrupted_row(job, runtime)
        elif (error := future.exception()) is not None:
            raise error
        else:
            row = future.result()
        if row is not None:  # None: a duplicate, whose row is its original's
            plan.rows[(job.photo.source, job.template_id)] = row


def _interrupted_row(job: _SetJob, runtime: BatchRuntime) -> ManifestRow:
    record = runtime.ledger.read(job.key)
    if record is None or (job.sending and record.claimed_by_run != runtime.rules.run_id):
        reason = "interrupted before it was submitted"
        return _row(job.photo, job.template_id, None, status="skipped", reason=reason)
    row = _row(job.photo, job.template_id, record)
    if row.status is Status.SUCCEEDED:
        return row
    return row.model_copy(
        update={
            "status": Status.OUTCOME_UNKNOWN,
            "reason": "interrupted while in flight; a rerun resolves it",
        }
    )


def _row(
    photo: Photo,
    template_id: int,
    record: LedgerRecord | None,
    *,
    status: Literal["planned", "skipped"] | None = None,
    reason: str | None = None,
) -> ManifestRow:
    assert photo.prepared is not None
    return row_for(
        source=photo.source,
        item=photo.item,
        template_id=template_id,
        prepared=photo.prepared,
        record=record,
        status_if_open=status,
        reason=reason,
    )


async def _one_set(
    job: _SetJob,
    runtime: BatchRuntime,
    slots: asyncio.Semaphore,
    plan: RunPlan,
    budget: Budget,
    progress: _Progress,
    checks: _UploadChecks | None = None,
) -> ManifestRow | None:
    """Submit (once) and collect one photo+template, holding one of the batch's slots
    (a photo still being prepared is waited for first, without a slot).

    Whatever goes wrong with one set fails that set's row, never the batch. None: the set
    is a duplicate of another in this batch, whose row it gets at the end.
    """
    early: ManifestRow | str = _GO_ON
    if job.unprepared and checks is not None:
        try:
            early = await _when_prepared(job, runtime, plan, checks)
        finally:
            checks.gate.checked(job)
        if early == _GO_ON:
            await checks.gate.wait(job)
    if isinstance(early, ManifestRow):
        row = early
    elif early == _DUPLICATE:
        row = _row(job.photo, job.template_id, None, status="skipped", reason=_DUPLICATE)
    else:
        async with slots:
            gave_way = (
                checks.looks.begin_sending(job) if job.sending and checks is not None else None
            )
            if gave_way is not None:
                plan.tasks -= 1
                row = _near_duplicate_row(job.photo, job.template_id, gave_way)
            else:
                try:
                    row = await _submit_and_collect(job, runtime, plan, budget)
                except Exception as exc:
                    row = _failed_row(job, runtime, exc)
    try:
        await progress.advance(row)
    except Exception as exc:  # the progress artifact is a nicety, never a reason to fail
        get_run_logger().warning("progress not updated: %s", exc)
    return None if early == _DUPLICATE else row


def _failed_row(job: _SetJob, runtime: BatchRuntime, exc: Exception) -> ManifestRow:
    """The row of a set that raised: the output location failing (which the store has
    retried already), or anything unexpected. A rerun resumes it from the ledger."""
    if isinstance(exc, StorageError):
        get_run_logger().error("set %s/%s: %s", job.photo.item, job.template_id, exc)
        what = f"the output location failed ({exc})"
    else:
        get_run_logger().exception("set %s/%s failed", job.photo.item, job.template_id)
        what = f"unexpected error ({type(exc).__name__}: {exc})"
    try:
        record = runtime.ledger.read(job.key)
    except StorageError:
        record = None
    return _row(job.photo, job.template_id, record).model_copy(
        update={"status": Status.FAILED, "reason": f"{what}; a rerun resumes from the ledger"}
    )


async def _submit_and_collect(
    job: _SetJob, runtime: BatchRuntime, plan: RunPlan, budget: Budget
) -> ManifestRow:
    photo, template_id = job.photo, job.template_id
    assert photo.prepared is not None
    ledger = runtime.ledger
    record: LedgerRecord | None
    if job.sending:
        if plan.stopped is not None:
            return _row(
                photo, template_id, None, status="skipped", reason=f"not submitted: {plan.stopped}"
            )
        reserved = await budget.reserve(template_id)
        if reserved is None:
            return _row(photo, template_id, None, status="skipped", reason=budget.refusal())
        sent: LedgerRecord | None = None
        try:
            sent = await submit_photo(
                job.key,
                photo.prepared,
                photo.item,
                template_id,
                unsearched(runtime),
                absent=job.fresh and job.paid_as is None,
                images=reserved,
            )
            sent = await _after_send(job, sent, runtime, reserved)
        except AccountError as exc:
            plan.stopped = plan.account_error = exc.message
            return _row(
                photo, template_id, None, status="skipped", reason=f"not submitted: {exc.message}"
            )
        finally:
            await budget.settle(template_id, reserved, sent, runtime.rules.run_id)
        record = sent
    else:
        record = await ledger.run(ledger.read, job.paid_as or job.key)
    assert record is not None
    if record.state is SubmissionState.SUBMITTED:
        just_sent = (
            job.sending
            and record.key == job.key
            and record.claimed_by_run == runtime.rules.run_id
            and runtime.notify_url is None
        )
        record = (
            await collect(record, record.item or photo.item, runtime, just_sent=just_sent) or record
        )
    return _paid_row(photo, template_id, record, job.key)


async def _after_send(
    job: _SetJob, record: LedgerRecord, runtime: BatchRuntime, images: int
) -> LedgerRecord:
    """A request the service accepted proves (or disproves) the request_id lookup, once;
    a send whose answer was lost (this run's, or a dead run's found at its claim) is
    resolved by it where it is proven."""
    lookup = runtime.lookup
    if lookup is None or record.key != job.key:
        return record
    if record.state is SubmissionState.SUBMITTED:
        if record.claimed_by_run == runtime.rules.run_id:
            await lookup.accepted(record)
    elif record.state is SubmissionState.UNKNOWN and await lookup.proven_for(runtime.ledger):
        assert job.photo.prepared is not None
        record = await submit_photo(
            job.key,
            job.photo.prepared,
            job.photo.item,
            job.template_id,
            unsearched(runtime),
            images=images,
        )
    return record


SHARD_DEPLOYMENT = "generate-model-sets/manual"


async def run_shards(
    photos: list[Photo],
    options: RunOptions,
    workspace: Workspace,
    listener: RunListener,
    passed_over: PassedOver,
) -> RunSummary:
    """Split the batch into child runs of the manual deployment, for workers to share.

    Each shard is a JSON Lines manifest in the shared output folder; the children write
    into the same report and ledger, which is what keeps them exactly-once together.
    """
    from prefect.deployments.flow_runs import arun_deployment

    assert options.shard_size
    planned = RunPlan(
        tasks=sum(len(photo.template_ids) for photo in photos), passed_over=passed_over
    )
    planned.images = planned.tasks * Settings().images_per_set  # at most; done ones are free
    if not listener.on_plan(planned):
        rows = [
            ManifestRow(
                source=p.source,
                item=p.item,
                template_id=t,
                status=Status.PLANNED,
                reason=planned.refused or "not confirmed",
            )
            for p in photos
            for t in p.template_ids
        ]
        return RunSummary(
            out=workspace.out, rows=rows, sheet=locate(workspace.store, INDEX_HTML), plan=planned
        )
    await anyio.to_thread.run_sync(remember_passed_over, workspace.store, passed_over)
    run_id = str(flow_run.get_id() or uuid.uuid4())
    child_options = options.model_copy(
        update={"shard_size": None, "out": workspace.out, "shard_of": run_id}
    ).model_dump(mode="json")
    manifests = []
    for index in range(0, len(photos), options.shard_size):
        key = f"{shard_prefix(run_id)}/{index // options.shard_size:04d}.jsonl"
        text = "".join(
            json.dumps({"image": p.source, "item": p.item, "template_ids": p.template_ids}) + "\n"
            for p in photos[index : index + options.shard_size]
        )
        workspace.store.write(key, text.encode("utf-8"))
        manifests.append(locate(workspace.store, key))
    listener.on_total(len(manifests))
    children = await asyncio.gather(
        *(
            arun_deployment(
                SHARD_DEPLOYMENT,
                parameters={"sources": [path], "template_ids": [], "options": child_options},
                timeout=None,
            )
            for path in manifests
        )
    )
    latest = {row.row_key: row for row in read_manifest(workspace.store)}
    rows = []
    for photo in photos:
        for template_id in photo.template_ids:
            row = latest.get((photo.source, template_id))
            if row is None:
                row = ManifestRow(
                    source=photo.source,
                    item=photo.item,
                    template_id=template_id,
                    status=Status.OUTCOME_UNKNOWN,
                    reason="its shard run ended without a report; a rerun resolves it",
                )
            rows.append(row)
    plan = RunPlan(tasks=len(children), passed_over=passed_over)
    account = read_or_none(workspace.store, f"{shard_prefix(run_id)}/{ACCOUNT_ERROR}")
    if account is not None:
        plan.account_error = account.data.decode("utf-8")
    failed = [child for child in children if child.state is None or not child.state.is_completed()]
    if failed:
        log = get_run_logger()
        log.warning("%d of %d shard runs did not complete", len(failed), len(children))
    sheet = locate(workspace.store, INDEX_HTML)
    await publish_results(rows, workspace, sheet=sheet, passed_over=passed_over)
    pending = (
        await anyio.to_thread.run_sync(
            pending_among, workspace.store, [row.task_id for row in rows if row.task_id]
        )
        if options.review
        else []
    )
    return RunSummary.written(workspace, rows, sheet, plan, pending)


ACCOUNT_ERROR = "account-error.txt"


def shard_prefix(parent_run_id: str) -> str:
    """Where a sharded run keeps its child manifests, shared budget and account error."""
    return f"{STATE_DIR}/shards/{parent_run_id}"
