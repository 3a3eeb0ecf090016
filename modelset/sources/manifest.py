"""CSV and JSONL manifests: one photo per row, with optional item and template ids."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

from modelset.sources._exceptions import SourceError
from modelset.sources.locations import (
    HTTP_SCHEMES,
    file_url_path,
    is_object_store,
    require_backend,
    unsupported_scheme,
)
from modelset.sources.models import SourceItem
from modelset.sources.urls import redact_url, url_scheme

MANIFEST_SUFFIXES: frozenset[str] = frozenset({".csv", ".jsonl"})

_INT_RE = re.compile(r"^[+-]?\d+$")
_ID_SEPARATORS = re.compile(r"[;,\s]+")

Row = Mapping[str, object]


def is_manifest(path: Path) -> bool:
    return path.suffix.lower() in MANIFEST_SUFFIXES


def read_manifest(path: Path, *, allow_file_urls: bool = False) -> list[SourceItem]:
    """One SourceItem per row of a ``.csv`` or ``.jsonl`` manifest, in row order."""
    path = Path(os.path.abspath(path))
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: manifest is not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise SourceError(f"{path}: cannot read manifest: {exc.strerror}") from exc
    return parse_manifest(text, name=str(path), base=path.parent, allow_file_urls=allow_file_urls)


def parse_manifest(
    text: str, *, name: str, base: Path | str, allow_file_urls: bool = False
) -> list[SourceItem]:
    """The rows of a manifest's text; relative images resolve against ``base``: a local
    folder, or the URL of the bucket prefix a manifest in a bucket sits in."""
    rows = _csv_rows(name, text) if name.lower().endswith(".csv") else _jsonl_rows(name, text)
    items = [
        _row_item(row, name=name, base=base, line=line, allow_file_urls=allow_file_urls)
        for line, row in rows
    ]
    if not items:
        raise SourceError(f"no images found in {name}: the manifest has no rows")
    return items


def _csv_rows(path: str, text: str) -> Iterator[tuple[int, Row]]:
    first_line = text.split("\n", 1)[0]
    # Spreadsheets in some locales save ';'- or tab-separated "CSV".
    delimiter = ","
    if "," not in first_line:
        delimiter = next((d for d in (";", "\t") if d in first_line), ",")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [name.strip().lower() for name in next(reader)]
    except StopIteration:
        raise SourceError(f"{path}: manifest is empty (expected a header with 'image')") from None
    if "image" not in header:
        found = ", ".join(repr(name) for name in header if name) or "none"
        raise SourceError(f"{path}: manifest has no 'image' column (columns: {found})")
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue
        yield reader.line_num, dict(zip(header, cells, strict=False))


def _jsonl_rows(path: str, text: str) -> Iterator[tuple[int, Row]]:
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{path}, line {line}: invalid JSON: {exc.msg}") from exc
        if not isinstance(value, dict):
            raise SourceError(f"{path}, line {line}: expected a JSON object per line")
        yield line, {str(key).strip().lower(): v for key, v in value.items()}


def _row_item(
    row: Row, *, name: str, base: Path | str, line: int, allow_file_urls: bool
) -> SourceItem:
    where = f"{name}, line {line}"
    image = row.get("image")
    if image is None or (isinstance(image, str) and not image.strip()):
        raise SourceError(f"{where}: missing 'image'")
    if not isinstance(image, str):
        raise SourceError(f"{where}: 'image' must be a string, got {image!r}")
    return SourceItem(
        source=_image_source(image.strip(), base, where, allow_file_urls),
        item=_item(row.get("item"), where),
        template_ids=_template_ids(row, where),
        origin=name,
    )


def _image_source(image: str, base: Path | str, where: str, allow_file_urls: bool) -> str:
    scheme = url_scheme(image)
    if scheme is None:
        if isinstance(base, Path):
            return os.path.abspath(base / image)
        if image.startswith("/") or ".." in image.split("/"):
            raise SourceError(f"{where}: {image!r} leaves the manifest's bucket prefix")
        return f"{base.rstrip('/')}/{image}"
    if scheme in HTTP_SCHEMES:
        _check_http_url(image, where)
        return image
    if scheme == "file":
        if not allow_file_urls or not isinstance(base, Path):
            raise SourceError(
                f"{where}: file:// URLs are not allowed in manifests "
                "(use a path relative to the manifest, or allow file URLs explicitly)"
            )
        return str(file_url_path(image))
    if is_object_store(scheme):
        require_backend(scheme)
        return image
    raise unsupported_scheme(image, where)


def _check_http_url(url: str, where: str) -> None:
    try:
        host = httpx.URL(url).host
    except httpx.InvalidURL as exc:
        raise SourceError(f"{where}: invalid URL {redact_url(url)}: {exc}") from exc
    if not host:
        raise SourceError(f"{where}: invalid URL {redact_url(url)}: no host")


def _item(value: object, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # a numeric SKU in JSONL
    raise SourceError(f"{where}: 'item' must be text, got {value!r}")


def _template_ids(row: Row, where: str) -> list[int] | None:
    ids: list[int] = []
    single = row.get("template_id")
    if single is not None and single != "":
        ids.append(_to_int(single, "template_id", where))
    many = row.get("template_ids")
    if isinstance(many, str):
        ids.extend(_to_int(v, "template_ids", where) for v in _ID_SEPARATORS.split(many) if v)
    elif isinstance(many, list):
        ids.extend(_to_int(v, "template_ids", where) for v in many)
    elif many is not None:
        ids.append(_to_int(many, "template_ids", where))
    unique = list(dict.fromkeys(ids))
    return unique or None


def _to_int(value: object, column: str, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT_RE.match(value.strip()):
        return int(value.strip())
    raise SourceError(f"{where}: {column} must be an integer, got {value!r}")
