"""The values discovery and fetching hand to the rest of the pipeline."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict


class SourceItem(BaseModel):
    """One photo to process, as found by ``discover``."""

    model_config = ConfigDict(frozen=True)

    source: str
    """Absolute local path, or the URL exactly as given (it may carry a presigned query)."""
    item: str | None = None
    """The catalogue item (e.g. a SKU) from a manifest row."""
    template_ids: list[int] | None = None
    """HiDream template ids from a manifest row; None means "use the run's default"."""
    origin: str
    """The spec this came from: the manifest or folder path, glob, or redacted URL."""


class FetchedFile(BaseModel):
    """The bytes of one source, available as a local file."""

    model_config = ConfigDict(frozen=True)

    source: str
    path: Path
    sha256: str
    size: int
    temporary: bool
    """True if ``path`` is a copy ``fetch`` wrote into ``dest_dir`` (the caller may delete it).

    Copies are named by content hash, so two sources with identical bytes share one file:
    delete it only once every user of that hash is done.
    """
