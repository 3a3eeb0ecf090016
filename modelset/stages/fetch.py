"""The fetch stage: a photo's bytes made available on this machine, and their hash."""

from __future__ import annotations

from pathlib import Path

from modelset.images import ImageRejected
from modelset.sources import FetchError, fetch
from modelset.stages.models import PreparedPhoto, PrepareOptions
from modelset.stages.workspace import Workspace
from modelset.storage import is_remote


def is_local_file(source: str) -> bool:
    return not is_remote(source) and Path(source).is_file()


def fetch_photo(
    source: str, workspace: Workspace, options: PrepareOptions, *, known_sha256: str | None = None
) -> PreparedPhoto:
    """Make the source's bytes available here and hash them; a failure is its reason.

    Local files are read in place (``known_sha256`` skips hashing them again); remote ones
    are copied into the scratch folder (transient network errors are retried with
    backoff by :func:`~modelset.sources.fetch`).
    """
    if known_sha256 is not None and is_local_file(source):
        return PreparedPhoto(source=source, source_sha256=known_sha256)
    try:
        fetched = fetch(
            source,
            workspace.fetched,
            max_bytes=options.max_fetch_bytes,
            timeout=options.timeout,
            allow_private=options.allow_private_urls,
        )
    except FetchError as exc:
        return PreparedPhoto(source=source, reason=f"fetch failed: {exc}")
    if fetched.temporary:
        workspace.fetched_files[fetched.sha256] = fetched.path
    return PreparedPhoto(source=source, source_sha256=fetched.sha256)


def source_file(photo: PreparedPhoto, workspace: Workspace, options: PrepareOptions) -> Path:
    """The bytes of a fetched photo on this machine (fetched again if only a cached fetch
    result came from another machine or run)."""
    assert photo.source_sha256 is not None
    if is_local_file(photo.source):
        return Path(photo.source)
    path = workspace.fetched_files.get(photo.source_sha256)
    if path is not None and path.exists():
        return path
    again = fetch_photo(photo.source, workspace, options)
    if again.reason is not None or again.source_sha256 != photo.source_sha256:
        raise ImageRejected(again.reason or "the source changed since it was fetched")
    return workspace.fetched_files[photo.source_sha256]
