"""What a person sees of a run in the Prefect UI: progress, a results table, thumbnails."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from uuid import UUID

import anyio
from PIL import Image
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from modelset import layout
from modelset.batch.summary import THUMBNAIL_ROWS
from modelset.report import (
    ManifestRow,
    input_thumbnail_key,
    look_alike_thumbnail,
    not_collected_notice,
    output_thumbnails,
    summarize,
)
from modelset.sources import PassedOver
from modelset.stages import (
    Workspace,
    jpeg_bytes,
    small_image,
)
from modelset.storage import Store, read_many, read_or_none

log = logging.getLogger("modelset.artifacts")
# Each update is a request, a write and an event on the server: every 2 s, a 200-photo
# run sent 15 of them, more than the 12 task runs it made.
_PROGRESS_EVERY_S = 5.0
MARKDOWN_THUMBNAIL = (72, 96)  # at most 96 px tall: the UI shows images at their size
# An artifact's event carries its data, and Prefect's server refuses (and logs a warning
# for) events over PREFECT_EVENTS_MAXIMUM_SIZE_BYTES, 1.5 MB by default: each artifact
# stops short of that (the event's other fields take a few kB). The summary's pictures
# stop there, its rows go on without them (200 rows of real pictures took 1.87 MB); the
# table stops there (about 2,500 rows), and says so.
ARTIFACT_MAX_BYTES = 1_400_000
"""On a bucket, the last summary's small JPEGs, with a digest of the rows they show."""
CELLS_VERSION = 2  # 1 kept each image; 2 keeps each row's cells


@dataclass
class ProgressArtifact:
    """A progress artifact that moves during the run, updated at most every 5 s.

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
    "near_duplicate_of",
)


async def publish_results(
    rows: list[ManifestRow], workspace: Workspace, *, sheet: str, passed_over: PassedOver
) -> None:
    """A table of the rows (status first, ids and hashes last; as many as an event
    carries) and a markdown summary with small thumbnails of each input beside its
    generated set, under what the scan passed over."""
    if not rows:
        return
    table = results_table(rows)
    cut = f": the first {len(table)} of {len(rows)} rows (all in manifest.csv)"
    await create_table_artifact(  # type: ignore[misc]
        key="modelset-results",
        table=table,
        description=f"Results in {workspace.out}{cut if len(table) < len(rows) else ''}",
    )
    shown = rows[:THUMBNAIL_ROWS]
    cells = await anyio.to_thread.run_sync(
        partial(
            picture_cells,
            workspace.store,
            shown,
            MARKDOWN_THUMBNAIL,
            workspace.pictures.made,
            copies=workspace.kept,
        )
    )
    await create_markdown_artifact(  # type: ignore[misc]
        key="modelset-summary",
        markdown=summary_markdown(
            rows,
            cells,
            out=workspace.out,
            sheet=sheet,
            tabled=len(table),
            passed_over=passed_over,
        ),
        description="Results with thumbnails",
    )


def results_table(rows: list[ManifestRow]) -> list[dict[str, object]]:
    """The table artifact's rows: every row, as long as the table stays within
    :data:`ARTIFACT_MAX_BYTES` (measured as Prefect encodes it)."""
    table: list[dict[str, object]] = []
    size = len("[]")
    for row in rows:
        values = _table_row(row)
        size += _in_an_event(json.dumps(values)) + len(", ")
        if size > ARTIFACT_MAX_BYTES:
            break
        table.append(values)
    return table


def _in_an_event(text: str) -> int:
    """The bytes ``text`` takes as a string in an event's JSON (escaped, unquoted): an
    artifact's data travels so, a table as its JSON text."""
    return len(json.dumps(text)) - 2


def summary_markdown(
    rows: list[ManifestRow],
    cells: Mapping[str, bytes],
    *,
    out: str,
    sheet: str,
    tabled: int | None = None,
    passed_over: PassedOver | None = None,
) -> str:
    """The summary: the first rows with their pictures while the text stays within
    :data:`ARTIFACT_MAX_BYTES`, the rest of the first :data:`THUMBNAIL_ROWS` without.
    ``tabled``: how many rows the table artifact holds (all when None); ``passed_over``:
    the files the scan did not take."""
    shown = rows[:THUMBNAIL_ROWS]
    counts = ", ".join(f"{status}: {n}" for status, n in summarize(rows).items() if n)
    notice = not_collected_notice(rows, out)
    lines = [
        f"# modelset results\n\n{counts}\n\nOutput location: `{out}`; report: `{sheet}`\n"
        + (f"\n**{notice}**\n" if notice else "")
        + _passed_over_markdown(passed_over),
        "| input | generated set | item | template | status | reason |",
        "|---|---|---|---|---|---|",
    ]
    newline = _in_an_event("\n")
    size = sum(_in_an_event(line) + newline for line in lines)
    unpictured = 0
    for row in shown:
        line = _summary_row(row, cells)
        if size + _in_an_event(line) > ARTIFACT_MAX_BYTES:
            line = _summary_row(row, {})
            unpictured += 1
        lines.append(line)
        size += _in_an_event(line) + newline
    if unpictured:  # said before the table, where a reader looks first
        lines.insert(
            1,
            f"The last {unpictured} rows shown are without pictures, to keep this summary "
            f"small enough for Prefect's events; the report `{sheet}` has them all.\n",
        )
    if len(rows) > len(shown):
        table = (
            "the table artifact"
            if tabled is None or tabled >= len(rows)
            else f"the table artifact (up to row {tabled})"
        )
        lines.append(
            f"\n{len(rows) - len(shown)} more rows are in {table}, in "
            f"`{out}/manifest.csv` and in the report `{sheet}`."
        )
    return "\n".join(lines)


