"""Planning a batch: what the ledger already holds, what is left to send or collect, and
what a person is shown before anything is paid for."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from modelset.batch.jobs import ChunkGate, SetJob, UploadChecks
from modelset.batch.looks import LookChecks, without_near_duplicates
from modelset.batch.photos import Photo, prepared
from modelset.batch.rows import paid_row, photo_upload_key, sameness, set_row, with_paid_sets
from modelset.batch.runtime import BatchRuntime
from modelset.batch.sets import run_jobs
from modelset.batch.summary import RunListener, RunPlan
from modelset.budget import Budget
from modelset.catalogue import check_known
from modelset.ledger import LedgerRecord, SubmissionState
from modelset.stages import key_for, needs_submit


@dataclass
class Wanted:
    """The sets of a batch to look up in the ledger, once same photos are set aside."""

    sets: list[tuple[Photo, int, str]] = field(default_factory=list)  # photo, template, key
    duplicates: list[tuple[Photo, int, Photo]] = field(default_factory=list)
    first_by_upload: dict[tuple[str, int], Photo] = field(default_factory=dict)


@dataclass
class Jobs:
    """What is left to do once the ledger is read, and the rows of what is done."""

    jobs: list[SetJob] = field(default_factory=list)
    done: list[tuple[Photo, int, LedgerRecord | None, str]] = field(default_factory=list)


async def generate(
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
    checks that need the prepared upload are made then (``when_prepared``). A dry run,
    or a batch with remote sources, plans once everything is prepared.
    """
    plan = RunPlan(dry=dry_run)
    if dry_run or not all(p.prepared is not None or p.sha256 for p in photos):
        await prepared(photos)
    wanted = _wanted(photos, plan, runtime, base_url)
    left = await _left_to_do(wanted, runtime, plan, base_url)
    looks = LookChecks(runtime)
    jobs = await without_near_duplicates(left.jobs, looks, plan)
    plan.budget_left = await budget_left(runtime)
    plan.tasks = sum(1 for job in jobs if job.sending)  # at most: see when_prepared
    sizes = {t: budget.set_size(t) for t in {job.template_id for job in jobs if job.sending}}
    plan.images = sum(sizes[job.template_id] for job in jobs if job.sending)
    if dry_run or not listener.on_plan(plan):
        await prepared(photos)
        _planned_rows(jobs, plan)
    elif jobs:
        await _check_templates(jobs, runtime)
        gate = ChunkGate(jobs)
        checks = UploadChecks(base_url, wanted.first_by_upload, wanted.duplicates, looks, gate)
        await run_jobs(jobs, runtime, plan, budget, concurrency, listener, checks)
        if plan.tasks:  # what is left after this run's sets
            plan.budget_left = await budget_left(runtime)
    await prepared(photos)
    _rows_of_the_rest(left, wanted, plan)
    return plan


def _wanted(photos: list[Photo], plan: RunPlan, runtime: BatchRuntime, base_url: str) -> Wanted:
    """Each photo+template's ledger key, the first photo of each source hash and upload
    taken (the others are duplicates); a photo that could not be prepared has its row."""
    wanted = Wanted()
    first_by_hash: dict[tuple[str, int], Photo] = {}
    for photo in photos:
        ready = photo.prepared
        if ready is not None and (not ready.ready or ready.source_sha256 is None):
            for template_id in photo.template_ids:
                plan.rows[(photo.source, template_id)] = set_row(photo, template_id, None)
            continue
        digest = ready.source_sha256 if ready is not None else photo.sha256
        assert digest is not None
        for template_id in photo.template_ids:
            original = first_by_hash.setdefault((digest, template_id), photo)
            if original is photo and ready is not None and ready.upload_sha256:
                upload = (ready.upload_sha256, template_id)
                original = wanted.first_by_upload.setdefault(upload, photo)
            if original is not photo:
                wanted.duplicates.append((photo, template_id, original))
                continue
            key = key_for(base_url, template_id, digest, runtime.prepare)
            wanted.sets.append((photo, template_id, key))
    return wanted


