"""The batch engine: planning, preparation, near-duplicates, set jobs, budgets and
shards, driven through an :class:`Orchestrator` (``InProcess`` here, Prefect in
``modelset.tasks``). Nothing in this package imports Prefect."""

from modelset.batch.engine import run_batch
from modelset.batch.orchestration import (
    InProcess,
    Orchestrator,
    SetsToRetry,
    StageName,
)
from modelset.batch.photos import chunk_bounds
from modelset.batch.runtime import (
    BUDGET_EXHAUSTED_EVENT,
    TASK_FINISHED_EVENT,
    TASK_RESOURCE_PREFIX,
    BatchRuntime,
    collect,
    open_runtime,
)
from modelset.batch.summary import RunListener, RunPlan, RunSummary

__all__ = [
    "BUDGET_EXHAUSTED_EVENT",
    "TASK_FINISHED_EVENT",
    "TASK_RESOURCE_PREFIX",
    "BatchRuntime",
    "InProcess",
    "Orchestrator",
    "RunListener",
    "RunPlan",
    "RunSummary",
    "SetsToRetry",
    "StageName",
    "chunk_bounds",
    "collect",
    "open_runtime",
    "run_batch",
]
