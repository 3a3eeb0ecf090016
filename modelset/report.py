"""The report in the output location: ``manifest.jsonl``, ``manifest.csv`` and ``index.html``.

One row per photo and template. A rerun into the same location rewrites the manifest with
every row's latest state; rows of photos the rerun did not touch are kept.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from modelset import layout
from modelset.pages import render
from modelset.sources import PassedOver
from modelset.storage import (
    Store,
    locate,
    open_store,
    read_copies,
    read_many,
    read_or_none,
    update,
)

_REWRITE_ROUNDS = 5
MANIFEST_FIELDS = (
    "source",
    "item",
    "source_sha256",
    "upload_sha256",
    "template_id",
    "request_id",
    "task_id",
    "status",
    "reason",
    "outputs",
    "review",
    "review_note",
    "reviewer",
    "published",
    "near_duplicate_of",
)


ReviewState = Literal["", "pending", "approved", "declined"]


class Status(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    OUTCOME_UNKNOWN = "outcome_unknown"
    SKIPPED = "skipped"
    PLANNED = "planned"


class ManifestRow(BaseModel):
    source: str
    item: str
    source_sha256: str | None = None
    upload_sha256: str | None = None
    template_id: int
    request_id: str | None = None
    task_id: str | None = None
    status: Status
    reason: str | None = None
    outputs: list[str] = Field(default_factory=list)
    # pending, approved or declined; empty where no review was asked for (modelset.review)
    review: ReviewState = ""
    review_note: str = ""
    reviewer: str = ""
    published: list[str] = Field(default_factory=list)  # where the approved set went
    # A near-duplicate's: the source_sha256 of the photo it looks like, paid for once.
    near_duplicate_of: str | None = None
    # Where the contact sheet finds the input's thumbnail; not a manifest field.
    thumbnail: str | None = Field(default=None, exclude=True)
    # The ledger key and attempt the row's set was paid under, while a run builds its
    # rows (for its review decisions); not manifest fields.
    ledger_key: str | None = Field(default=None, exclude=True)
    attempt: int | None = Field(default=None, exclude=True)

    @property
    def row_key(self) -> tuple[str, int]:
        return (self.source, self.template_id)


def read_manifest(where: Store | str | Path) -> list[ManifestRow]:
    """The rows of a location's manifest (a store, a folder or a bucket URL)."""
    store = where if not isinstance(where, str | Path) else open_store(where)
    blob = read_or_none(store, layout.MANIFEST_JSONL)
    return [] if blob is None else _parse_rows(blob.data)


def _parse_rows(data: bytes) -> list[ManifestRow]:
    return [
        ManifestRow.model_validate_json(line)
        for line in data.decode("utf-8").splitlines()
        if line.strip()
    ]


def _manifest_bytes(rows: Iterable[ManifestRow]) -> bytes:
    text = "".join(row.model_dump_json(include=set(MANIFEST_FIELDS)) + "\n" for row in rows)
    return text.encode("utf-8")


def merge_rows(previous: Iterable[ManifestRow], latest: Iterable[ManifestRow]) -> list[ManifestRow]:
    """Previous rows, each replaced by its latest state; new rows appended in order."""
    merged = {row.row_key: row for row in previous}
    for row in latest:
        merged[row.row_key] = row
    return list(merged.values())


def update_report(store: Store, rows: list[ManifestRow], *, copies: Path | None = None) -> str:
    """Merge ``rows`` into the location's report; returns where the sheet is.

    Several runs (shards, concurrent runs, the callback collector) may write one
    location's report. The manifest is merged with a compare-and-swap, so no run's rows
    are lost; the CSV and the sheet are written from the merged rows, and written again
    while the manifest moved on under them, so the last ones written match it.
    """
    thumbnails = {row.row_key: row.thumbnail for row in rows if row.thumbnail}
    unchanged: bytes | None = None  # the manifest as read, when the merge left it so
    merged_data = b""  # the manifest ``merged`` is

    def merge(current: bytes | None) -> tuple[bytes, list[ManifestRow]]:
        nonlocal unchanged, merged_data
        merged = merge_rows(_parse_rows(current) if current else [], rows)
        merged_data = _manifest_bytes(merged)
        unchanged = merged_data if current == merged_data else None
        return merged_data, merged

    merged = update(store, layout.MANIFEST_JSONL, merge)
    if unchanged is not None and _views_current(store, unchanged):
        # A rerun that changed nothing: on a bucket the sheet would read every thumbnail
        # again (five requests per set) to write the same page.
        return locate(store, layout.INDEX_HTML)
    for _ in range(_REWRITE_ROUNDS):
        written = read_or_none(store, layout.MANIFEST_JSONL)
        if written is not None and written.data != merged_data:
            # Another run merged its rows since this one did: the views are written from
            # the manifest as it is, or a run that wrote them before this one (with
            # these rows and its own) would see them overwritten without its own.
            merged, merged_data = _parse_rows(written.data), written.data
        _write_views(store, merged, thumbnails, copies)
        latest = read_or_none(store, layout.MANIFEST_JSONL)
        if latest is None or written is None or latest.etag == written.etag:
            if written is not None:
                store.write(layout.REPORT_VIEWS, _digest(written.data))
            break
    return locate(store, layout.INDEX_HTML)


