"""The download stage: a finished set's images into its folder of the output location,
each verified to decode, with the thumbnails the report and the summary show."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
from PIL import Image

from modelset import layout
from modelset.hidream import HiDreamClient, HiDreamError, TaskResult
from modelset.labels import Generated, LabelError, Labelling
from modelset.report import input_thumbnail_key, output_thumbnail_key, store_set_thumbnails
from modelset.stages.pictures import OUTPUT_THUMBNAIL, SetPictures, thumbnail_jpeg
from modelset.stages.workspace import Workspace
from modelset.storage import AlreadyExists, Store, off_loop, read_or_none


async def download_set(
    client: HiDreamClient,
    downloads: httpx.AsyncClient,
    result: TaskResult,
    task_id: str,
    workspace: Workspace,
    folder: str,
    labels: SetLabels,
) -> tuple[list[str], list[str]]:
    """Download a set's images into ``folder``, each labelled as it is stored; returns
    their keys and the problems."""
    store, pictures = workspace.store, workspace.pictures
    present = await off_loop(store, _claim_folder, store, folder, task_id)
    made = await off_loop(store, labels.generated, workspace, task_id)
    kept = workspace.kept
    thumbnails: dict[str, bytes] | None = None if store.is_local else {}
    outputs: list[str] = []
    problems: list[str] = []
    for index, sub in enumerate(result.sub_task_results, start=1):
        if not sub.succeeded:
            continue
        target = f"{folder}/{index}.jpg"
        if target in present:
            outputs.append(target)
            continue
        label = partial(labels.labelling.output, made=made, sub_task_id=sub.sub_task_id)
        problem = await download_image(
            downloads, sub.image, store, target, pictures, kept, thumbnails, label=label
        )
        if problem is not None:
            # Result URLs expire: ask for fresh ones once before giving up.
            try:
                fresh = await client.get_result(task_id=task_id)
            except HiDreamError as exc:
                problems.append(f"image {index}: {problem}; fresh URLs unavailable ({exc.message})")
                continue
            url = next(
                (s.image for s in fresh.sub_task_results if s.sub_task_id == sub.sub_task_id),
                "",
            )
            if url:
                problem = await download_image(
                    downloads, url, store, target, pictures, kept, thumbnails, label=label
                )
        if problem is None:
            outputs.append(target)
        else:
            problems.append(f"image {index}: {problem}")
    if thumbnails:
        await off_loop(
            store,
            partial(store_set_thumbnails, store, folder, thumbnails, merge=bool(present)),
        )
    return outputs, problems


@dataclass(frozen=True)
class SetLabels:
    """What a set's images are labelled with: the run's labelling and the set's ids."""

    labelling: Labelling
    request_id: str
    template_id: int
    source_sha256: str

    def generated(self, workspace: Workspace, task_id: str) -> Generated:
        """Where the set came from; with a signing key, the source photo's preview too (the
        manifest's ingredient): on this machine when it is, else one read of the store."""
        preview = None
        if self.labelling.signing is not None:
            preview = _source_preview(workspace, self.source_sha256)
        return Generated(task_id, self.request_id, self.template_id, preview)


def _source_preview(workspace: Workspace, source_sha256: str) -> bytes | None:
    key = input_thumbnail_key(source_sha256)
    local = workspace.store.local_path(key)
    if local is None and workspace.kept is not None:
        local = workspace.kept / key
    if local is not None and local.exists():
        return local.read_bytes()
    blob = read_or_none(workspace.store, key)
    return None if blob is None else blob.data


def _claim_folder(store: Store, folder: str, task_id: str) -> set[str]:
    """The images already in a set's folder that came from this very task; a refreshed or
    retried set's folder is emptied of an older task's images and marked as this one's."""
    marker_key = f"{folder}/{layout.TASK_MARKER}"
    try:
        store.create(marker_key, task_id.encode())
        return set()  # the first set here: every image is written after its marker
    except AlreadyExists:
        pass
    marker = read_or_none(store, marker_key)
    present = set(store.list(folder))
    if marker is not None and marker.data.decode().strip() == task_id:
        return present
    for stale in sorted(present):
        if stale.endswith(".jpg"):
            store.delete(stale)
    store.write(f"{folder}/{layout.TASK_MARKER}", task_id.encode())
    return set()


async def download_image(
    downloads: httpx.AsyncClient,
    url: str,
    store: Store,
    target: str,
    pictures: SetPictures | None = None,
    kept: Path | None = None,
    thumbnails: dict[str, bytes] | None = None,
    *,
    label: Callable[[bytes], bytes] | None = None,
) -> str | None:
    """Download one image, verified to decode; the problem, or None when it is stored.

    ``label`` turns the downloaded bytes into the stored ones (``Labelling.output``): the
    labels go in before the one write.

    On a bucket a small thumbnail of it goes to ``thumbnails``, which the caller stores
    with the rest of its set's (``report.store_set_thumbnails``), for the report to embed:
    a private bucket's images do not load in a browser; a copy goes to ``kept`` (see
    ``Workspace.kept``). The same thumbnail goes to ``pictures`` when it wants this image.
    """
    try:
        response = await downloads.get(url)
    except httpx.HTTPError as exc:
        return f"download failed ({type(exc).__name__})"
    if response.status_code != 200:
        return f"download failed (HTTP {response.status_code})"
    try:
        with Image.open(io.BytesIO(response.content)) as image:
            image.verify()
    except Exception:  # Pillow raises many types for a broken file
        return "downloaded file is not a valid image"
    try:
        await off_loop(
            store, _store_image, store, target, response.content, pictures, kept, thumbnails, label
        )
    except LabelError as exc:
        return str(exc)
    return None


def _store_image(
    store: Store,
    target: str,
    data: bytes,
    pictures: SetPictures | None,
    kept: Path | None,
    thumbnails: dict[str, bytes] | None,
    label: Callable[[bytes], bytes] | None,
) -> None:
    if label is not None:
        data = label(data)
    keeping = pictures if pictures is not None and pictures.wants(target) else None
    if thumbnails is not None or keeping is not None:
        thumbnail = thumbnail_jpeg(io.BytesIO(data), OUTPUT_THUMBNAIL)
        if thumbnails is not None:
            thumbnails[target] = thumbnail
        if kept is not None:
            copy = kept / output_thumbnail_key(target)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(thumbnail)
        if keeping is not None:
            keeping.made[target] = thumbnail
    store.write(target, data)
