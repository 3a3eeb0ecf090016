"""The stages one photo travels through, as plain functions (no Prefect here).

``prepare_photo``: fetch + validate + prepare (one decode), cached by source hash and
policy. ``submit_once``: exactly once through the :class:`~modelset.ledger.Ledger`.
``collect_set``: wait for the set and download it. The Prefect tasks wrap these.

A module per stage; every name the single ``modelset.stages`` module had is still
importable from here.
"""

from modelset.stages.collect import collect_once, collect_set
from modelset.stages.decide import needs_submit
from modelset.stages.download import download_image
from modelset.stages.fetch import fetch_photo, is_local_file
from modelset.stages.keys import key_for, upload_key_for, upload_key_of
from modelset.stages.models import PreparedPhoto, PrepareOptions, SubmitPolicy
from modelset.stages.pictures import (
    OUTPUT_THUMBNAIL,
    SetPictures,
    jpeg_bytes,
    small_image,
    stored_preview,
    thumbnail_jpeg,
)
from modelset.stages.prepare import prepare_photo, prepare_validated, upload_file, upload_on_disk
from modelset.stages.resolve import adopt_task, not_collected, submitted
from modelset.stages.rows import row_for
from modelset.stages.submit import submit_once
from modelset.stages.validate import validate_photo
from modelset.stages.workspace import Workspace, open_workspace

__all__ = [
    "OUTPUT_THUMBNAIL",
    "PrepareOptions",
    "PreparedPhoto",
    "SetPictures",
    "SubmitPolicy",
    "Workspace",
    "adopt_task",
    "collect_once",
    "collect_set",
    "download_image",
    "fetch_photo",
    "is_local_file",
    "jpeg_bytes",
    "key_for",
    "needs_submit",
    "not_collected",
    "open_workspace",
    "prepare_photo",
    "prepare_validated",
    "row_for",
    "small_image",
    "stored_preview",
    "submit_once",
    "submitted",
    "thumbnail_jpeg",
    "upload_file",
    "upload_key_for",
    "upload_key_of",
    "upload_on_disk",
    "validate_photo",
]
