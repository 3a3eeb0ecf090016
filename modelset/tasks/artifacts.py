"""What a person sees of a run in the Prefect UI: progress, a results table, thumbnails."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass, field
from uuid import UUID

import anyio
from PIL import Image
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from modelset.report import STATE_DIR, ManifestRow, summarize
from modelset.stages import Workspace, output_thumbnail_key, thumbnail_jpeg, thumbnail_key
from modelset.storage import Store, read_many, read_or_none

log = logging.getLogger("modelset.artifacts")
_PROGRESS_EVERY_S = 2.0
THUMBNAIL_ROWS = 200
MARKDOWN_THUMBNAIL = (72, 96)  # at most 96 px tall: the UI shows images at their size
SUMMARY_THUMBNAILS = f"{STATE_DIR}/summary-thumbnails.json"
"""On a bucket, the last summary's small JPEGs, with a digest of the rows they show."""


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


TABLE_COLUMNS = (
    "item",
    "template_id",
    "status",
    "reason",
    "outputs",
    "source",
    "request_id",
    "task_id",
    "source_sha256",
    "upload_sha256",
)


async def publish_results(rows: list[ManifestRow], workspace: Workspace, *, sheet: str) -> None:
    """A table of every row (status first, ids and hashes last) and a markdown summary
    with small thumbnails of each input beside its generated set."""
    if not rows:
        return
    await create_table_artifact(  # type: ignore[misc]
        key="modelset-results",
        table=[_table_row(row) for row in rows],
        description=f"Results in {workspace.out}",
    )
    shown = rows[:THUMBNAIL_ROWS]
    pictures = await anyio.to_thread.run_sync(_thumbnails, workspace.store, shown)
    counts = ", ".join(f"{status}: {n}" for status, n in summarize(rows).items() if n)
    lines = [
        f"# modelset results\n\n{counts}\n\nOutput location: `{workspace.out}`; "
        f"report: `{sheet}`\n",
        "| input | generated set | item | template | status | reason |",
        "|---|---|---|---|---|---|",
    ]
    for row in shown:
        inputs = _markdown_image("input", pictures.get(row.thumbnail or ""))
        outputs = _markdown_image(
            f"{len(row.outputs)} generated", _strip([pictures.get(o) for o in row.outputs])
        )
        reason = (row.reason or "").replace("|", "\\|")
        lines.append(
            f"| {inputs} | {outputs} | {row.item} | {row.template_id} "
            f"| **{row.status.value}** | {reason} |"
        )
    if len(rows) > len(shown):
        lines.append(
            f"\n{len(rows) - len(shown)} more rows are in the table artifact, in "
            f"`{workspace.out}/manifest.csv` and in the report `{sheet}`."
        )
    await create_markdown_artifact(  # type: ignore[misc]
        key="modelset-summary", markdown="\n".join(lines), description="Results with thumbnails"
    )


def _table_row(row: ManifestRow) -> dict[str, object]:
    values = row.model_dump(mode="json", include=set(TABLE_COLUMNS))
    values["outputs"] = " ".join(row.outputs)
    return {column: values.get(column) for column in TABLE_COLUMNS}


def _markdown_image(alt: str, jpeg: bytes | None) -> str:
    # The UI cannot read the output location, so thumbnails travel inside the markdown.
    if jpeg is None:
        return ""
    return f"![{alt}](data:image/jpeg;base64,{base64.b64encode(jpeg).decode('ascii')})"


def _strip(pictures: list[bytes | None]) -> bytes | None:
    """The set's thumbnails side by side in one small image: the UI stacks separate
    images in a table cell."""
    images = [Image.open(io.BytesIO(p)) for p in pictures if p is not None]
    if not images:
        return None
    gap = 4
    strip = Image.new(
        "RGB",
        (sum(i.width for i in images) + gap * (len(images) - 1), max(i.height for i in images)),
        (255, 255, 255),
    )
    left = 0
    for image in images:
        strip.paste(image.convert("RGB"), (left, 0))
        left += image.width + gap
    encoded = io.BytesIO()
    strip.save(encoded, "JPEG", quality=80)
    return encoded.getvalue()


def _thumbnails(store: Store, rows: list[ManifestRow]) -> dict[str, bytes]:
    """Small JPEGs (at most 96 px tall) of the inputs and outputs of these rows, by key.

    Made from the input thumbnails and from the bucket's output thumbnails where they
    exist, else from the images themselves: only for the rows shown.
    """
    wanted: dict[str, list[str]] = {}
    for row in rows:
        if row.thumbnail is None and row.source_sha256:
            row.thumbnail = thumbnail_key(row.source_sha256)
        if row.thumbnail:
            wanted[row.thumbnail] = [row.thumbnail]
        for output in row.outputs:
            wanted[output] = [output_thumbnail_key(output), output]
    digest = hashlib.sha256("\n".join(row.model_dump_json() for row in rows).encode()).hexdigest()
    if not store.is_local and (cached := _cached_thumbnails(store, digest)) is not None:
        return cached  # the same rows as the last summary: one request, not one per image
    found = read_many(store, [keys[0] for keys in wanted.values()])
    # The image itself only where its thumbnail is missing (a folder keeps none): on a
    # bucket every output has one, and reading both moved every image out again.
    fallbacks = [keys[1] for keys in wanted.values() if len(keys) > 1 and found[keys[0]] is None]
    if fallbacks:
        found.update(read_many(store, fallbacks))
    pictures = {}
    for shown, keys in wanted.items():
        blob = next((found[key] for key in keys if found.get(key) is not None), None)
        if blob is None:
            continue
        try:
            pictures[shown] = thumbnail_jpeg(io.BytesIO(blob.data), MARKDOWN_THUMBNAIL)
        except Exception as exc:  # a broken image is shown as nothing, never a failed run
            log.info("no thumbnail for %s: %s", shown, type(exc).__name__)
    if not store.is_local:
        saved = {key: base64.b64encode(jpeg).decode("ascii") for key, jpeg in pictures.items()}
        store.write(SUMMARY_THUMBNAILS, json.dumps({"rows": digest, "pictures": saved}).encode())
    return pictures


def _cached_thumbnails(store: Store, digest: str) -> dict[str, bytes] | None:
    blob = read_or_none(store, SUMMARY_THUMBNAILS)
    if blob is None:
        return None
    try:
        saved = json.loads(blob.data)
        if saved.get("rows") != digest:
            return None
        return {key: base64.b64decode(jpeg) for key, jpeg in saved["pictures"].items()}
    except (ValueError, KeyError, TypeError):
        return None  # a damaged cache is made again
