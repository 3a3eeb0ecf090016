"""The upload event: ``modelset.photo.uploaded``, which starts generate-model-sets/on-upload."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from modelset.hashing import hash_file
from modelset.storage import is_remote

UPLOAD_EVENT = "modelset.photo.uploaded"


def upload_event(source: str, template_ids: list[int], item: str | None) -> dict[str, Any]:
    """The event's fields: resource ``modelset.photo.<sha256 or URL>`` and its payload."""
    if is_remote(source):
        identity = source
    else:
        path = Path(source).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"no such photo: {source}")
        source, identity = str(path), hash_file(path)
    payload: dict[str, Any] = {"source": source, "template_ids": template_ids}
    if item:
        payload["item"] = item
    return {
        "event": UPLOAD_EVENT,
        "resource": {"prefect.resource.id": f"modelset.photo.{identity}"},
        "payload": payload,
    }


def emit_upload(source: str, template_ids: list[int], item: str | None = None) -> str:
    """Send the upload event to the Prefect API; returns the event id."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    # The events worker narrates its own shutdown ("Still processing items..."): the
    # command prints its own line instead.
    logging.getLogger(EventsWorker.__name__).setLevel(logging.ERROR)
    event = emit_event(**upload_event(source, template_ids, item))
    if event is None:
        raise RuntimeError("Prefect did not take the event: is PREFECT_API_URL set?")
    EventsWorker.drain_all()
    return str(event.id)
