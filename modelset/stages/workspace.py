"""Where the stages work: the output location every worker shares, and this machine's
scratch folder."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from modelset import layout
from modelset.stages.pictures import SetPictures
from modelset.storage import Store, open_store


class Workspace:
    """An output location (folder or bucket) and this machine's scratch folder.

    Everything a later run or another worker reads back goes to ``store``: the sets, the
    report, the ledger, thumbnails and the prepared uploads. What only this run needs (a
    fetched copy of a remote source) goes to ``scratch``: on a folder that is
    ``.modelset/`` beside the report, on a bucket a temporary folder that
    :func:`open_workspace` removes at the end of the run.
    """

    def __init__(self, store: Store, scratch: Path) -> None:
        self.store = store
        self.scratch = scratch
        self.uploads = scratch / layout.SCRATCH_UPLOADS
        self.fetched = scratch / layout.SCRATCH_FETCHED
        # On a bucket: copies of the thumbnails this run stored there, by key, so that the
        # report and the summary read them here instead of asking the bucket again.
        self.kept: Path | None = None if store.is_local else scratch / layout.SCRATCH_KEPT
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.fetched.mkdir(parents=True, exist_ok=True)
        # Fetched copies of remote sources by content hash, for the stages after fetch.
        self.fetched_files: dict[str, Path] = {}
        self.pictures = SetPictures()

    def file_for(self, key: str) -> Path:
        """Where ``key`` is a file on this machine: in a folder, the key's own file; from a
        bucket, its copy in the scratch folder (which may not exist yet)."""
        return self.store.local_path(key) or self.uploads / Path(key).name

    @property
    def out(self) -> str:
        """The location as a person names it (a path or ``s3://bucket/prefix``)."""
        return self.store.url


@contextlib.contextmanager
def open_workspace(location: str | Path) -> Iterator[Workspace]:
    """The workspace of an output location, its scratch folder removed afterwards."""
    store = open_store(location)
    local = store.local_path(layout.STATE_DIR)
    if local is None:
        with tempfile.TemporaryDirectory(prefix="modelset-") as scratch:
            yield Workspace(store, Path(scratch))
        return
    workspace = Workspace(store, local)
    try:
        yield workspace
    finally:
        # Copies of remote sources whose preparation came from the cache.
        for path in workspace.fetched_files.values():
            path.unlink(missing_ok=True)
