"""The prepare stage: the one decode of a validated photo into its upload and thumbnail,
and the upload found again on this machine when a submit needs it."""

from __future__ import annotations

from pathlib import Path

from modelset.atomic import write_bytes
from modelset.images import THUMBNAIL_SIZE, ImageRejected, prepare_image
from modelset.report import input_thumbnail_key
from modelset.stages.fetch import fetch_photo, source_file
from modelset.stages.keys import upload_key_of
from modelset.stages.models import PreparedPhoto, PrepareOptions
from modelset.stages.pictures import thumbnail_jpeg
from modelset.stages.validate import validate_photo
from modelset.stages.workspace import Workspace
from modelset.storage import read_or_none


def prepare_validated(
    photo: PreparedPhoto, workspace: Workspace, options: PrepareOptions
) -> PreparedPhoto:
    """The one decode: the upload (upright, 3:4, <=2048 px, no metadata) and a thumbnail,
    both stored in the output location."""
    if photo.reason is not None or photo.upload_sha256 is not None:
        return photo
    assert photo.source_sha256 is not None
    store = workspace.store
    key = upload_key_of(photo.source_sha256, options)
    upload = workspace.file_for(key)
    preview_key = input_thumbnail_key(photo.source_sha256)
    preview = workspace.file_for(preview_key)
    try:
        source = source_file(photo, workspace, options)
        source_bytes = source.stat().st_size  # before a fetched copy is deleted
        prepared = prepare_image(
            source,
            upload,
            policy=options.policy,
            fit=options.fit,
            thumbnail=None if preview.exists() else preview,
        )
        _write_thumbnail(prepared.path, preview)
    except ImageRejected as exc:
        return photo.model_copy(update={"reason": exc.reason})
    finally:
        fetched = workspace.fetched_files.pop(photo.source_sha256, None)
        if fetched is not None:
            fetched.unlink(missing_ok=True)
    if workspace.kept is not None:
        store.write_file(key, upload)
        store.write_file(preview_key, preview)
        kept = workspace.kept / preview_key
        kept.parent.mkdir(parents=True, exist_ok=True)
        preview.replace(kept)
    return photo.model_copy(
        update={
            "upload_key": key,
            "upload_sha256": prepared.sha256,
            "thumbnail": preview_key,
            "sendable_as_is": prepared.check.sendable_as_is,
            "look": prepared.look,
            "upload_pixels": prepared.width * prepared.height,
            "source_bytes_per_pixel": source_bytes / (prepared.check.width * prepared.check.height),
        }
    )


def prepare_photo(source: str, workspace: Workspace, options: PrepareOptions) -> PreparedPhoto:
    """Fetch, validate and prepare one photo. Photo problems are returned, never raised."""
    fetched = fetch_photo(source, workspace, options)
    return prepare_validated(validate_photo(fetched, workspace, options), workspace, options)


def upload_on_disk(photo: PreparedPhoto, workspace: Workspace) -> Path | None:
    """The prepared upload where it already is on this machine's disk (one stat, cheap
    enough for the event loop), else None."""
    if photo.upload_key is None:
        return None
    local = workspace.file_for(photo.upload_key)
    return local if local.exists() else None


def upload_file(photo: PreparedPhoto, workspace: Workspace, options: PrepareOptions) -> Path | None:
    """The prepared upload as a file on this machine: from the output location (a bucket's
    copied into the scratch folder once), or prepared again if it is gone."""
    if photo.upload_key is None:
        return None
    if (found := upload_on_disk(photo, workspace)) is not None:
        return found
    if not workspace.store.is_local:  # a bucket's upload, copied here once
        blob = read_or_none(workspace.store, photo.upload_key)
        if blob is not None:
            local = workspace.file_for(photo.upload_key)
            write_bytes(local, blob.data, durable=False)
            return local
    again = prepare_validated(photo.model_copy(update={"upload_sha256": None}), workspace, options)
    if again.upload_sha256 != photo.upload_sha256:
        return None  # Pillow changed its bytes: this is no longer the upload paid for
    return upload_file(again, workspace, options) if again.upload_key else None


def _write_thumbnail(upload: Path, target: Path) -> None:
    """Make the preview from the upload if preparing did not."""
    if not target.exists():
        write_bytes(target, thumbnail_jpeg(upload, THUMBNAIL_SIZE))
