"""What the tasks of one batch share: clients, the ledger, the output folder, limits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx

from modelset.hidream import HiDreamClient
from modelset.ledger import Ledger
from modelset.stages import PrepareOptions, SubmitPolicy, Workspace


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
    notify_url: str | None = None
    deadline_s: float | None = None
    wakeups: dict[str, asyncio.Event] = field(default_factory=dict)
