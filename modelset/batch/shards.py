"""A batch split into shards: child runs, each of a manifest in the output location, that
write into the same report and ledger (which is what keeps them exactly-once together)."""

from __future__ import annotations

import json

import anyio

from modelset import layout
from modelset.batch.orchestration import Orchestrator
from modelset.batch.photos import Photo
from modelset.batch.summary import RunListener, RunPlan, RunSummary
from modelset.options import RunOptions
from modelset.report import (
    ManifestRow,
    Status,
    read_manifest,
    remember_passed_over,
)
from modelset.review import pending_among
from modelset.settings import Settings
from modelset.sources import PassedOver
from modelset.stages import Workspace
from modelset.storage import locate, read_or_none


def shard_prefix(parent_run_id: str) -> str:
    """Where a sharded run keeps its child manifests, shared budget and account error."""
    return f"{layout.SHARDS}/{parent_run_id}"


async def run_shards(
    photos: list[Photo],
    options: RunOptions,
    workspace: Workspace,
    orchestrator: Orchestrator,
    listener: RunListener,
    passed_over: PassedOver,
) -> RunSummary:
    """Split the batch into child runs (under Prefect, of the manual deployment, for
    workers to share), then report what they did."""
    assert options.shard_size
    planned = RunPlan(
        tasks=sum(len(photo.template_ids) for photo in photos), passed_over=passed_over
    )
    planned.images = planned.tasks * Settings().images_per_set  # at most; done ones are free
    if not listener.on_plan(planned):
        return _refused(photos, workspace, planned)
    await anyio.to_thread.run_sync(remember_passed_over, workspace.store, passed_over)
    run_id = orchestrator.run_id()
    child_options = options.model_copy(
        update={"shard_size": None, "out": workspace.out, "shard_of": run_id}
    ).model_dump(mode="json")
    manifests = _write_manifests(photos, options.shard_size, workspace, run_id)
    listener.on_total(len(manifests))
    completed = await orchestrator.children(
        [{"sources": [path], "template_ids": [], "options": child_options} for path in manifests]
    )
    rows = _rows_of(photos, workspace)
    plan = RunPlan(tasks=len(completed), passed_over=passed_over)
    account = read_or_none(workspace.store, f"{shard_prefix(run_id)}/{layout.SHARD_ACCOUNT_ERROR}")
    if account is not None:
        plan.account_error = account.data.decode("utf-8")
    if not all(completed):
        failed = completed.count(False)
        orchestrator.log.warning("%d of %d shard runs did not complete", failed, len(completed))
    sheet = locate(workspace.store, layout.INDEX_HTML)
    await orchestrator.publish(rows, workspace, sheet=sheet, passed_over=passed_over)
    pending = (
        await anyio.to_thread.run_sync(
            pending_among, workspace.store, [row.task_id for row in rows if row.task_id]
        )
        if options.review
        else []
    )
    return RunSummary.written(workspace, rows, sheet, plan, pending)


def _refused(photos: list[Photo], workspace: Workspace, planned: RunPlan) -> RunSummary:
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
    sheet = locate(workspace.store, layout.INDEX_HTML)
    return RunSummary(out=workspace.out, rows=rows, sheet=sheet, plan=planned)


def _write_manifests(
    photos: list[Photo], size: int, workspace: Workspace, run_id: str
) -> list[str]:
    """Each shard's photos as a JSON Lines manifest in the output location."""
    manifests = []
    for index in range(0, len(photos), size):
        key = f"{shard_prefix(run_id)}/{index // size:04d}.jsonl"
        text = "".join(
            json.dumps({"image": p.source, "item": p.item, "template_ids": p.template_ids}) + "\n"
            for p in photos[index : index + size]
        )
        workspace.store.write(key, text.encode("utf-8"))
        manifests.append(locate(workspace.store, key))
    return manifests


def _rows_of(photos: list[Photo], workspace: Workspace) -> list[ManifestRow]:
    """Each set's row as the report has it now, in the batch's order."""
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
    return rows
