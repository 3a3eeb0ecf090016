"""What the ledger records, and the keys it records it under."""

from __future__ import annotations

import hashlib
import uuid
from enum import StrEnum

from pydantic import BaseModel, Field

LEDGER_KEY_VERSION = 1
UPLOAD_KEY_VERSION = 1


class SubmissionState(StrEnum):
    INTENT = "intent"  # claimed; the request may be on its way
    SUBMITTED = "submitted"  # the service answered with a task
    UNKNOWN = "outcome_unknown"  # sent, and whether a task exists could not be learnt
    FINISHED = "finished"  # the set's outcome is known (see ``outcome``)


class LedgerRecord(BaseModel):
    key: str
    attempt: int = 1
    state: SubmissionState
    request_id: str
    template_id: int
    source: str = ""
    item: str = ""  # the folder the set is downloaded into
    source_sha256: str
    upload_sha256: str | None = None
    look: str | None = None  # what the upload looks like (modelset.images.looks)
    task_id: str | None = None
    sub_task_ids: list[str] = Field(default_factory=list)
    outcome: str | None = None  # succeeded | failed | rejected, once FINISHED
    reason: str | None = None
    outputs: list[str] = Field(default_factory=list)
    claimed_by: str = ""  # host:pid of the last writer
    claimed_by_run: str = ""  # the run that made this attempt
    budget_period: str | None = None  # the period budget this attempt was spent under
    updated: str = ""

    @property
    def images_paid(self) -> int:
        return len(self.sub_task_ids)


def _hashed(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def submission_key(
    *, base_url: str, template_id: int, source_sha256: str, policy: str, version: int
) -> str:
    """The exactly-once key: what is paid for, never the code or Pillow's bytes."""
    return _hashed(
        f"modelset-ledger-v{LEDGER_KEY_VERSION}",
        base_url.rstrip("/").lower(),
        str(template_id),
        source_sha256,
        policy,
        f"prep-v{version}",
    )


def upload_key(*, base_url: str, template_id: int, upload_sha256: str, policy: str) -> str:
    """The key of what is actually sent: two sources whose uploads are byte-identical
    (the same picture with other metadata) share it, and are paid for once."""
    return _hashed(
        f"modelset-upload-v{UPLOAD_KEY_VERSION}",
        base_url.rstrip("/").lower(),
        str(template_id),
        upload_sha256,
        policy,
    )


def request_id_for(key: str, attempt: int) -> str:
    """Stable per key and attempt, shaped like the service's own ids."""
    return str(uuid.UUID(key[:32])) if attempt == 1 else f"{uuid.UUID(key[:32])}-{attempt}"