def remember_passed_over(store: Store, passed_over: PassedOver) -> None:
    """Keep what this run's scan passed over for every later writing of ``index.html``
    (the views are written again when it changed, even if the manifest did not)."""
    data = passed_over.model_dump_json().encode()
    kept = read_or_none(store, layout.PASSED_OVER)
    if kept is not None and kept.data == data:
        return
    store.write(layout.PASSED_OVER, data)
    store.delete(layout.REPORT_VIEWS)


def passed_over_of(store: Store) -> PassedOver:
    """What the last run's scan into this location passed over (nothing, if unknown)."""
    kept = read_or_none(store, layout.PASSED_OVER)
    try:
        return PassedOver() if kept is None else PassedOver.model_validate_json(kept.data)
    except ValidationError:
        return PassedOver()  # damaged: the next run writes it again


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).hexdigest().encode()


def _views_current(store: Store, manifest: bytes) -> bool:
    """Whether manifest.csv and index.html were written from ``manifest``."""
    marker = read_or_none(store, layout.REPORT_VIEWS)
    return marker is not None and marker.data == _digest(manifest)


def write_report(store: Store, rows: list[ManifestRow]) -> str:
    """Write the manifest (both forms) and the contact sheet; returns the sheet's place."""
    store.write(layout.MANIFEST_JSONL, _manifest_bytes(rows))
    _write_views(store, rows, {row.row_key: row.thumbnail for row in rows if row.thumbnail})
    return locate(store, layout.INDEX_HTML)


def _write_views(
    store: Store,
    rows: list[ManifestRow],
    thumbnails: dict[tuple[str, int], str],
    copies: Path | None = None,
) -> None:
    for row in rows:
        if row.thumbnail is None and row.source_sha256:
            key = thumbnails.get(row.row_key) or input_thumbnail_key(row.source_sha256)
            path = store.local_path(key)
            row.thumbnail = key if path is None or path.exists() else None
    _write_csv(store, rows)
    title = f"modelset: {store.url}"
    notice = not_collected_notice(rows, store.url)
    passed_over = passed_over_of(store)
    images = None if store.is_local else _embedded_images(store, rows, copies)
    page = contact_sheet(rows, title=title, images=images, notice=notice, passed_over=passed_over)
    store.write(layout.INDEX_HTML, page.encode("utf-8"))


def input_thumbnail_key(source_sha256: str) -> str:
    return f"{layout.THUMBS}/{source_sha256}.jpg"


def look_alike_thumbnail(row: ManifestRow) -> str | None:
    """A near-duplicate's: the thumbnail of the photo it looks like, shown beside it."""
    return input_thumbnail_key(row.near_duplicate_of) if row.near_duplicate_of else None


def output_thumbnail_key(output: str) -> str:
    """Where one generated image's thumbnail is kept on this machine during a run (and
    was stored in a bucket by versions that stored one object per image)."""
    return f"{layout.THUMBS}/{output}"


def set_thumbnails_key(folder: str) -> str:
    """The one object holding the thumbnails of a set's images (``<item>/<template_id>``)."""
    return f"{layout.THUMBS}/{folder}/{layout.SET_THUMBNAILS}"


def store_set_thumbnails(
    store: Store, folder: str, thumbnails: dict[str, bytes], *, merge: bool
) -> None:
    """Store a set's thumbnails (output key -> JPEG) as one object: one request per set
    where one per image cost four. ``merge``: keep those already stored (a set whose
    images were downloaded over two runs)."""
    key = set_thumbnails_key(folder)
    if merge and (stored := read_or_none(store, key)) is not None:
        thumbnails = {**_unpacked(stored.data), **thumbnails}
    packed = {output: base64.b64encode(jpeg).decode("ascii") for output, jpeg in thumbnails.items()}
    store.write(key, json.dumps(packed, sort_keys=True).encode())


def _unpacked(data: bytes) -> dict[str, bytes]:
    try:
        return {output: base64.b64decode(jpeg) for output, jpeg in json.loads(data).items()}
    except (ValueError, AttributeError, TypeError):
        return {}  # damaged: the images themselves are read instead


