"""Sets paid for whose answer was lost, collected after the fact: what ``modelset settle``
and the callback flow (``collect-model-set``) share."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass

import anyio

from modelset.batch.orchestration import Orchestrator
from modelset.batch.runtime import BatchRuntime, collect, open_runtime
from modelset.ledger import LedgerRecord
from modelset.report import ManifestRow, update_report
from modelset.settings import Settings
from modelset.stages import (
    PreparedPhoto,
    PrepareOptions,
    SubmitPolicy,
    Workspace,
    adopt_task,
    open_workspace,
    row_for,
)

UNSETTLED = (
    "its task id is needed: --task ITEM/TEMPLATE=TASK_ID (HiDream's console lists the "
    "account's tasks); or rerun with --resubmit-unknown (pays twice if the task exists)"
)


@dataclass
class Settled:
    """What ``modelset settle`` did with one send whose answer was lost."""

    record: LedgerRecord
    outcome: str  # what happened, for a person


def collecting_runtime(
    settings: Settings, workspace: Workspace, orchestrator: Orchestrator
) -> contextlib.AbstractAsyncContextManager[BatchRuntime]:
    """A runtime that sends nothing: it collects sets already paid for."""
    return open_runtime(
        settings,
        workspace,
        orchestrator,
        prepare=PrepareOptions(),
        rules=SubmitPolicy(run_id=str(uuid.uuid4())),
    )


def row_of(record: LedgerRecord) -> ManifestRow:
    """The report's row of a set from its ledger record alone."""
    prepared = PreparedPhoto(
        source=record.source,
        source_sha256=record.source_sha256,
        upload_sha256=record.upload_sha256,
    )
    return row_for(
        source=record.source,
        item=record.item,
        template_id=record.template_id,
        prepared=prepared,
        record=record,
    )


async def settle_unknown(
    out: str, tasks: dict[tuple[str, int], str], orchestrator: Orchestrator
) -> list[Settled]:
    """Settle the sends of ``out`` whose answers were lost: adopt the task ``tasks`` names
    for one (``(item, template_id)`` -> task_id, as HiDream's console shows it), or find
    it by a request_id lookup proven to work, and collect its set; the others are listed.
    The report is rewritten with every set collected."""
    with open_workspace(out) as workspace:
        async with collecting_runtime(Settings(), workspace, orchestrator) as runtime:
            assert runtime.client is not None and runtime.lookup is not None
            ledger = runtime.ledger
            unknown = await ledger.run(ledger.unknown_sends)
            proven = bool(unknown) and await runtime.lookup.proven_for(ledger)
            settled: list[Settled] = []
            for record in unknown:
                task_id = tasks.get((record.item, record.template_id))
                if task_id is None and proven:
                    found = await runtime.client.find_submission(record.request_id, cause="")
                    if found is None:
                        settled.append(Settled(record, "never created: a rerun sends it"))
                        continue
                    task_id = found.task_id
                if task_id is None:
                    settled.append(Settled(record, UNSETTLED))
                    continue
                adopted = await adopt_task(runtime.client, ledger, record, task_id)
                collected = await collect(adopted, adopted.item, runtime) or adopted
                settled.append(Settled(collected, f"task {task_id}: {row_of(collected).status}"))
        rows = [row_of(s.record) for s in settled if s.record.task_id is not None]
        if rows:
            await anyio.to_thread.run_sync(update_report, workspace.store, rows)
    return settled