async def _left_to_do(wanted: Wanted, runtime: BatchRuntime, plan: RunPlan, base_url: str) -> Jobs:
    """The sets to send, or to collect (sent earlier), from their ledger records."""
    records, paid_under = await _records(wanted, runtime, base_url)
    left = Jobs()
    for photo, template_id, key in wanted.sets:
        record = records[key]
        sending = needs_submit(record, runtime.rules)
        paid_as = paid_under.get(key)
        if paid_as is not None:
            record, sending = records[paid_as], False
        if sending or (record is not None and record.state is SubmissionState.SUBMITTED):
            unprepared = photo.prepared is None
            left.jobs.append(
                SetJob(photo, template_id, key, sending, paid_as, unprepared, record is None)
            )
        else:
            plan.already_done += 1
            left.done.append((photo, template_id, record, key))
    return left


async def _records(
    wanted: Wanted, runtime: BatchRuntime, base_url: str
) -> tuple[dict[str, LedgerRecord | None], dict[str, str]]:
    """The wanted keys' records (those read while preparing was planned are not read
    twice) with the records of the keys their uploads were paid under, and which key
    each key never sent was paid under (the same picture, other bytes)."""
    ledger = runtime.ledger
    keys = [key for _, _, key in wanted.sets]
    records = {key: runtime.planned[key] for key in keys if key in runtime.planned}
    unread = [key for key in keys if key not in records]
    listed = await runtime.ledger_listing(len(unread))
    records.update(await anyio.to_thread.run_sync(ledger.read_many, unread, listed))
    uploads = {
        key: photo_upload_key(photo, template_id, base_url, runtime.prepare)
        for photo, template_id, key in wanted.sets
        if records[key] is None and not runtime.rules.refresh and photo.prepared is not None
    }
    owners = await anyio.to_thread.run_sync(ledger.upload_owners, uploads.values(), listed)
    paid_under = {
        key: owner
        for key, upload in uploads.items()
        if (owner := owners[upload]) not in (None, key)
    }
    records.update(await anyio.to_thread.run_sync(ledger.read_many, set(paid_under.values())))
    return records, paid_under


async def budget_left(runtime: BatchRuntime) -> str | None:
    """What the budget across runs has left, where one is set."""
    if runtime.budget is None:
        return None
    left = await anyio.to_thread.run_sync(runtime.budget.left)
    return left.describe()


async def _check_templates(jobs: list[SetJob], runtime: BatchRuntime) -> None:
    """Refuse template ids the catalogue does not list; only when something is sent: a
    rerun with every set done asks nothing."""
    sent = sorted({job.template_id for job in jobs if job.sending})
    if runtime.client is not None and sent:
        known = await runtime.orchestrator.catalogue(runtime.client, runtime.workspace.out)
        check_known(sent, known)


def _planned_rows(jobs: list[SetJob], plan: RunPlan) -> None:
    """A dry run's (or a refused plan's) rows: what a real run would do."""
    for job in jobs:
        if plan.refused:
            reason = plan.refused
        elif job.sending:
            reason = "would be submitted"
        else:
            reason = "submitted earlier; a real run collects it"
        row = set_row(job.photo, job.template_id, None, status="planned", reason=reason)
        plan.rows[(job.photo.source, job.template_id)] = row


def _rows_of_the_rest(left: Jobs, wanted: Wanted, plan: RunPlan) -> None:
    """The rows of sets done before this run, and of duplicates (their original's)."""
    for photo, template_id, record, key in left.done:
        plan.rows[(photo.source, template_id)] = paid_row(photo, template_id, record, key)
    for photo, template_id, original in wanted.duplicates:
        model = plan.rows[(original.source, template_id)]
        note = f"{sameness(photo, original)} as {original.source}"
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
    with_paid_sets(plan.rows)
