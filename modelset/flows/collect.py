"""``collect_model_set``: download one finished task's set, started by its callback event.

It handles only tasks no running batch is waiting on: a batch holds each set's
collection lock while it waits, and this flow leaves such a set to it. On a folder the
lock is a ``flock``, which only a live batch can hold. On a bucket it is a lease, which a
batch that died keeps until it expires: there the flow waits for the lock instead, and
then finds the set either collected by the live batch or still to collect.
"""

from __future__ import annotations

from typing import Any

import anyio
from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.states import Completed, Failed

from modelset.batch import collect
from modelset.batch.settle import collecting_runtime, row_of
from modelset.flows.generate import output_location
from modelset.ledger import SubmissionState
from modelset.report import Status, update_report
from modelset.settings import Settings
from modelset.stages import adopt_task, open_workspace
from modelset.tasks.orchestration import PrefectOrchestration


@flow(name="collect-model-set", persist_result=False, log_prints=False)
async def collect_model_set(
    task_id: str, out: str | None = None, request_id: str | None = None
) -> State[Any]:
    """Download the set of ``task_id`` into the report of the run that submitted it.

    Args:
        task_id: the HiDream task whose callback arrived.
        out: the output location of the submitting run, as its callback URL names it
            (default: HIDREAM_OUTPUT_DIR).
        request_id: the request_id the task was sent with, as its callback names it: the
            ledger knows a send whose answer was lost by that alone.
    """
    settings = Settings()
    log = get_run_logger()
    location = output_location(out or settings.output_dir, setting="out")
    with open_workspace(location) as workspace:
        async with collecting_runtime(settings, workspace, PrefectOrchestration()) as runtime:
            ledger = runtime.ledger
            record = await ledger.run(ledger.find_by_task, task_id)
            if record is None and request_id:
                lost = await ledger.run(ledger.find_by_request_id, request_id)
                if lost is not None and runtime.client is not None:
                    record = await adopt_task(runtime.client, ledger, lost, task_id)
                    log.info("task %s is the lost answer of send %s", task_id, request_id)
            if record is None:
                return Completed(message=f"task {task_id} was not submitted from {workspace.out}")
            if record.task_id != task_id:
                return Completed(message=f"task {task_id} was superseded by a newer attempt")
            if record.state is not SubmissionState.SUBMITTED:
                return Completed(message=f"task {task_id} was collected already")
            collected = await collect(
                record, record.item, runtime, wait_for_others=not workspace.store.is_local
            )
        if collected is None:
            return Completed(message=f"a running batch is collecting task {task_id}")
        row = row_of(collected)
        sheet = await anyio.to_thread.run_sync(update_report, workspace.store, [row])
    log.info("task %s: %s, %d images", task_id, row.status.value, len(row.outputs))
    if row.status is Status.SUCCEEDED:
        return Completed(
            message=f"task {task_id}: {len(row.outputs)} images downloaded; report: {sheet}"
        )
    return Failed(message=f"task {task_id}: {row.status.value} ({row.reason})")
