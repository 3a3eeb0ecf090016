"""``generate_model_sets``: the batch flow, from sources to a report on disk.

The order of work is what makes it cheap to rerun: discover, hash local files, consult
the preparation cache and the ledger, and only then create task runs, for what is left.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import anyio
from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from modelset.budget import Budget
from modelset.hidream import AccountError
from modelset.images import Fit, Policy
from modelset.ledger import LedgerRecord, SubmissionState
from modelset.options import RunOptions
from modelset.report import INDEX_HTML, ManifestRow, Status, read_manifest, update_report
from modelset.settings import Settings
from modelset.sources import SourceItem, discover
from modelset.stages import (
    PreparedPhoto,
    PrepareOptions,
    SubmitPolicy,
    Workspace,
    cached_preparation,
    hash_file,
    key_for,
    needs_submit,
    row_for,
)
from modelset.tasks.artifacts import ProgressArtifact, publish_results
from modelset.tasks.catalogue import check_templates
from modelset.tasks.photos import prepare_photos
from modelset.tasks.runtime import BatchRuntime, collect, open_runtime
from modelset.tasks.submission import submit_photo

PREPARE_CHUNK = 16


@dataclass
class Photo:
    """One source to process, with the item name its outputs go under."""

    source: str
    item: str
    template_ids: list[int]
    prepared: PreparedPhoto | None = None


@dataclass
class RunPlan:
    """What a run found, planned and did; filled in as it goes."""

    rows: dict[tuple[str, int], ManifestRow] = field(default_factory=dict)
    tasks: int = 0  # tasks the run submits (or, dry, would submit)
    images: int = 0  # ... and the images they generate at most
    already_done: int = 0
    refused: str | None = None  # the plan was not confirmed: why
    stopped: str | None = None  # submitting stopped mid-run: why
    account_error: str | None = None


@dataclass
class RunSummary:
    out: Path
    rows: list[ManifestRow]
    sheet: Path
    plan: RunPlan

    @property
    def not_succeeded(self) -> list[ManifestRow]:
        return [row for row in self.rows if row.status is not Status.SUCCEEDED]

    def message(self) -> str:
        failing = self.not_succeeded
        if not failing:
            return f"all {len(self.rows)} succeeded"
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
    listener = _listener
    if started_unattended() and options.max_images is None and Settings().max_images is None:
        listener = _refusing(listener, UNATTENDED_NEEDS_CAP)
    summary = await run_batch(sources, template_ids, options, listener, item=item)
    listener.on_summary(summary)
    message = summary.message()
    if summary.plan.account_error:
        return Failed(message=f"{summary.plan.account_error}; {message}")
    if summary.plan.refused:
        return Failed(message=summary.plan.refused)
    if any(row.status not in (Status.SUCCEEDED, Status.PLANNED) for row in summary.rows):
        return Failed(message=message)
    return Completed(message=message)


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
    log = get_run_logger()
    workspace = Workspace(out=Path(options.out) if options.out else settings.output_dir).create()
    photos = _photos(
        discover(sources, allow_file_urls=settings.allow_file_urls),
        template_ids,
        item,
        known={row.source: row.item for row in read_manifest(workspace.out)},
    )
    if options.shard_size and len(photos) > options.shard_size:
        return await run_shards(photos, options, workspace, listener)
    rules = SubmitPolicy(
        run_id=str(flow_run.get_id() or uuid.uuid4()),
        refresh=options.refresh,
        retry_failed=options.retry_failed,
        resubmit_unknown=options.resubmit_unknown,
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
        if runtime.client is not None:
            await check_templates(
                runtime.client, sorted({t for p in photos for t in p.template_ids})
            )
        await _prepare_all(photos, runtime)
        plan = await _generate(
            photos,
            runtime,
            base_url=settings.base_url,
            concurrency=options.concurrency or settings.concurrency,
            budget=Budget(
                cap=options.max_images if options.max_images is not None else settings.max_images,
                default_set_size=settings.images_per_set,
                shared=Path(options.budget_file) if options.budget_file else None,
            ),
            dry_run=options.dry_run,
            listener=listener,
        )
    rows = [plan.rows[(p.source, t)] for p in photos for t in p.template_ids]
    sheet = update_report(workspace.out, rows)
    await publish_results(rows, workspace)
    log.info("report written: %s", sheet)
    return RunSummary(out=workspace.out, rows=rows, sheet=sheet, plan=plan)


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
    taken = set(known.values())
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


async def _prepare_all(photos: list[Photo], runtime: BatchRuntime) -> None:
    """Reuse earlier preparations of local files; prepare the rest in chunked task runs."""
    for photo in photos:
        path = Path(photo.source)
        if "://" not in photo.source and path.is_file():
            digest = await anyio.to_thread.run_sync(hash_file, path)
            photo.prepared = cached_preparation(
                runtime.workspace, photo.source, digest, runtime.prepare
            )
    pending = [photo for photo in photos if photo.prepared is None]
    chunks = [pending[i : i + PREPARE_CHUNK] for i in range(0, len(pending), PREPARE_CHUNK)]
    results = await asyncio.gather(
        *(prepare_photos([p.source for p in chunk], runtime) for chunk in chunks)
    )
    for chunk, prepared in zip(chunks, results, strict=True):
        for photo, result in zip(chunk, prepared, strict=True):
            photo.prepared = result


@dataclass
class _SetJob:
    photo: Photo
    template_id: int
    key: str
    sending: bool  # False: submitted earlier, only collected now


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
    """Consult the ledger, then submit and collect what is left; one row per photo+template."""
    plan = RunPlan()
    first_by_hash: dict[tuple[str, int], Photo] = {}
    jobs: list[_SetJob] = []
    duplicates: list[tuple[Photo, int, Photo]] = []
    for photo in photos:
        prepared = photo.prepared
        assert prepared is not None
        for template_id in photo.template_ids:
            if not prepared.ready or prepared.source_sha256 is None:
                plan.rows[(photo.source, template_id)] = _row(photo, template_id, None)
                continue
            original = first_by_hash.setdefault((prepared.source_sha256, template_id), photo)
            if original is not photo:
                duplicates.append((photo, template_id, original))
                continue
            key = key_for(base_url, template_id, prepared.source_sha256, runtime.prepare)
            record = runtime.ledger.read(key)
            sending = needs_submit(record, runtime.rules)
            if sending or (record is not None and record.state is SubmissionState.SUBMITTED):
                jobs.append(_SetJob(photo, template_id, key, sending))
            else:
                plan.already_done += 1
                plan.rows[(photo.source, template_id)] = _row(photo, template_id, record)
    plan.tasks = sum(1 for job in jobs if job.sending)
    plan.images = sum(budget.set_size(job.template_id) for job in jobs if job.sending)
    if dry_run or not listener.on_plan(plan):
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
        await _run_jobs(jobs, runtime, plan, budget, concurrency, listener)
    for photo, template_id, original in duplicates:
        model = plan.rows[(original.source, template_id)]
        note = f"same photo as {original.source}"
        plan.rows[(photo.source, template_id)] = model.model_copy(
            update={
                "source": photo.source,
                "item": photo.item,
                "reason": f"{note}; {model.reason}" if model.reason else note,
            }
        )
    return plan


async def _run_jobs(
    jobs: list[_SetJob],
    runtime: BatchRuntime,
    plan: RunPlan,
    budget: Budget,
    concurrency: int,
    listener: RunListener,
) -> None:
    """Every set concurrently within ``concurrency``; an interrupt stops them all."""
    listener.on_total(len(jobs))
    progress = _Progress(
        total=len(jobs), listener=listener, artifact=await ProgressArtifact.create(len(jobs))
    )
    slots = asyncio.Semaphore(concurrency)
    running = [
        asyncio.ensure_future(_one_set(job, runtime, slots, plan, budget, progress)) for job in jobs
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
    for job, future in zip(jobs, running, strict=True):
        if future.cancelled():
            row = _interrupted_row(job, runtime)
        elif (error := future.exception()) is not None:
            raise error
        else:
            row = future.result()
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
) -> ManifestRow:
    """Submit (once) and collect one photo+template, holding one of the batch's slots.

    Whatever goes wrong with one set fails that set's row, never the batch.
    """
    async with slots:
        try:
            row = await _submit_and_collect(job, runtime, plan, budget)
        except Exception as exc:
            get_run_logger().exception("set %s/%s failed", job.photo.item, job.template_id)
            record = runtime.ledger.read(job.key)
            row = _row(job.photo, job.template_id, record).model_copy(
                update={
                    "status": Status.FAILED,
                    "reason": f"unexpected error ({type(exc).__name__}: {exc}); a rerun "
                    "resumes from the ledger",
                }
            )
    try:
        await progress.advance(row)
    except Exception as exc:  # the progress artifact is a nicety, never a reason to fail
        get_run_logger().warning("progress not updated: %s", exc)
    return row


async def _submit_and_collect(
    job: _SetJob, runtime: BatchRuntime, plan: RunPlan, budget: Budget
) -> ManifestRow:
    photo, template_id = job.photo, job.template_id
    assert photo.prepared is not None
    record = runtime.ledger.read(job.key)
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
            sent = await submit_photo(job.key, photo.prepared, photo.item, template_id, runtime)
        except AccountError as exc:
            plan.stopped = plan.account_error = exc.message
            return _row(
                photo, template_id, None, status="skipped", reason=f"not submitted: {exc.message}"
            )
        finally:
            budget.settle(template_id, reserved, sent, runtime.rules.run_id)
        record = sent
    assert record is not None
    if record.state is SubmissionState.SUBMITTED:
        record = await collect(record, photo.item, runtime) or record
    return _row(photo, template_id, record)


SHARD_DEPLOYMENT = "generate-model-sets/manual"


async def run_shards(
    photos: list[Photo], options: RunOptions, workspace: Workspace, listener: RunListener
) -> RunSummary:
    """Split the batch into child runs of the manual deployment, for workers to share.

    Each shard is a JSON Lines manifest in the shared output folder; the children write
    into the same report and ledger, which is what keeps them exactly-once together.
    """
    from prefect.deployments.flow_runs import arun_deployment

    assert options.shard_size
    planned = RunPlan(tasks=sum(len(photo.template_ids) for photo in photos))
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
            out=workspace.out, rows=rows, sheet=workspace.out / INDEX_HTML, plan=planned
        )
    shard_dir = workspace.state / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    run_id = str(flow_run.get_id() or uuid.uuid4())
    child_options = options.model_copy(
        update={
            "shard_size": None,
            "out": str(workspace.out.resolve()),
            "budget_file": str((shard_dir / f"{run_id}-budget.json").resolve()),
        }
    ).model_dump(mode="json")
    manifests = []
    for index in range(0, len(photos), options.shard_size):
        path = shard_dir / f"{run_id}-{index // options.shard_size:04d}.jsonl"
        path.write_text(
            "".join(
                json.dumps({"image": p.source, "item": p.item, "template_ids": p.template_ids})
                + "\n"
                for p in photos[index : index + options.shard_size]
            ),
            encoding="utf-8",
        )
        manifests.append(path)
    listener.on_total(len(manifests))
    children = await asyncio.gather(
        *(
            arun_deployment(
                SHARD_DEPLOYMENT,
                parameters={"sources": [str(path)], "template_ids": [], "options": child_options},
                timeout=None,
            )
            for path in manifests
        )
    )
    latest = {row.row_key: row for row in read_manifest(workspace.out)}
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
    plan = RunPlan(tasks=len(children))
    failed = [child for child in children if child.state is None or not child.state.is_completed()]
    if failed:
        log = get_run_logger()
        log.warning("%d of %d shard runs did not complete", len(failed), len(children))
    await publish_results(rows, workspace)
    return RunSummary(out=workspace.out, rows=rows, sheet=workspace.out / INDEX_HTML, plan=plan)
