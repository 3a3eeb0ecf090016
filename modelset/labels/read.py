"""What labels an image carries, for ``modelset labels`` and for a team's audit."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import c2pa

from modelset.labels._exceptions import UnlabelledFormat
from modelset.labels.signing import OFFLINE_SETTINGS
from modelset.labels.xmp import XmpLabels, image_mime, read_labels

VALID_STATES = frozenset({"Valid", "Trusted"})


@dataclass(frozen=True)
class ManifestCheck:
    """An image's C2PA manifest, as the c2pa SDK validates it (offline)."""

    state: str | None  # Trusted, Valid or Invalid; None: no manifest
    failures: list[str] = field(default_factory=list)  # validation codes that failed
    manifest: dict[str, Any] | None = None  # the active manifest

    @property
    def validates(self) -> bool:
        return self.state in VALID_STATES

    def actions(self) -> list[dict[str, Any]]:
        """The active manifest's actions."""
        for assertion in (self.manifest or {}).get("assertions", []):
            if str(assertion.get("label", "")).startswith("c2pa.actions"):
                found: list[dict[str, Any]] = assertion["data"]["actions"]
                return found
        return []

    def assertion(self, label: str) -> dict[str, Any] | None:
        for assertion in (self.manifest or {}).get("assertions", []):
            if assertion.get("label") == label:
                data: dict[str, Any] = assertion["data"]
                return data
        return None


@dataclass(frozen=True)
class ImageLabels:
    mime: str
    xmp: XmpLabels
    c2pa: ManifestCheck


def check_manifest(data: bytes, trust_anchors: str | None = None) -> ManifestCheck:
    """The image's C2PA manifest and whether it validates; with ``trust_anchors`` (PEM
    certificates) a manifest signed under one of them is ``Trusted``."""
    mime = image_mime(data)
    if mime is None:
        raise UnlabelledFormat(None)
    settings: dict[str, Any] = dict(OFFLINE_SETTINGS)
    if trust_anchors:
        settings["trust"] = {"trust_anchors": trust_anchors}
        settings["verify"] = {**OFFLINE_SETTINGS["verify"], "verify_trust": True}
    try:
        with (
            c2pa.Context.from_dict(settings) as context,
            c2pa.Reader(mime, io.BytesIO(data), context=context) as reader,
        ):
            results = reader.get_validation_results() or {}
            failures = [
                str(entry.get("code"))
                for entry in (results.get("activeManifest") or {}).get("failure", [])
            ]
            manifest = reader.get_active_manifest()
            return ManifestCheck(reader.get_validation_state(), failures, manifest)
    except c2pa.C2paError as exc:
        if "ManifestNotFound" in type(exc).__name__ or "not found" in str(exc).lower():
            return ManifestCheck(None)
        return ManifestCheck("Invalid", [str(exc)])


def image_labels(data: bytes, trust_anchors: str | None = None) -> ImageLabels:
    """Every label ``data`` carries."""
    mime = image_mime(data)
    if mime is None:
        raise UnlabelledFormat(None)
    return ImageLabels(mime, read_labels(data), check_manifest(data, trust_anchors))
