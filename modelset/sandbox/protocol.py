"""The wire rules of the HiDream API as the sandbox enforces them: codes and parameters."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Container
from dataclasses import dataclass

from modelset.sandbox._exceptions import ApiError

OK = 0
INVALID_PARAMETER = 1001
TOKEN_INVALID = 1002
TASK_NOT_FOUND = 1003
RATE_LIMITED = 1009
NO_CREDITS = 2007

MAX_IMAGE_BYTES = 30 * 1024 * 1024
_WHITESPACE = b" \t\n\r\v\f"  # base64 wrapped in lines (MIME style) is accepted


def invalid(what: str) -> ApiError:
    return ApiError(INVALID_PARAMETER, f"invalid parameter: {what}")


@dataclass(frozen=True)
class SubmitForm:
    """A submit body that passed the field checks (the photo itself is checked later)."""

    image: bytes | str
    """The decoded file, or an http(s) URL still to fetch."""
    template_id: int
    request_id: str | None
    notify_url: str | None


def _is_http_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def _optional_str(body: dict[str, object], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise invalid(f"{key} must be a non-empty string")
    return value


def _decode_image(value: str) -> bytes | str:
    if _is_http_url(value):
        return value
    if value.startswith("data:"):
        raise invalid("image must be plain base64 without a 'data:image/...;base64,' prefix")
    try:
        data = base64.b64decode(value.encode("ascii").translate(None, _WHITESPACE), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise invalid("image is neither an http(s) URL nor valid base64") from None
    if not data:
        raise invalid("image is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise invalid("image is larger than 30 MB")
    return data


def parse_submission(body: bytes, template_ids: Container[int]) -> SubmitForm:
    """Check the submit body's JSON and fields; ``person`` is a deprecated alias of ``image``."""
    try:
        parsed = json.loads(body)
    except ValueError:
        raise invalid("body is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise invalid("body must be a JSON object")
    image = parsed.get("image", parsed.get("person"))
    if image is None:
        raise invalid("image is required")
    if not isinstance(image, str) or not image:
        raise invalid("image must be a non-empty string")
    template_id = parsed.get("template_id")
    if template_id is None:
        raise invalid("template_id is required")
    if not isinstance(template_id, int) or isinstance(template_id, bool):
        raise invalid("template_id must be an integer")
    if template_id not in template_ids:
        raise invalid(f"unknown template_id {template_id}")
    notify_url = _optional_str(parsed, "notify_url")
    if notify_url is not None and not _is_http_url(notify_url):
        raise invalid("notify_url must be an http(s) URL")
    return SubmitForm(
        image=_decode_image(image),
        template_id=template_id,
        request_id=_optional_str(parsed, "request_id"),
        notify_url=notify_url,
    )


def int_param(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    """A query parameter that must be an integer within low..high."""
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise invalid(f"{name} must be between {low} and {high}")
    return value
