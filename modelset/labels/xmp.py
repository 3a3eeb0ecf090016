"""The machine-readable labels in a file's XMP, written without touching its pixels.

Two properties: IPTC's ``Iptc4xmpExt:DigitalSourceType`` (what Google, Meta and stock
sites read) and the TC260 ``AIGC`` record (GB 45438-2025). pyexiv2 (exiv2, bundled in its
wheel) rewrites the XMP packet of a JPEG, PNG or WebP held in memory and copies every
other byte of the image as it was: a decode of the result equals a decode of the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyexiv2

from modelset.labels._exceptions import LabelError, UnlabelledFormat
from modelset.labels.aigc import TC260_NAMESPACE, TC260_PREFIX, AigcRecord

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
# What an upstream may have said of a generated image already, and is kept.
GENERATED_SOURCE_TYPES = frozenset(
    f"http://cv.iptc.org/newscodes/digitalsourcetype/{code}"
    for code in (
        "trainedAlgorithmicMedia",
        "compositeWithTrainedAlgorithmicMedia",
        "algorithmicMedia",
        "compositeSynthetic",
    )
)
SOURCE_TYPE_KEY = "Xmp.iptcExt.DigitalSourceType"
AIGC_KEY = f"Xmp.{TC260_PREFIX}.AIGC"

pyexiv2.registerNs(TC260_NAMESPACE, TC260_PREFIX)


@dataclass(frozen=True)
class XmpLabels:
    """The labels an image's XMP carries (None: absent)."""

    digital_source_type: str | None
    aigc: AigcRecord | None
    aigc_text: str | None  # the property as written, even when it is not a record


def image_mime(data: bytes) -> str | None:
    """The MIME type of a JPEG, PNG or WebP by its first bytes; None for any other."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def read_labels(data: bytes) -> XmpLabels:
    """The labels in an image's XMP."""
    values = _read_xmp(data)
    text = values.get(AIGC_KEY)
    aigc_text = text if isinstance(text, str) else None
    source_type = values.get(SOURCE_TYPE_KEY)
    return XmpLabels(
        digital_source_type=source_type if isinstance(source_type, str) else None,
        aigc=AigcRecord.from_json(aigc_text) if aigc_text is not None else None,
        aigc_text=aigc_text,
    )


def write_labels(data: bytes, ours: AigcRecord) -> bytes:
    """``data`` with the digital source type and one ``AIGC`` record in its XMP.

    A record already there is kept with only its empty propagator fields filled from
    ``ours``; a generated-media source type already there is kept too. Returns ``data``
    itself when it carries the labels as they would be written.
    """
    if image_mime(data) is None:
        raise UnlabelledFormat(None)
    present = read_labels(data)
    record = present.aigc.kept_with(ours) if present.aigc is not None else ours
    changes: dict[str, str] = {}
    if present.digital_source_type not in GENERATED_SOURCE_TYPES:
        changes[SOURCE_TYPE_KEY] = TRAINED_ALGORITHMIC_MEDIA
    if record != present.aigc or present.aigc_text != record.to_json():
        changes[AIGC_KEY] = record.to_json()
    if not changes:
        return data
    try:
        with pyexiv2.ImageData(data) as image:
            image.modify_xmp(changes)
            written: bytes = image.get_bytes()
    except RuntimeError as exc:  # exiv2's errors all arrive as RuntimeError
        raise LabelError(f"could not write the labels ({exc})") from None
    return written


def _read_xmp(data: bytes) -> dict[str, object]:
    if image_mime(data) is None:
        raise UnlabelledFormat(None)
    try:
        with pyexiv2.ImageData(data) as image:
            values: dict[str, object] = image.read_xmp()
    except RuntimeError as exc:
        raise LabelError(f"could not read the image's XMP ({exc})") from None
    return values
