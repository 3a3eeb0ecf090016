"""Prefect result storage in the run's output location, through the storage seam.

Prefect keeps cached task results in ``$PREFECT_HOME/storage`` unless told otherwise: on
a container that is an empty disk every time, so nothing would ever be reused, and
nothing would be shared between workers. This block stores them under
``<out>/.modelset/prefect-results/`` on whatever the output location is, a folder or a
bucket, so a cache entry written by one worker is read by the next.
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

import anyio
from prefect.exceptions import ObjectAlreadyExists
from prefect.filesystems import WritableFileSystem
from prefect.settings import PREFECT_API_URL

from modelset import layout
from modelset.storage import NotFound, open_store


class OutputLocationResults(WritableFileSystem):
    """Result storage in a modelset output location (a folder or a bucket prefix)."""

    _block_type_name = "modelset output location results"
    location: str

    def _key(self, path: str) -> str:
        return f"{layout.PREFECT_RESULTS}/{quote(path, safe='')}"

    async def aread_path(self, path: str) -> bytes:
        store = open_store(self.location)
        try:
            blob = await anyio.to_thread.run_sync(store.read, self._key(path))
        except NotFound:
            raise ValueError(f"Path {path} does not exist.") from None
        return blob.data

    async def awrite_path(self, path: str, content: bytes) -> str:
        store = open_store(self.location)
        await anyio.to_thread.run_sync(store.write, self._key(path), content)
        return path

    async def read_path(self, path: str) -> bytes:
        return await self.aread_path(path)

    async def write_path(self, path: str, content: bytes) -> None:
        await self.awrite_path(path, content)


_saved: dict[tuple[str, str], OutputLocationResults] = {}
_SAVE_ATTEMPTS = 3


async def results_storage(location: str) -> OutputLocationResults:
    """The saved block for ``location`` (Prefect persists results only through saved
    blocks); saved once per process and Prefect API, under a name derived from the
    location. Call it once per run, not from concurrent tasks."""
    server = (PREFECT_API_URL.value() or "", location)
    if server not in _saved:
        block = OutputLocationResults(location=location)
        name = f"modelset-{hashlib.sha256(location.encode()).hexdigest()[:16]}"
        for attempt in range(_SAVE_ATTEMPTS):
            try:
                await block.save(name, overwrite=True)
                break
            except ObjectAlreadyExists:
                # Another process registered the block type or saved the document first;
                # saving again finds it.
                if attempt == _SAVE_ATTEMPTS - 1:
                    raise
        _saved[server] = block
    return _saved[server]
