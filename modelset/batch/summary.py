"""What a run found, planned and did, and the hooks a caller watches it through."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from modelset import layout
from modelset.batch.orchestration import Progress
from modelset.report import ManifestRow, Status, not_collected_notice
from modelset.review import Decision
from modelset.sources import PassedOver
from modelset.stages import Workspace
from modelset.storage import Store

REPORT_LINK_VALIDITY = timedelta(days=7)
THUMBNAIL_ROWS = 200  # the sets the summary pictures, the first of the batch


def report_link(store: Store) -> str | None:
    """A link to ``index.html`` valid for seven days, where the store can sign one."""
    return store.presign(layout.INDEX_HTML, REPORT_LINK_VALIDITY)


@dataclass
class RunPlan:
    """What a run found, planned and did; filled in as it goes."""

    rows: dict[tuple[str, int], ManifestRow] = field(default_factory=dict)
    tasks: int = 0  # tasks the run submits (or, dry, would submit)
    images: int = 0  # ... and the images they generate at most
    already_done: int = 0
    dry: bool = False  # planned only: nothing was to be submitted
    refused: str | None = None  # the plan was not confirmed: why
    budget_left: str | None = None  # what the budget across runs has left, if one is set
    stopped: str | None = None  # submitting stopped mid-run: why
    account_error: str | None = None
    passed_over: PassedOver = field(default_factory=PassedOver)  # files the scan did not take


@dataclass
class RunSummary:
    out: str  # the output location: a folder or s3://bucket/prefix
    rows: list[ManifestRow]
    sheet: str  # where index.html is
    plan: RunPlan
    link: str | None = None  # an https link to index.html, where the store can sign one
    pending: list[Decision] = field(default_factory=list)  # sets waiting for review

    @classmethod
    def written(
        cls,
        workspace: Workspace,
        rows: list[ManifestRow],
        sheet: str,
        plan: RunPlan,
        pending: list[Decision],
    ) -> RunSummary:
        """The summary of a run whose report is written, with a link where one can be signed."""
        return cls(
            out=workspace.out,
            rows=rows,
            sheet=sheet,
            plan=plan,
            link=report_link(workspace.store),
            pending=pending,
        )

    @property
    def not_succeeded(self) -> list[ManifestRow]:
        """Rows that did not end as they should: a near-duplicate skipped did."""
        return [
            row
            for row in self.rows
            if row.status is not Status.SUCCEEDED and row.near_duplicate_of is None
        ]

    @property
    def failed(self) -> bool:
        """Whether a set failed (a dry run's planned sets did not)."""
        return any(row.status is not Status.PLANNED for row in self.not_succeeded)

    @property
    def near_duplicates(self) -> list[ManifestRow]:
        """Rows skipped as near-duplicates of a photo paid for."""
        return [row for row in self.rows if row.near_duplicate_of is not None]

    def skipped_alike(self) -> str:
        """``1 near-duplicate skipped``, ``3 near-duplicates skipped``."""
        alike = len(self.near_duplicates)
        return f"{alike} near-duplicate{'' if alike == 1 else 's'} skipped"

    def message(self) -> str:
        lost = not_collected_notice(self.rows, self.out)
        message = f"{lost}; {self._outcomes()}" if lost else self._outcomes()
        left = self.plan.budget_left
        return f"{message}; budget: {left}" if left else message

    def _outcomes(self) -> str:
        failing = self.not_succeeded
        if not failing:
            alike = len(self.near_duplicates)
            skipped = f"; {self.skipped_alike()} (paid for once)" if alike else ""
            return f"all {len(self.rows) - alike} succeeded{skipped}"
        reasons = "; ".join(
            f"{row.item}/{row.template_id}: {row.status.value} ({row.reason})"
            for row in failing[:10]
        )
        more = f"; and {len(failing) - 10} more" if len(failing) > 10 else ""
        return f"{len(failing)} of {len(self.rows)} did not succeed: {reasons}{more}"


@dataclass
class RunListener:
    """Hooks the CLI uses to draw progress, confirm the plan and stop on Ctrl-C.

    The flow works the same without them (deployments, the UI, tests).
    """

    on_total: Callable[[int], None] = lambda total: None
    on_row: Callable[[ManifestRow], None] = lambda row: None
    on_plan: Callable[[RunPlan], bool] = lambda plan: True
    on_summary: Callable[[RunSummary], None] = lambda summary: None
    interrupted: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class RunProgress:
    """Sets done so far, told to the listener and to the orchestrator's progress."""

    listener: RunListener
    shown: Progress
    done: int = 0

    async def advance(self, row: ManifestRow) -> None:
        self.done += 1
        self.listener.on_row(row)
        await self.shown.update(self.done)
