"""Fetching, validating and preparing photos: a task run per stage per chunk of photos.

The design card's stages show in the run graph as ``fetch 1-16 of 200``,
``validate 1-16 of 200`` and ``prepare 1-16 of 200``. A task run costs about 60 ms of CPU
(``prefect-notes.md``), so each takes a chunk. Pillow work runs in threads, one per
core, and only hashes and keys come back.

Each stage is cached by Prefect, in the output location (``tasks/results.py``), keyed on
what determines its result and on nothing else: the photos' content hashes (for a remote
source not fetched yet, its URL with ETag or Last-Modified and size), the policy, the
fit and the preparation version; never a path. A cached value holds no path either
(``source`` is blanked and put back by the caller), so any worker can use it: a run
retried from the UI, or a rerun with other templates, shows Cached task runs and
fetches and prepares nothing again.

Retries: a fetch retries transient network errors per photo inside the core (a photo
that still fails gets its reason, the chunk goes on); validate and prepare are
deterministic and never retried.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import anyio
from prefect import task
from prefect.context import TaskRunContext
from pydantic import BaseModel

from modelset.images import PREPARATION_VERSION
from modelset.stages import (
    PreparedPhoto,
    fetch_photo,
    prepare_validated,
    validate_photo,
)
from modelset.tasks.events import final_state_only
from modelset.tasks.runtime import BatchRuntime

_CPU_LIMITER = anyio.CapacityLimiter(max(1, os.cpu_count() or 1))
STAGE_NAMESPACE = "modelset-stage"
STAGE_VERSION = 3  # 2: HEIC is read; a prepared photo carries its look; 3: and its rank


class FetchItem(BaseModel):
    """A source to fetch, and what names its bytes when that is known beforehand."""

    source: str
    sha256: str | None = None  # a local file, hashed already
    identity: str | None = None  # a remote source's URL + ETag/Last-Modified + size


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


def _portable(photos: list[PreparedPhoto]) -> list[PreparedPhoto]:
    """What a cache may keep: the results without the sources as given."""
    return [photo.model_copy(update={"source": ""}) for photo in photos]


async def _each(
    stage: Callable[..., PreparedPhoto], photos: list[Any], runtime: BatchRuntime
) -> list[PreparedPhoto]:
    return [
        await anyio.to_thread.run_sync(
            stage, photo, runtime.workspace, runtime.prepare, limiter=_CPU_LIMITER
        )
        for photo in photos
    ]


def _fetch_one(item: FetchItem, workspace: Any, options: Any) -> PreparedPhoto:
    return fetch_photo(item.source, workspace, options, known_sha256=item.sha256)


@task(
    name="fetch",
    task_run_name="fetch {label}",
    cache_key_fn=_fetch_key,
    persist_result=True,
)
async def fetch_photos(
    items: list[FetchItem], runtime: BatchRuntime, label: str
) -> list[PreparedPhoto]:
    """Make each photo's bytes available here and hash them; a failure is its reason."""
    return _portable(await _each(_fetch_one, items, runtime))


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
    return _portable(await _each(validate_photo, photos, runtime))


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
    return _portable(await _each(prepare_validated, photos, runtime))


final_state_only(fetch_photos, validate_photos, prepare_photos)
