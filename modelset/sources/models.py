"""The values discovery and fetching hand to the rest of the pipeline."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


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


NAMES_SHOWN = 10
"""How many of the files passed over for one reason are named."""
NOT_AN_IMAGE = "not an image"
RAW_CAMERA_FILE = "RAW camera file (.dng, .cr2, .nef, .arw...): export a JPEG or HEIC"
HIDDEN = "hidden"
_REASONS = (NOT_AN_IMAGE, RAW_CAMERA_FILE, HIDDEN)


class PassedOver(BaseModel):
    """The files a folder, glob or bucket scan did not take: how many for each reason,
    and the first :data:`NAMES_SHOWN` names (relative to what was scanned)."""

    counts: dict[str, int] = Field(default_factory=dict)
    names: dict[str, list[str]] = Field(default_factory=dict)

    def add(self, reason: str, name: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        shown = self.names.setdefault(reason, [])
        if len(shown) < NAMES_SHOWN:
            shown.append(name)

    def merge(self, other: PassedOver) -> None:
        for reason, count in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + count
            shown = self.names.setdefault(reason, [])
            shown.extend(other.names.get(reason, [])[: NAMES_SHOWN - len(shown)])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def entries(self) -> list[tuple[str, int, str]]:
        """Each reason with its count and its names, ``a.txt, b.pdf, ...`` where more
        were passed over than are named."""
        entries = []
        for reason, count in sorted(self.counts.items(), key=_reason_order):
            shown = self.names[reason]
            more = ", ..." if count > len(shown) else ""
            entries.append((reason, count, ", ".join(shown) + more))
        return entries

    def heading(self) -> str:
        """``passed over: 3 files``."""
        return f"passed over: {self.total} file{'' if self.total == 1 else 's'}"

    def lines(self) -> list[str]:
        """A line per reason: ``not an image: 2 (a.txt, b.pdf)``."""
        return [f"{reason}: {count} ({names})" for reason, count, names in self.entries()]

    def text(self) -> str:
        """One line: ``not an image: 2 (a.txt, b.pdf); hidden: 1 (.DS_Store)``."""
        return "; ".join(self.lines())


def _reason_order(entry: tuple[str, int]) -> int:
    return _REASONS.index(entry[0]) if entry[0] in _REASONS else len(_REASONS)
