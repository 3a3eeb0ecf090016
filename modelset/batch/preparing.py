"""Every photo of a batch gets its PreparedPhoto: from the ledger for sets already
finished (no stage runs at all), else through fetch, validate and prepare, in chunks."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from functools import partial
from pathlib import Path

import anyio

from modelset.batch.chunks import FetchItem
from modelset.batch.photos import Photo, chunk_bounds
from modelset.batch.runtime import BatchRuntime
from modelset.hashing import hash_files
from modelset.ledger import SubmissionState
from modelset.report import input_thumbnail_key
from modelset.sources import remote_identity
from modelset.stages import PreparedPhoto, is_local_file, key_for, needs_submit, upload_key_of
from modelset.storage import is_remote

PREPARING_CHUNKS = max(2, os.cpu_count() or 1)  # chunks prepared at once, in order


async def prepare_all(
    photos: list[Photo], runtime: BatchRuntime, base_url: str, ready: Awaitable[object]
) -> None:
    """Give every photo its PreparedPhoto, the ledger's first; the stages of the others
    are started here and awaited by whoever needs a photo (``Photo.preparing``). Nothing
    is written to the output location before ``ready`` (the conditional-write probe and
    the orchestrator's opening): a refused location is left as it was."""
    local = [photo.source for photo in photos if is_local_file(photo.source)]
    digests = await anyio.to_thread.run_sync(hash_files, [Path(source) for source in local])
    hashes = dict(zip(local, digests, strict=True))
    for photo in await _finished(photos, hashes, runtime, base_url):
        digest = hashes[photo.source]
        photo.prepared = PreparedPhoto(
            source=photo.source,
            source_sha256=digest,
            validated=True,
            upload_key=upload_key_of(digest, runtime.prepare),
            upload_sha256=photo.paid_upload,
            thumbnail=input_thumbnail_key(digest),
        )
    pending = [photo for photo in photos if photo.prepared is None]
    if not pending:
        return
    identities = await _identities(pending, runtime)
    items = [
        FetchItem(source=p.source, sha256=hashes.get(p.source), identity=identities.get(p.source))
        for p in pending
    ]
    for photo in pending:
        photo.sha256 = hashes.get(photo.source)
    await ready
    _start_chunks(pending, items, runtime, total=len(photos))


def _start_chunks(
    pending: list[Photo], items: list[FetchItem], runtime: BatchRuntime, *, total: int
) -> None:
    """A few chunks at a time, in order, so the first photos are ready first: submitting
    starts while later photos are still being prepared."""
    in_order = asyncio.Semaphore(PREPARING_CHUNKS)

    async def chunk(start: int, end: int, before: asyncio.Future[None] | None) -> None:
        photos = pending[start:end]
        async with in_order:
            prepared = await _stages(
                photos, items[start:end], runtime, label=f"{start + 1}-{end} of {total}"
            )
        if before is not None:
            # Photos become ready in the batch's order, so that of two with the same
            # upload the first in the batch is always the one paid for.
            await asyncio.wait([before])
        for photo, result in zip(photos, prepared, strict=True):
            photo.prepared = result

    preparing: asyncio.Future[None] | None = None
    for start, end in chunk_bounds(len(pending)):
        preparing = asyncio.ensure_future(chunk(start, end, preparing))
        for photo in pending[start:end]:
            photo.preparing = preparing


async def _stages(
    photos: list[Photo], items: list[FetchItem], runtime: BatchRuntime, *, label: str
) -> list[PreparedPhoto]:
    """One chunk through fetch, validate and prepare."""
    stage = runtime.orchestrator.stage

    def sourced(results: list[PreparedPhoto]) -> list[PreparedPhoto]:
        # Results carry no source (a path is never cached): put the chunk's back.
        return [
            r.model_copy(update={"source": p.source}) for p, r in zip(photos, results, strict=True)
        ]

    fetched = sourced(await stage("fetch", items, runtime, label))
    checked = sourced(await stage("validate", fetched, runtime, label))
    return sourced(await stage("prepare", checked, runtime, label))


async def _finished(
    photos: list[Photo], hashes: dict[str, str], runtime: BatchRuntime, base_url: str
) -> list[Photo]:
    """The local photos whose every set is finished in the ledger: nothing to prepare."""
    keys = {
        photo.source: [
            key_for(base_url, t, hashes[photo.source], runtime.prepare) for t in photo.template_ids
        ]
        for photo in photos
        if photo.source in hashes
    }
    wanted = [key for wanted in keys.values() for key in wanted]
    listed = await runtime.ledger_listing(len(wanted))
    records = await anyio.to_thread.run_sync(runtime.ledger.read_many, wanted, listed)
    runtime.planned.update(records)
    done = []
    for photo in photos:
        found = [records[key] for key in keys.get(photo.source, [])]
        if found and all(
            record is not None
            and record.state is SubmissionState.FINISHED
            and not needs_submit(record, runtime.rules)
            for record in found
        ):
            photo.paid_upload = found[0].upload_sha256 if found[0] else None
            photo.finished = {
                t: record
                for t, record in zip(photo.template_ids, found, strict=True)
                if record is not None
            }
            done.append(photo)
    return done


async def _identities(photos: list[Photo], runtime: BatchRuntime) -> dict[str, str | None]:
    """Remote sources' identities (URL + validators), looked up a few at a time."""
    remote = [photo.source for photo in photos if is_remote(photo.source)]
    limiter = anyio.CapacityLimiter(8)
    found: dict[str, str | None] = {}

    async def look(source: str) -> None:
        found[source] = await anyio.to_thread.run_sync(
            partial(remote_identity, source, allow_private=runtime.prepare.allow_private_urls),
            limiter=limiter,
        )

    async with anyio.create_task_group() as group:
        for source in remote:
            group.start_soon(look, source)
    return found
