"""The photos of a batch: the item each one's sets go under, and the chunks they travel in."""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelset import layout
from modelset.ledger import LedgerRecord
from modelset.sources import SourceItem
from modelset.stages import PreparedPhoto

FIRST_CHUNK = 4  # the first set is sent once four photos are prepared
# Each chunk sixteen times the last, up to CHUNK: the next chunk is prepared while the
# last one's sets are generating (64 photos take about as long to prepare as the first
# 4 sets to come back), and 200 photos make 3 chunks. Eightfold made 3 too, but a second
# chunk of 32 left the third's 164 photos to prepare after it: 10 % more wall time.
GROWTH = 16
CHUNK = 256
# A chunk makes four task runs (fetch, validate, prepare, submit): at most this many
# chunks keep a run of any size under about 1,000 task runs (Prefect's UI stops drawing
# a run graph at 2,000 nodes), the chunk growing with the batch past 61,440 photos.
MOST_CHUNKS = 240


@dataclass
class Photo:
    """One source to process, with the item name its outputs go under."""

    source: str
    item: str
    template_ids: list[int]
    prepared: PreparedPhoto | None = None
    paid_upload: str | None = None  # the upload's sha256, for a photo whose sets are done
    # Its sets' ledger records by template, when every one is finished (read once).
    finished: dict[int, LedgerRecord] = field(default_factory=dict)
    sha256: str | None = None  # a local source's hash, known before it is prepared
    preparing: asyncio.Future[Any] | None = None  # its chunk's stages, until done


async def prepared(photos: list[Photo]) -> None:
    """Wait until every photo has its PreparedPhoto (its chunk's stages are done)."""
    await asyncio.gather(*{p.preparing for p in photos if p.preparing is not None})


def chunk_bounds(count: int) -> list[tuple[int, int]]:
    """Where the chunks of ``count`` photos (or sets) begin and end: 4, 64, then
    ``CHUNK`` at a time (more past ``MOST_CHUNKS`` chunks), so the first set is submitted
    after four photos are prepared and a batch of any size takes few task runs."""
    largest = max(CHUNK, math.ceil(count / MOST_CHUNKS))
    bounds, start, size = [], 0, FIRST_CHUNK
    while start < count:
        end = min(start + size, count)
        bounds.append((start, end))
        start, size = end, min(size * GROWTH, largest)
    return bounds


def photos_of(
    items: list[SourceItem],
    template_ids: list[int],
    single_item: str | None,
    known: dict[str, str],
) -> list[Photo]:
    """Each source with the folder its sets go under: stable across reruns, never shared.

    ``known`` maps sources to the names earlier runs gave them in this output folder;
    a new source never takes one of those names, nor one given earlier in this run.
    """
    taken = set(known.values()) | {layout.PUBLISHED}  # <out>/published holds approved sets
    photos = []
    for item in items:
        given = item.item or (single_item if len(items) == 1 else None)
        name = known.get(item.source) if given is None else None
        if name is None:
            base = _safe_name(given or _stem(item.source))
            name, suffix = base, 2
            while name in taken and known.get(item.source) != name:
                name, suffix = f"{base}-{suffix}", suffix + 1
        taken.add(name)
        photos.append(Photo(item.source, name, item.template_ids or list(template_ids)))
    return photos


def _stem(source: str) -> str:
    tail = source.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    return Path(tail).stem or "photo"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "photo"
