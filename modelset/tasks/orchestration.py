"""The engine's orchestrator under Prefect: stages and submit chunks as task runs (the
stages cached in the output location), artifacts, shards as runs of the manual
deployment, Prefect events, and Secret blocks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from prefect import get_run_logger
from prefect.concurrency.asyncio import concurrency
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote
from pydantic import SecretStr

from modelset.batch import (
    TASK_FINISHED_EVENT,
    TASK_RESOURCE_PREFIX,
    BatchRuntime,
    StageName,
)
from modelset.batch.chunks import FetchItem
from modelset.batch.orchestration import Progress, SetChunkRunner
from modelset.hidream import HiDreamClient
from modelset.report import ManifestRow
from modelset.sources import PassedOver
from modelset.stages import PreparedPhoto, Workspace
from modelset.tasks.artifacts import ProgressArtifact, publish_results
from modelset.tasks.catalogue import template_ids
from modelset.tasks.credentials import read_secret_block
from modelset.tasks.photos import STAGE_TASKS
from modelset.tasks.results import OutputLocationResults, results_storage
from modelset.tasks.submission import submit_sets

SHARD_DEPLOYMENT = "generate-model-sets/manual"
log = logging.getLogger("modelset.orchestration")


class PrefectOrchestration:
    """Runs the engine's work as Prefect task runs of the current flow run."""

    def __init__(self, concurrency_limit: str | None = None) -> None:
        self._run_id = str(flow_run.get_id() or uuid.uuid4())
        self._concurrency_limit = concurrency_limit
        self._storage: OutputLocationResults | None = None

    def run_id(self) -> str:
        return self._run_id

    @property
    def log(self) -> logging.Logger | logging.LoggerAdapter[Any]:
        return get_run_logger()

    async def open(self, out: str) -> None:
        # Saving the result storage block takes a few API round trips.
        self._storage = await results_storage(out)

    async def stage(
        self,
        name: StageName,
        photos: list[FetchItem] | list[PreparedPhoto],
        runtime: BatchRuntime,
        label: str,
    ) -> list[PreparedPhoto]:
        assert self._storage is not None, "opened before the first stage"
        stage = STAGE_TASKS[name].with_options(result_storage=self._storage)
        return await stage(photos, runtime, label)

    async def submit(self, chunk: SetChunkRunner, label: str) -> None:
        # Quoted: Prefect would otherwise search the chunk's sets for upstream results.
        await submit_sets(quote(chunk), label)  # type: ignore[call-overload]

    def set_slot(self) -> contextlib.AbstractAsyncContextManager[None]:
        if not self._concurrency_limit:
            return contextlib.nullcontext()
        return _slot(self._concurrency_limit)

    async def catalogue(self, client: HiDreamClient, results_in: str) -> list[int]:
        return await template_ids(client, results_in=results_in)

    async def progress(self, total: int) -> Progress:
        return await ProgressArtifact.create(total)

    async def publish(
        self,
        rows: list[ManifestRow],
        workspace: Workspace,
        *,
        sheet: str,
        passed_over: PassedOver,
    ) -> None:
        await publish_results(rows, workspace, sheet=sheet, passed_over=passed_over)

    async def children(self, parameters: list[dict[str, Any]]) -> list[bool]:
        from prefect.deployments.flow_runs import arun_deployment

        runs = await asyncio.gather(
            *(
                arun_deployment(SHARD_DEPLOYMENT, parameters=given, timeout=None)
                for given in parameters
            )
        )
        return [run.state is not None and run.state.is_completed() for run in runs]

    def announce(self, event: str, resource: dict[str, str], payload: dict[str, Any]) -> None:
        from prefect.events import emit_event

        emit_event(event=event, resource=resource, payload=payload)

    async def follow_finished_tasks(self, wake: Callable[[str], None]) -> None:
        """Follow the callback receiver's events so a waiting set is fetched at once."""
        from prefect.events.clients import get_events_subscriber
        from prefect.events.filters import EventFilter, EventNameFilter

        event_filter = EventFilter(event=EventNameFilter(name=[TASK_FINISHED_EVENT]))
        try:
            async with get_events_subscriber(filter=event_filter) as subscriber:
                async for event in subscriber:
                    wake(event.resource.id.removeprefix(TASK_RESOURCE_PREFIX))
        except Exception as exc:  # polling still finds every result
            log.warning("not following callback events (%s); polling only", type(exc).__name__)

    async def secret(self, name: str) -> SecretStr:
        return await read_secret_block(name)


@contextlib.asynccontextmanager
async def _slot(limit: str) -> AsyncIterator[None]:
    async with concurrency(limit, strict=True):
        yield
