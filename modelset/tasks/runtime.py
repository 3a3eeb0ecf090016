"""What the tasks of one flow run share: clients, the ledger, the output location, limits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from typing import cast

import httpx
from prefect.utilities.annotations import quote
from pydantic import SecretStr

from modelset.budget import BudgetLeft, PeriodBudget
from modelset.credentials import client_from_settings
from modelset.hidream import HiDreamClient
from modelset.ledger import Ledger, LedgerRecord, Listing, open_ledger
from modelset.ledger.proof import RequestIdLookup
from modelset.memory import limit_malloc_arenas
from modelset.settings import MissingTokenError, Settings
from modelset.stages import PrepareOptions, SubmitPolicy, Workspace, collect_once
from modelset.storage import Store
from modelset.tasks.events import recording_final_states

TASK_FINISHED_EVENT = "hidream.task.finished"
BUDGET_EXHAUSTED_EVENT = "modelset.budget.exhausted"
TASK_RESOURCE_PREFIX = "hidream.task."

log = logging.getLogger("modelset.runtime")


@dataclass
class BatchRuntime:
    """Passed to the tasks of one flow run; never persisted (tasks use NO_CACHE)."""

    client: HiDreamClient | None
    downloads: httpx.AsyncClient
    ledger: Ledger
    workspace: Workspace
    prepare: PrepareOptions
    rules: SubmitPolicy
    concurrency_limit: str | None = None
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


def unsearched(runtime: BatchRuntime) -> BatchRuntime:
    """The runtime as a task argument Prefect does not search for upstream results.

    Prefect links a task run to every earlier result whose objects its arguments hold;
    each submit's record holds this run's id, which the runtime holds too, so every
    submit would be drawn as fed by all the submits before it (and the search costs CPU).
    """
    return cast(BatchRuntime, quote(runtime))


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings,
    workspace: Workspace,
    *,
    prepare: PrepareOptions,
    rules: SubmitPolicy,
    deadline_s: float | None = None,
    concurrency: int | None = None,
    need_client: bool = True,
) -> AsyncIterator[BatchRuntime]:
    """The clients and ledger of one flow run, closed when it ends.

    Without a token and with ``need_client`` False (a dry run), there is no API client.
    With a callback receiver configured, finished-task events wake the waits at once.
    """
    limit_malloc_arenas()  # before the run's worker threads exist
    client: HiDreamClient | None = None
    if concurrency is not None:  # the connection pool follows the run's concurrency
        settings = settings.model_copy(update={"concurrency": concurrency})
    try:
        client = await client_from_settings(settings)
    except MissingTokenError:
        if need_client:
            raise
    async with (
        httpx.AsyncClient(
            timeout=settings.read_timeout,
            # Every set in flight downloads: connections kept for all of them (httpx keeps
            # 20 by default, and reconnecting costs CPU on every image past that).
            limits=httpx.Limits(
                max_connections=max(16, 2 * settings.concurrency),
                max_keepalive_connections=max(16, 2 * settings.concurrency),
            ),
        ) as downloads,
        _final_states(settings),
    ):
        runtime = BatchRuntime(
            client=client,
            downloads=downloads,
            ledger=open_ledger(workspace.store, lease_s=settings.ledger_lease),
            workspace=workspace,
            prepare=prepare,
            rules=rules,
            concurrency_limit=settings.concurrency_limit,
            notify_url=SecretStr(url) if (url := settings.notify_url(workspace.out)) else None,
            deadline_s=deadline_s,
            lookup=RequestIdLookup(client, workspace.store, enabled=settings.lookup_by_request_id)
            if client is not None
            else None,
            budget=period_budget(settings, workspace.store),
        )
        if runtime.lookup is not None:
            runtime.lookup.start()
        listener = (
            asyncio.create_task(_wake_on_callbacks(runtime))
            if runtime.notify_url and client is not None
            else None
        )
        try:
            yield runtime
        finally:
            if runtime.lookup is not None:
                runtime.lookup.stop()
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
            if client is not None:
                await client.aclose()


@contextlib.asynccontextmanager
async def _final_states(settings: Settings) -> AsyncIterator[None]:
    with recording_final_states(settings.task_run_events == "final"):
        yield


async def _wake_on_callbacks(runtime: BatchRuntime) -> None:
    """Follow the receiver's events so a waiting set is fetched as soon as it is done."""
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter

    event_filter = EventFilter(event=EventNameFilter(name=[TASK_FINISHED_EVENT]))
    try:
        async with get_events_subscriber(filter=event_filter) as subscriber:
            async for event in subscriber:
                task_id = event.resource.id.removeprefix(TASK_RESOURCE_PREFIX)
                wake = runtime.wakeups.get(task_id)
                if wake is not None:
                    wake.set()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # polling still finds every result
        log.warning("not following callback events (%s); polling only", type(exc).__name__)


async def collect(
    record: LedgerRecord,
    item: str,
    runtime: BatchRuntime,
    *,
    wait_for_others: bool = True,
    just_sent: bool = False,
) -> LedgerRecord | None:
    """Wait for and download one submitted set (plain code, not a task run: see
    docs/performance.md; the client retries its reads itself)."""
    assert runtime.client is not None
    return await collect_once(
        runtime.client,
        runtime.downloads,
        runtime.ledger,
        record,
        workspace=runtime.workspace,
        item=item,
        deadline_s=runtime.deadline_s,
        wakeups=runtime.wakeups,
        wait_for_others=wait_for_others,
        just_sent=just_sent,
        budget=runtime.budget,
    )


def period_budget(settings: Settings, store: Store) -> PeriodBudget | None:
    """The budget across runs the settings ask for, kept in the output location; its
    first refusal in a period emits ``modelset.budget.exhausted``."""
    budget = PeriodBudget.from_settings(settings, store)
    if budget is not None:
        budget.exhausted = partial(announce_exhausted, store.url)
    return budget


async def announce_exhausted(out: str, left: BudgetLeft) -> None:
    """Tell automations that the period's budget is spent, once per period."""
    from prefect.events import emit_event

    emit_event(
        event=BUDGET_EXHAUSTED_EVENT,
        resource={
            "prefect.resource.id": f"modelset.budget.{left.period.name}",
            "modelset.out": out,
        },
        payload={
            "out": out,
            "limit": left.limit,
            "period": left.period.kind,
            "resets": left.period.resets.isoformat(),
        },
    )
