"""Delivery of the ``notify_url`` callback when a task reaches its final state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

logger = logging.getLogger("modelset.sandbox")

ATTEMPTS = 3
PAUSE_S = 1.0
TIMEOUT_S = 5.0


def mask_url(url: str) -> str:
    """Hide the last path segment (the receiver's secret), any query and any credentials."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    head = parts.path.rpartition("/")[0]
    return f"{parts.scheme}://{host}{head}/***"


def strip_query(url: str) -> str:
    """Hide any query (a presigned URL's credentials) and userinfo."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


_MASK: ContextVar[Callable[[str], str] | None] = ContextVar("modelset_sandbox_mask", default=None)


class _MaskOwnRequests(logging.Filter):
    """httpx logs every request's full URL at INFO; for the sandbox's own requests
    (callbacks, image fetches) the URL is masked, as it may hold a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        mask = _MASK.get()
        if mask is not None and isinstance(record.args, tuple) and len(record.args) >= 2:
            args = list(record.args)
            args[1] = mask(str(args[1]))
            record.args = tuple(args)
        return True


_httpx_logger = logging.getLogger("httpx")
if not any(isinstance(f, _MaskOwnRequests) for f in _httpx_logger.filters):
    _httpx_logger.addFilter(_MaskOwnRequests())


@contextmanager
def masked_urls(mask: Callable[[str], str]) -> Iterator[None]:
    """Within this block (and tasks it starts), httpx logs URLs through ``mask``."""
    token = _MASK.set(mask)
    try:
        yield
    finally:
        _MASK.reset(token)


@dataclass
class CallbackRecord:
    """One callback, updated as attempts are made."""

    task_id: str
    url: str
    attempts: int = 0
    delivered: bool = False
    early: bool = False
    """Delivered halfway through generation, before the task is final (callback_early)."""

    def to_json(self) -> dict[str, Any]:
        """Everything, the URL included: for the sandbox's own state file only."""
        return {
            "task_id": self.task_id,
            "url": self.url,
            "attempts": self.attempts,
            "delivered": self.delivered,
            "early": self.early,
        }

    def public(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "url": mask_url(self.url),
            "attempts": self.attempts,
            "delivered": self.delivered,
        }


async def deliver(client: httpx.AsyncClient, record: CallbackRecord, body: dict[str, Any]) -> None:
    """POST ``body`` until the receiver answers HTTP 200, at most ATTEMPTS times."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with masked_urls(mask_url):
                response = await client.post(record.url, json=body, timeout=TIMEOUT_S)
            outcome = f"HTTP {response.status_code}"
            record.delivered = response.status_code == 200
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        record.attempts = attempt
        logger.info("callback task=%s attempt %d -> %s", record.task_id, attempt, outcome)
        if record.delivered:
            return
        if attempt < ATTEMPTS:
            await asyncio.sleep(PAUSE_S)
