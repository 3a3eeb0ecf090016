"""The validate stage: a fetched photo checked from its header alone, before any decode."""

from __future__ import annotations

from modelset.images import ImageRejected, inspect_image
from modelset.stages.fetch import source_file
from modelset.stages.models import PreparedPhoto, PrepareOptions
from modelset.stages.workspace import Workspace


def validate_photo(
    photo: PreparedPhoto, workspace: Workspace, options: PrepareOptions
) -> PreparedPhoto:
    """Check a fetched photo from its header only: format, size, ratio, bombs."""
    if photo.reason is not None or photo.validated:
        return photo
    try:
        check = inspect_image(source_file(photo, workspace, options))
    except ImageRejected as exc:
        return photo.model_copy(update={"reason": exc.reason})
    return photo.model_copy(update={"validated": True, "sendable_as_is": check.sendable_as_is})
