"""What this product writes into each image it stores: the XMP labels always, a C2PA
manifest where a signing key is configured, and on a published copy the visible label
where the run asked for one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelset.labels.aigc import AigcRecord
from modelset.labels.visible import VisibleLabel, draw_label, find_font
from modelset.labels.xmp import TRAINED_ALGORITHMIC_MEDIA, read_labels, write_labels
from modelset.options import LabelPosition

if TYPE_CHECKING:  # c2pa is imported only where a key is configured: it takes 0.1 s
    from modelset.labels.signing import SigningKey

GENERATION_ASSERTION = "com.modelset.generation"
REVIEW_ASSERTION = "com.modelset.review"


@dataclass(frozen=True)
class Generated:
    """Where a stored output came from."""

    task_id: str
    request_id: str  # the manifest row's: PropagateID
    template_id: int
    source_preview: bytes | None = field(default=None, repr=False)  # C2PA ingredient


@dataclass(frozen=True)
class Reviewed:
    """What a person decided about the set a published copy belongs to."""

    task_id: str
    request_id: str
    template_id: int
    decision: str
    reviewer: str
    note: str = ""


@dataclass(frozen=True)
class Labelling:
    """Who the labels name, and the key a manifest is signed with (None: not signed)."""

    producer: str
    propagator: str = ""
    signing: SigningKey | None = field(default=None, repr=False)
    label_font: Path | None = None  # HIDREAM_LABEL_FONT; None: one fontconfig finds

    def visible(self, text: str, position: LabelPosition) -> VisibleLabel:
        """The visible label drawing ``text`` at ``position``, in a font that has it."""
        return VisibleLabel(text, position, find_font(text, self.label_font))

    def record(self, produce_id: str, request_id: str) -> AigcRecord:
        """Our ``AIGC`` record: the propagator's fields only where one is configured."""
        return AigcRecord(
            ContentProducer=self.producer,
            ProduceID=produce_id,
            ContentPropagator=self.propagator,
            PropagateID=request_id if self.propagator else "",
        )

    def output(self, data: bytes, made: Generated, sub_task_id: str) -> bytes:
        """A downloaded image as it is stored: labelled, then signed."""
        labelled = write_labels(data, self.record(sub_task_id, made.request_id))
        if self.signing is None:
            return labelled
        from modelset.labels.signing import Ingredient, Provenance, sign

        ingredient = (
            Ingredient("source photo (preview)", made.source_preview, "inputTo")
            if made.source_preview is not None
            else None
        )
        details = {"template_id": made.template_id, "task_id": made.task_id}
        provenance = Provenance(
            title=sub_task_id,
            actions=[_action("c2pa.created", details)],
            assertions={
                GENERATION_ASSERTION: {
                    **details,
                    "sub_task_id": sub_task_id,
                    "request_id": made.request_id,
                }
            },
            ingredient=ingredient,
        )
        return sign(labelled, self.signing, provenance)

    def published(self, stored: bytes, reviewed: Reviewed, visible: VisibleLabel | None) -> bytes:
        """A stored output as it is published: with the visible label if asked (encoded
        again), the output's labels kept (ours where it has none), then signed."""
        kept = read_labels(stored).aigc
        ours = self.record(reviewed.task_id, reviewed.request_id)
        record = kept.kept_with(ours) if kept is not None else ours
        drawn = draw_label(stored, visible) if visible is not None else stored
        labelled = write_labels(drawn, record)
        if self.signing is None:
            return labelled
        from modelset.labels.signing import Ingredient, Provenance, sign

        details = {"template_id": reviewed.template_id, "task_id": reviewed.task_id}
        actions = [_action("c2pa.opened", details)]
        if visible is not None:
            actions.append(
                {"action": "c2pa.edited", "description": f"visible label drawn: {visible.text}"}
            )
        provenance = Provenance(
            title=f"{reviewed.task_id} (published)",
            actions=actions,
            assertions={
                REVIEW_ASSERTION: {
                    **details,
                    "decision": reviewed.decision,
                    "reviewer": reviewed.reviewer,
                    "note": reviewed.note,
                }
            },
            ingredient=Ingredient("stored output", stored, "parentOf"),
        )
        return sign(labelled, self.signing, provenance)


def _action(name: str, details: dict[str, Any]) -> dict[str, Any]:
    return {
        "action": name,
        "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
        "softwareAgent": {"name": "modelset"},
        "parameters": {"com.modelset": details},
    }
