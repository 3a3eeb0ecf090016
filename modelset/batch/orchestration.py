"""The seam between the batch engine and whatever runs it.

The engine (this package) plans a batch and runs it; what it asks of the thing running
it is narrow, and is all here:

================  ==============================================================
run id            the id the ledger records its claims under
log               where the run's messages go
stage             run fetch, validate or prepare over one chunk of photos
submit            run one chunk of sets (submit and collect), retried while it
                  raises :class:`SetsToRetry`; a slot per set while it sends
catalogue         the template ids the service offers
progress          a count of sets done, as it moves
publish           the run's results, once written
children          run shards of a batch, each a run of its own
events            say that the budget is spent; hear of finished tasks
token             the API token when the settings name a secret to read it from
================  ==============================================================

Two implementations: :class:`InProcess` below (plain asyncio: the tests, and any caller
without Prefect) and ``modelset.tasks.orchestration.PrefectOrchestration`` (task runs,
Prefect's result cache, artifacts, ``run_deployment``, Prefect events).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import SecretStr

from modelset._exceptions import UsageError
from modelset.catalogue import recently_fetched, remember

if TYPE_CHECKING:
    from modelset.batch.chunks import FetchItem
    from modelset.batch.runtime import BatchRuntime
    from modelset.hidream import HiDreamClient
    from modelset.report import ManifestRow
    from modelset.sources import PassedOver
    from modelset.stages import PreparedPhoto, Workspace

StageName = Literal["fetch", "validate", "prepare"]
SUBMIT_RETRY_DELAYS_S = (1.0, 5.0)  # a chunk is run at most three times


class SetsToRetry(Exception):
    """Some sets of a chunk failed in a way that is safe to repeat (the ledger makes a set
    already sent a no-op): run the chunk again, which runs only those sets."""

    def __init__(self, errors: Sequence[BaseException]) -> None:
        first = errors[0]
        super().__init__(f"{len(errors)} set(s) to retry; first: {type(first).__name__}: {first}")
        self.errors = list(errors)


class SetChunkRunner(Protocol):
    """One chunk of sets, as the engine hands it to be run: safe to run again."""

    async def run(self) -> None: ...


class Progress(Protocol):
    async def update(self, done: int) -> None: ...


class Orchestrator(Protocol):
    """What the engine asks of whatever runs it (see the module's table)."""

    def run_id(self) -> str: ...

    @property
    def log(self) -> logging.Logger | logging.LoggerAdapter[Any]: ...

    async def open(self, out: str) -> None:
        """Ready what the stages keep in the output location ``out`` (a cache of results):
        started at the beginning of a run, awaited before the first stage."""

    async def stage(
        self,
        name: StageName,
        photos: list[FetchItem] | list[PreparedPhoto],
        runtime: BatchRuntime,
        label: str,
    ) -> list[PreparedPhoto]: ...

    async def submit(self, chunk: SetChunkRunner, label: str) -> None: ...

    def set_slot(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Held by each set while it is sent (a limit shared by every run, where set)."""

    async def catalogue(self, client: HiDreamClient, results_in: str) -> list[int]: ...

    async def progress(self, total: int) -> Progress: ...

    async def publish(
        self,
        rows: list[ManifestRow],
        workspace: Workspace,
        *,
        sheet: str,
        passed_over: PassedOver,
    ) -> None: ...

    async def children(self, parameters: list[dict[str, Any]]) -> list[bool]:
        """Run each shard's parameters as a run of its own; whether each completed."""

    def announce(self, event: str, resource: dict[str, str], payload: dict[str, Any]) -> None:
        """Tell whoever listens that something happened (the budget spent)."""

    async def follow_finished_tasks(self, wake: Callable[[str], None]) -> None:
        """Call ``wake(task_id)`` as callbacks say tasks finished, until cancelled."""

    async def secret(self, name: str) -> SecretStr:
        """The token kept under ``name`` (``HIDREAM_API_TOKEN_BLOCK``)."""


async def run_with_retries(chunk: SetChunkRunner) -> None:
    """Run a chunk, and again after each delay while it asks to be retried."""
    for delay in (*SUBMIT_RETRY_DELAYS_S, None):
        try:
            await chunk.run()
            return
        except SetsToRetry:
            if delay is None:
                raise
            await asyncio.sleep(delay)


class _NoProgress:
    async def update(self, done: int) -> None:
        return None


class InProcess:
    """Runs a batch in this process with plain asyncio: no server, no task runs, no cache
    of stage results (the ledger and the uploads kept in the output location still make
    a rerun pay and prepare nothing again)."""

    def __init__(self, log: logging.Logger | None = None) -> None:
        self._run_id = str(uuid.uuid4())
        self._log = log or logging.getLogger("modelset.batch")

    def run_id(self) -> str:
        return self._run_id

    @property
    def log(self) -> logging.Logger:
        return self._log

    async def open(self, out: str) -> None:
        return None

    async def stage(
        self,
        name: StageName,
        photos: list[FetchItem] | list[PreparedPhoto],
        runtime: BatchRuntime,
        label: str,
    ) -> list[PreparedPhoto]:
        from modelset.batch.chunks import STAGES

        return await STAGES[name](photos, runtime)

    async def submit(self, chunk: SetChunkRunner, label: str) -> None:
        await run_with_retries(chunk)

    def set_slot(self) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    async def catalogue(self, client: HiDreamClient, results_in: str) -> list[int]:
        known = recently_fetched(client.base_url)
        if known is None:
            known = sorted(template.id for template in await client.list_templates())
            remember(client.base_url, known)
        return known

    async def progress(self, total: int) -> Progress:
        return _NoProgress()

    async def publish(
        self,
        rows: list[ManifestRow],
        workspace: Workspace,
        *,
        sheet: str,
        passed_over: PassedOver,
    ) -> None:
        return None  # the report in the output location is the whole record

    async def children(self, parameters: list[dict[str, Any]]) -> list[bool]:
        from modelset.batch.engine import run_batch
        from modelset.options import RunOptions

        completed = []
        for given in parameters:
            child = InProcess(self._log)
            summary = await run_batch(
                given["sources"],
                given["template_ids"],
                RunOptions.model_validate(given["options"]),
                child,
            )
            completed.append(not summary.failed)
        return completed

    def announce(self, event: str, resource: dict[str, str], payload: dict[str, Any]) -> None:
        self._log.info("%s: %s", event, payload)

    async def follow_finished_tasks(self, wake: Callable[[str], None]) -> None:
        return None  # polling finds every result

    async def secret(self, name: str) -> SecretStr:
        raise UsageError(
            f"HIDREAM_API_TOKEN_BLOCK names the Prefect Secret block {name!r}, which only a "
            "run under Prefect can read: set HIDREAM_API_TOKEN instead"
        )
