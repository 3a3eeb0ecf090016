"""The names the stages give things: a prepared upload's key in the output location, and
the ledger keys of a send (by its source and by its upload)."""

from __future__ import annotations

from modelset import layout
from modelset.images import PREPARATION_VERSION
from modelset.ledger import submission_key, upload_key
from modelset.stages.models import PrepareOptions


def upload_key_of(source_sha256: str, options: PrepareOptions) -> str:
    return f"{layout.UPLOADS}/{source_sha256}-{options.name}-v{PREPARATION_VERSION}.jpg"


def key_for(base_url: str, template_id: int, source_sha256: str, options: PrepareOptions) -> str:
    return submission_key(
        base_url=base_url,
        template_id=template_id,
        source_sha256=source_sha256,
        policy=options.name,
        version=PREPARATION_VERSION,
    )


def upload_key_for(
    base_url: str, template_id: int, upload_sha256: str, options: PrepareOptions
) -> str:
    return upload_key(
        base_url=base_url,
        template_id=template_id,
        upload_sha256=upload_sha256,
        policy=options.name,
    )
