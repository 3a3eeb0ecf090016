"""What the sets of one run share: clients, the ledger, the output location, limits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
from pydantic import SecretStr

from modelset._exceptions import MissingTokenError
from modelset.batch.orchestration import Orchestrator
from modelset.budget import BudgetLeft, PeriodBudget
from modelset.credentials import client_from_settings
from modelset.hidream import HiDreamClient
from modelset.labels import Labelling, labelling_from_settings
from modelset.ledger import Ledger, LedgerRecord, Listing, open_ledger
from modelset.ledger.proof import RequestIdLookup
from modelset.memory import limit_malloc_arenas
from modelset.settings import Settings
from modelset.stages import PrepareOptions, SubmitPolicy, Workspace, collect_once

TASK_FINISHED_EVENT = "hidream.task.finished"
BUDGET_EXHAUSTED_EVENT = "modelset.budget.exhausted"
TASK_RESOURCE_PREFIX = "hidream.task."


@dataclass
class BatchRuntime:
    """What one run's stages and sets share; never persisted (stage caches key on what
    they are given, never on this)."""

    client: HiDreamClient | None
    downloads: httpx.AsyncClient
    ledger: Ledger
    workspace: Workspace
    prepare: PrepareOptions
    rules: SubmitPolicy
    orchestrator: Orchestrator
    labelling: Labelling  # what every stored image says of itself
    notify_url: SecretStr | None = None  # carries the callback secret
    deadline_s: float | None = None
    wakeups: dict[str, asyncio.Event] = field(default_factory=dict)
    # What planning learnt of the ledger: the records it read (None: absent), and on a
    # bucket the listing that spared reading absent ones (see ``Ledger.listing``).
    planned: dict[str, LedgerRecord | None] = field(default_factory=dict)
    listing: Listing | None = None
    listed: bool = False
    lookup: RequestIdLookup | None = None  # whether lost answers may be looked up
    budget: PeriodBudget | None = None  # HIDREAM_BUDGET_IMAGES, shared by every run

    async def ledger_listing(self, wanted: int) -> Listing | None:
        """The run's listing of the ledger, taken once, when first wanted."""
        if not self.listed:
            self.listed = True
            self.listing = await self.ledger.run(self.ledger.listing, wanted)
        return self.listing

    def wake(self, task_id: str) -> None:
        """A callback said ``task_id`` finished: its waiting set looks now."""
        if (event := self.wakeups.get(task_id)) is not None:
            event.set()


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings,
    workspace: Workspace,
    orchestrator: Orchestrator,
    *,
    prepare: PrepareOptions,
    rules: SubmitPolicy,
    deadline_s: float | None = None,
    concurrency: int | None = None,
    need_client: bool = True,
) -> AsyncIterator[BatchRuntime]:
    """The clients and ledger of one run, closed when it ends.

    Without a token and with ``need_client`` False (a dry run), there is no API client.
    With a callback receiver configured, finished tasks wake their sets' waits at once.
    """
    limit_malloc_arenas()  # before the run's worker threads exist
    client: HiDreamClient | None = None
    if concurrency is not None:  # the connection pool follows the run's concurrency
        settings = settings.model_copy(update={"concurrency": concurrency})
    try:
        client = await client_from_settings(settings, orchestrator.secret)
    except MissingTokenError:
        if need_client:
            raise
    labelling = await labelling_from_settings(settings, orchestrator.secret)
    async with _downloads(settings) as downloads:
        runtime = BatchRuntime(
            client=client,
            downloads=downloads,
            ledger=open_ledger(workspace.store, lease_s=settings.ledger_lease),
            workspace=workspace,
            prepare=prepare,
            rules=rules,
            orchestrator=orchestrator,
            labelling=labelling,
            notify_url=SecretStr(url) if (url := settings.notify_url(workspace.out)) else None,
            deadline_s=deadline_s,
            lookup=RequestIdLookup(client, workspace.store, enabled=settings.lookup_by_request_id)
            if client is not None
            else None,
            budget=period_budget(settings, workspace, orchestrator),
        )
        async with _following_callbacks(runtime), _lookup_started(runtime):
            try:
                yield runtime
            finally:
                if client is not None:
                    await client.aclose()


def _downloads(settings: Settings) -> httpx.AsyncClient:
    # Every set in flight downloads: connections kept for all of them (httpx keeps 20 by
    # default, and reconnecting costs CPU on every image past that).
    connections = max(16, 2 * settings.concurrency)
    return httpx.AsyncClient(
        timeout=settings.read_timeout,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


@contextlib.asynccontextmanager
async def _lookup_started(runtime: BatchRuntime) -> AsyncIterator[None]:
    if runtime.lookup is not None:
        runtime.lookup.start()
    try:
        yield
    finally:
        if runtime.lookup is not None:
            runtime.lookup.stop()


@contextlib.asynccontextmanager
async def _following_callbacks(runtime: BatchRuntime) -> AsyncIterator[None]:
    """Where a callback receiver is configured, follow its news of finished tasks."""
    if runtime.notify_url is None or runtime.client is None:
        yield
        return
    listener = asyncio.create_task(runtime.orchestrator.follow_finished_tasks(runtime.wake))
    try:
        yield
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


async def collect(
    record: LedgerRecord,
    item: str,
    runtime: BatchRuntime,
    *,
    wait_for_others: bool = True,
    just_sent: bool = False,
) -> LedgerRecord | None:
    """Wait for and download one submitted set (plain code, part of its chunk's run; the
    client retries its reads itself)."""
    assert runtime.client is not None
    return await collect_once(
        runtime.client,
        runtime.downloads,
        runtime.ledger,
        record,
        workspace=runtime.workspace,
        labelling=runtime.labelling,
        item=item,
        deadline_s=runtime.deadline_s,
        wakeups=runtime.wakeups,
        wait_for_others=wait_for_others,
        just_sent=just_sent,
        budget=runtime.budget,
    )


def period_budget(
    settings: Settings, workspace: Workspace, orchestrator: Orchestrator
) -> PeriodBudget | None:
    """The budget across runs the settings ask for, kept in the output location; its
    first refusal in a period announces ``modelset.budget.exhausted``."""
    budget = PeriodBudget.from_settings(settings, workspace.store)
    if budget is None:
        return budget
    out = workspace.store.url

    async def exhausted(left: BudgetLeft) -> None:
        orchestrator.announce(
            BUDGET_EXHAUSTED_EVENT,
            {"prefect.resource.id": f"modelset.budget.{left.period.name}", "modelset.out": out},
            {
                "out": out,
                "limit": left.limit,
                "period": left.period.kind,
                "resets": left.period.resets.isoformat(),
            },
        )

    budget.exhausted = exhausted
    return budget
