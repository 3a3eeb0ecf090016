"""The report in the output folder: ``manifest.jsonl``, ``manifest.csv`` and ``index.html``.

One row per photo and template. A rerun into the same folder rewrites the manifest with
every row's latest state; rows of photos the rerun did not touch are kept.
"""

from __future__ import annotations

import csv
import fcntl
import html
import io
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field

from modelset.atomic import write_text

MANIFEST_JSONL = "manifest.jsonl"
MANIFEST_CSV = "manifest.csv"
INDEX_HTML = "index.html"
STATE_DIR = ".modelset"
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
)


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
    # Where the contact sheet finds the input's thumbnail; not a manifest field.
    thumbnail: str | None = Field(default=None, exclude=True)

    @property
    def row_key(self) -> tuple[str, int]:
        return (self.source, self.template_id)


def read_manifest(out: Path) -> list[ManifestRow]:
    path = out / MANIFEST_JSONL
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(ManifestRow.model_validate_json(line))
    return rows


def merge_rows(previous: Iterable[ManifestRow], latest: Iterable[ManifestRow]) -> list[ManifestRow]:
    """Previous rows, each replaced by its latest state; new rows appended in order."""
    merged = {row.row_key: row for row in previous}
    for row in latest:
        merged[row.row_key] = row
    return list(merged.values())


def update_report(out: Path, rows: list[ManifestRow]) -> Path:
    """Merge ``rows`` into the folder's report under a lock; returns the sheet's path.

    Several runs (shards, the callback collector) may write one folder's report; the
    lock makes each read-merge-write whole, so no run's rows are lost.
    """
    lock_path = out / STATE_DIR / "report.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            merged = merge_rows(read_manifest(out), rows)
            return write_report(out, merged, title=f"modelset: {out}")
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def write_report(out: Path, rows: list[ManifestRow], *, title: str = "modelset") -> Path:
    """Write the manifest (both forms) and the contact sheet; returns the sheet's path."""
    out.mkdir(parents=True, exist_ok=True)
    write_text(
        out / MANIFEST_JSONL,
        "".join(row.model_dump_json(include=set(MANIFEST_FIELDS)) + "\n" for row in rows),
    )
    _write_csv(out / MANIFEST_CSV, rows)
    sheet = out / INDEX_HTML
    write_text(sheet, contact_sheet(rows, title=title))
    return sheet


def _write_csv(path: Path, rows: list[ManifestRow]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=MANIFEST_FIELDS)
    writer.writeheader()
    for row in rows:
        values = row.model_dump(include=set(MANIFEST_FIELDS), mode="json")
        values["outputs"] = ";".join(row.outputs)
        writer.writerow(values)
    write_text(path, text.getvalue())


_STATUS_COLOURS = {
    Status.SUCCEEDED: "#1a7f37",
    Status.FAILED: "#cf222e",
    Status.REJECTED: "#bc4c00",
    Status.OUTCOME_UNKNOWN: "#8250df",
    Status.SKIPPED: "#6e7781",
    Status.PLANNED: "#0969da",
}

_STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;color:#1f2328}
h1{font-size:20px}.summary span{margin-right:16px}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #d0d7de;
padding:8px;vertical-align:top;text-align:left}img{height:150px;border-radius:4px;
margin:2px;background:#f6f8fa}.status{font-weight:600}.reason{color:#57606a;max-width:28em}
.set{display:flex;gap:4px}
"""


def contact_sheet(rows: list[ManifestRow], *, title: str) -> str:
    """A self-contained page: each input beside its generated set, status and reason."""
    summary = "".join(
        f"<span>{html.escape(status)}: <b>{count}</b></span>"
        for status, count in summarize(rows).items()
        if count
    )
    body = "\n".join(_sheet_row(row) for row in rows)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='summary'>{summary}</p>"
        "<table><thead><tr><th>input</th><th>item</th><th>template</th><th>status</th>"
        f"<th>generated set</th></tr></thead><tbody>{body}</tbody></table></body></html>\n"
    )


def _sheet_row(row: ManifestRow) -> str:
    thumbnail = (
        f"<img src='{html.escape(row.thumbnail)}' alt='input' loading='lazy'>"
        if row.thumbnail
        else ""
    )
    images = "".join(
        f"<a href='{html.escape(path)}'><img src='{html.escape(path)}' loading='lazy'"
        f" alt='{html.escape(Path(path).name)}'></a>"
        for path in row.outputs
    )
    colour = _STATUS_COLOURS[row.status]
    reason = f"<div class='reason'>{html.escape(row.reason)}</div>" if row.reason else ""
    return (
        f"<tr><td>{thumbnail}</td><td>{html.escape(row.item)}<br>"
        f"<small>{html.escape(row.source)}</small></td><td>{row.template_id}</td>"
        f"<td><span class='status' style='color:{colour}'>{row.status.value}</span>{reason}"
        f"</td><td><div class='set'>{images}</div></td></tr>"
    )


def summarize(rows: Iterable[ManifestRow]) -> dict[str, int]:
    counts: dict[str, int] = {status.value: 0 for status in Status}
    for row in rows:
        counts[row.status.value] += 1
    return counts
