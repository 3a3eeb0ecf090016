"""Fetching, validating and preparing photos: a task run per stage per chunk of photos.

The design card's stages show in the run graph as ``fetch 69-200 of 200``,
``validate 69-200 of 200`` and ``prepare 69-200 of 200``; the work is the core's
(``modelset.batch.chunks``).

Each stage is cached by Prefect, in the output location (``tasks/results.py``), keyed on
what determines its result and on nothing else: the photos' content hashes (for a remote
source not fetched yet, its URL with ETag or Last-Modified and size), the policy, the
fit and the preparation version; never a path. A cached value holds no path either, so
any worker can use it: a run retried from the UI, or a rerun with other templates,
shows Cached task runs and fetches and prepares nothing again.

Retries: a fetch retries transient network errors per photo inside the core (a photo
that still fails gets its reason, the chunk goes on); validate and prepare are
deterministic and never retried.
"""

from __future__ import annotations

import hashlib
from collections.abc import Coroutine
from typing import Any

from prefect import Task, task
from prefect.context import TaskRunContext

from modelset.batch import BatchRuntime
from modelset.batch.chunks import FetchItem, fetch_chunk, prepare_chunk, validate_chunk
from modelset.images import PREPARATION_VERSION
from modelset.stages import PreparedPhoto

STAGE_NAMESPACE = "modelset-stage"
# 2: HEIC is read; a prepared photo carries its look; 3: and its rank; 4: PreparedPhoto
# moved to modelset.stages.models and the chunks grew (4, 16, 64, 256).
STAGE_VERSION = 4


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _fetch_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    items: list[FetchItem] = parameters["items"]
    names = [item.sha256 or item.identity for item in items]
    if any(name is None for name in names):
        return None  # something in the chunk can only be known by fetching it again
    return f"{STAGE_NAMESPACE}-fetch-v{STAGE_VERSION}-{_digest(*map(str, names))}"


def _photo_names(photos: list[PreparedPhoto]) -> list[str]:
    # A photo that could not be fetched is named by why, which is what the stage passes on.
    return [photo.source_sha256 or f"failed:{photo.reason}" for photo in photos]


def _validate_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    names = _photo_names(parameters["photos"])
    return f"{STAGE_NAMESPACE}-validate-v{STAGE_VERSION}-{_digest(*names)}"


def _prepare_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    runtime: BatchRuntime = parameters["runtime"]
    names = _photo_names(parameters["photos"])
    policy = f"{runtime.prepare.name}-v{PREPARATION_VERSION}"
    return f"{STAGE_NAMESPACE}-prepare-v{STAGE_VERSION}-{_digest(policy, *names)}"


@task(name="fetch", task_run_name="fetch {label}", cache_key_fn=_fetch_key, persist_result=True)
async def fetch_photos(
    items: list[FetchItem], runtime: BatchRuntime, label: str
) -> list[PreparedPhoto]:
    """Make each photo's bytes available here and hash them; a failure is its reason."""
    return await fetch_chunk(items, runtime)


@task(
    name="validate",
    task_run_name="validate {label}",
    cache_key_fn=_validate_key,
    persist_result=True,
)
async def validate_photos(
    photos: list[PreparedPhoto], runtime: BatchRuntime, label: str
) -> list[PreparedPhoto]:
    """Check each photo from its header only: format, size, ratio, decompression bombs."""
    return await validate_chunk(photos, runtime)


@task(
    name="prepare",
    task_run_name="prepare {label}",
    cache_key_fn=_prepare_key,
    persist_result=True,
)
async def prepare_photos(
    photos: list[PreparedPhoto], runtime: BatchRuntime, label: str
) -> list[PreparedPhoto]:
    """The one decode per photo: the upload and its thumbnail, into the output location."""
    return await prepare_chunk(photos, runtime)


STAGE_TASKS: dict[str, Task[..., Coroutine[Any, Any, list[PreparedPhoto]]]] = {
    "fetch": fetch_photos,
    "validate": validate_photos,
    "prepare": prepare_photos,
}
