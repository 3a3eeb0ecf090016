"""Fetching, validating and encoding photos: one task run per chunk of photos.

The three stages always go together and cost little each, so one task run covers a
chunk (``prefect-notes.md``: a task run costs about 60 ms CPU). Pillow work runs in
threads, one per core, and only paths and hashes come back.
"""

from __future__ import annotations

import os
from functools import partial

import anyio
from prefect import task
from prefect.cache_policies import NO_CACHE

from modelset.stages import PreparedPhoto, prepare_photo
from modelset.tasks.runtime import BatchRuntime

_CPU_LIMITER = anyio.CapacityLimiter(max(1, os.cpu_count() or 1))


@task(name="prepare-photos", cache_policy=NO_CACHE)
async def prepare_photos(
    sources: list[str], runtime: BatchRuntime, use_cache: bool = True
) -> list[PreparedPhoto]:
    """Fetch, validate and prepare each photo; a bad photo is a reason, not an error."""
    prepared: list[PreparedPhoto] = []
    for source in sources:
        prepared.append(
            await anyio.to_thread.run_sync(
                partial(prepare_photo, use_cache=use_cache),
                source,
                runtime.workspace,
                runtime.prepare,
                limiter=_CPU_LIMITER,
            )
        )
    return prepared