def _passed_over_markdown(passed_over: PassedOver | None) -> str:
    if passed_over is None or not passed_over.total:
        return ""
    reasons = "".join(
        f"- {reason}: {count} (`{names}`)\n" for reason, count, names in passed_over.entries()
    )
    return f"\n**{passed_over.heading()}**\n\n{reasons}"


def _summary_row(row: ManifestRow, cells: Mapping[str, bytes]) -> str:
    inputs = _markdown_image("input", cells.get(row.thumbnail or ""))
    what = "looks like (paid for)" if row.near_duplicate_of else f"{len(row.outputs)} generated"
    outputs = _markdown_image(what, cells.get(set_cell(row)))
    reason = (row.reason or "").replace("|", "\\|")
    return (
        f"| {inputs} | {outputs} | {row.item} | {row.template_id} "
        f"| **{row.status.value}** | {reason} |"
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


def set_cell(row: ManifestRow) -> str:
    """The name :func:`picture_cells` gives a row's generated set."""
    return f"set:{row.source}#{row.template_id}"


def _strip(images: list[Image.Image]) -> Image.Image | None:
    """A set's thumbnails side by side in one small image: the UI stacks separate images
    in a table cell."""
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
        strip.paste(image, (left, 0))
        left += image.width + gap
    return strip


def picture_cells(
    store: Store,
    rows: list[ManifestRow],
    size: tuple[int, int],
    made: Mapping[str, bytes] | None = None,
    *,
    copies: Path | None = None,
) -> dict[str, bytes]:
    """Small JPEGs of these rows: each input (by its thumbnail's key) and each generated
    set side by side (by :func:`set_cell`), every image fitted into ``size``.

    Made from the output thumbnails this run ``made`` as it downloaded (see
    ``stages.SetPictures``), the input thumbnails and the bucket's output thumbnails where
    they exist, else from the images themselves, each decoded once at a reduced scale: only
    for the rows shown. The last call's cells are kept beside the report and used again
    while the rows and size are the same: a rerun that changed nothing decodes nothing
    (into a folder that was 800 images read and decoded for 200 rows, a third of a
    rerun's time; in a bucket one request per image).
    """
    made = made or {}
    inputs, outputs = [], []
    for row in rows:
        if row.thumbnail is None and row.source_sha256:
            row.thumbnail = input_thumbnail_key(row.source_sha256)
        if row.thumbnail:
            inputs.append(row.thumbnail)
        if alike := look_alike_thumbnail(row):
            inputs.append(alike)  # its cell shows that photo, not the set it carries
        else:
            outputs.extend(row.outputs)
    listed = "\n".join([f"{CELLS_VERSION} {size}", *(row.model_dump_json() for row in rows)])
    digest = hashlib.sha256(listed.encode()).hexdigest()
    if (cached := _cached_cells(store, digest)) is not None:
        return cached  # the same rows as the last summary
    data = {shown: made[shown] for shown in [*inputs, *outputs] if shown in made}
    found = read_many(store, [key for key in inputs if key not in data], copies=copies)
    data.update({key: blob.data for key, blob in found.items() if blob is not None})
    data.update(output_thumbnails(store, [o for o in outputs if o not in data], copies))
    # The image itself only where its thumbnail is missing (a folder keeps none): on a
    # bucket every output has one, and reading both moved every image out again.
    images = read_many(store, [o for o in outputs if o not in data])
    data.update({key: blob.data for key, blob in images.items() if blob is not None})
    pictures: dict[str, Image.Image] = {}
    for shown, jpeg in data.items():
        try:
            pictures[shown] = small_image(io.BytesIO(jpeg), size)
        except Exception as exc:  # a broken image is shown as nothing, never a failed run
            log.info("no thumbnail for %s: %s", shown, type(exc).__name__)
    cells: dict[str, bytes] = {}
    for row in rows:
        # A photo with several templates has one input cell, encoded once.
        if row.thumbnail and row.thumbnail not in cells and row.thumbnail in pictures:
            cells[row.thumbnail] = jpeg_bytes(pictures[row.thumbnail])
        if alike := look_alike_thumbnail(row):  # the set is the paid photo's: show that photo
            if alike in pictures:
                cells[set_cell(row)] = jpeg_bytes(pictures[alike])
            continue
        strip = _strip([pictures[o] for o in row.outputs if o in pictures])
        if strip is not None:
            cells[set_cell(row)] = jpeg_bytes(strip)
    saved = {key: base64.b64encode(jpeg).decode("ascii") for key, jpeg in cells.items()}
    store.write(layout.SUMMARY_THUMBNAILS, json.dumps({"rows": digest, "pictures": saved}).encode())
    return cells


def _cached_cells(store: Store, digest: str) -> dict[str, bytes] | None:
    blob = read_or_none(store, layout.SUMMARY_THUMBNAILS)
    if blob is None:
        return None
    try:
        saved = json.loads(blob.data)
        if saved.get("rows") != digest:
            return None
        return {key: base64.b64decode(jpeg) for key, jpeg in saved["pictures"].items()}
    except (ValueError, KeyError, TypeError):
        return None  # a damaged cache is made again
