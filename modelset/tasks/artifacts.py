"""What a person sees of a run in the Prefect UI: progress, a results table, thumbnails."""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from modelset.report import ManifestRow, summarize
from modelset.stages import Workspace
from modelset.storage import read_or_none

_PROGRESS_EVERY_S = 2.0
_THUMBNAILS_SHOWN = 12


@dataclass
class ProgressArtifact:
    """A progress artifact that moves during the run, updated at most every 2 s.

    Updates go one at a time and always carry the latest count, so a slow earlier
    update can never land after the final 100 %.
    """

    artifact_id: UUID
    last_update: float = 0.0
    done: int = 0
    total: int = 1
    _sending: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    async def create(cls, total: int) -> ProgressArtifact:
        artifact_id = await create_progress_artifact(  # type: ignore[misc]
            0.0, key="modelset-progress", description=f"{total} sets"
        )
        return cls(artifact_id=artifact_id, total=max(1, total))

    async def update(self, done: int) -> None:
        self.done = max(self.done, done)
        finished = self.done >= self.total
        if not finished and time.monotonic() - self.last_update < _PROGRESS_EVERY_S:
            return
        async with self._sending:
            self.last_update = time.monotonic()
            await update_progress_artifact(  # type: ignore[misc]
                self.artifact_id, 100.0 * self.done / self.total
            )


async def publish_results(rows: list[ManifestRow], workspace: Workspace) -> None:
    """A table of every row and a markdown summary with small embedded thumbnails."""
    if not rows:
        return
    await create_table_artifact(  # type: ignore[misc]
        key="modelset-results",
        table=[row.model_dump(mode="json") for row in rows],
        description=f"Results in {workspace.out}",
    )
    counts = ", ".join(f"{status}: {n}" for status, n in summarize(rows).items() if n)
    lines = [f"# modelset results\n\n{counts}\n\nOutput location: `{workspace.out}`\n"]
    lines.append("| input | item | template | status | reason |\n|---|---|---|---|---|")
    for row in rows[:_THUMBNAILS_SHOWN]:
        lines.append(
            f"| {_embedded(workspace, row.thumbnail)} | {row.item} | {row.template_id} "
            f"| {row.status.value} | {row.reason or ''} |"
        )
    if len(rows) > _THUMBNAILS_SHOWN:
        lines.append(f"\n... and {len(rows) - _THUMBNAILS_SHOWN} more (see the table artifact)")
    await create_markdown_artifact(  # type: ignore[misc]
        key="modelset-summary", markdown="\n".join(lines), description="Results with thumbnails"
    )


def _embedded(workspace: Workspace, thumbnail: str | None) -> str:
    # The UI cannot read local files, so thumbnails travel inside the markdown.
    if not thumbnail:
        return ""
    blob = read_or_none(workspace.store, thumbnail)
    if blob is None:
        return ""
    data = base64.b64encode(blob.data).decode("ascii")
    return f"![input](data:image/jpeg;base64,{data})"