def output_thumbnails(
    store: Store, outputs: Iterable[str], copies: Path | None = None
) -> dict[str, bytes]:
    """The thumbnail of each generated image that has one: this run's copy (``copies``),
    its set's thumbnails object, or the per-image object of a location written before
    those; images without one are left out (a folder keeps none: read the image)."""
    if store.is_local:
        return {}
    wanted = list(dict.fromkeys(outputs))
    found: dict[str, bytes] = {}
    if copies is not None:
        kept = read_copies(copies, [output_thumbnail_key(output) for output in wanted])
        found = {o: kept[k] for o in wanted if (k := output_thumbnail_key(o)) in kept}
    missing = [output for output in wanted if output not in found]
    folders = {output.rpartition("/")[0] for output in missing}
    for blob in read_many(store, [set_thumbnails_key(folder) for folder in folders]).values():
        if blob is not None:
            found.update({k: v for k, v in _unpacked(blob.data).items() if k in missing})
    older = [output for output in missing if output not in found]
    legacy = read_many(store, [output_thumbnail_key(output) for output in older])
    found.update(
        {o: blob.data for o in older if (blob := legacy[output_thumbnail_key(o)]) is not None}
    )
    return found


def _embedded_images(
    store: Store, rows: list[ManifestRow], copies: Path | None = None
) -> dict[str, str]:
    """``data:`` URIs of every thumbnail the sheet shows, by the key it would link (read
    from ``copies`` where this run kept them, see ``read_many``).

    A private bucket's sheet opened through a presigned URL cannot load other objects,
    so the thumbnails travel inside it; its links stay relative.
    """
    wanted = [row.thumbnail for row in rows if row.thumbnail]
    wanted += [key for row in rows if (key := look_alike_thumbnail(row))]
    inputs = read_many(store, wanted, copies=copies)
    found = {key: blob.data for key, blob in inputs.items() if blob is not None}
    found.update(output_thumbnails(store, [o for row in rows for o in row.outputs], copies))
    return {
        shown: "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
        for shown, jpeg in found.items()
    }


def _write_csv(store: Store, rows: list[ManifestRow]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=MANIFEST_FIELDS)
    writer.writeheader()
    for row in rows:
        values = row.model_dump(include=set(MANIFEST_FIELDS), mode="json")
        values["outputs"] = ";".join(row.outputs)
        values["published"] = ";".join(row.published)
        writer.writerow(values)
    store.write(layout.MANIFEST_CSV, text.getvalue().encode("utf-8"))


_SHEET = "index.html.j2"


def not_collected_notice(rows: list[ManifestRow], out: str) -> str | None:
    """What to do about the sets whose send's answer was lost, where there are any."""
    lost = sum(1 for row in rows if row.status is Status.OUTCOME_UNKNOWN)
    if not lost:
        return None
    sets = "set" if lost == 1 else "sets"
    return (
        f"{lost} {sets} paid, not collected: the answer to the send was lost, so a task "
        f"may exist and be billed. Settle them with: modelset settle {out}"
    )


def contact_sheet(
    rows: list[ManifestRow],
    *,
    title: str,
    images: dict[str, str] | None = None,
    notice: str | None = None,
    passed_over: PassedOver | None = None,
) -> str:
    """A self-contained page: each input beside its generated set, status and reason,
    under a ``notice`` that asks for action, if any, and what the scan passed over.

    ``images`` maps a thumbnail's or an output's key to what the page shows for it (a
    ``data:`` URI); without it, images load from their keys, relative to the page. A
    near-duplicate's row shows the set of the photo it looks like, when that photo's row
    is on the sheet. The page is ``templates/index.html.j2``.
    """
    summary = [(status, count) for status, count in summarize(rows).items() if count]
    summary += [
        (f"review {review}", count)
        for review in ("pending", "approved", "declined")
        if (count := sum(1 for row in rows if row.review == review))
    ]
    paid = {(row.source_sha256, row.template_id): row for row in rows if row.outputs}
    return render(
        _SHEET,
        title=title,
        summary=summary,
        notice=notice,
        passed_over=passed_over if passed_over is not None and passed_over.total else None,
        rows=[(row, paid.get((row.near_duplicate_of, row.template_id))) for row in rows],
        shown=images or {},
        look_alike=look_alike_thumbnail,
    )


def summarize(rows: Iterable[ManifestRow]) -> dict[str, int]:
    counts: dict[str, int] = {status.value: 0 for status in Status}
    for row in rows:
        counts[row.status.value] += 1
    return counts
