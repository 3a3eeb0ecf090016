"""Delivery of the ``notify_url`` callback when a task reaches its final state."""

from __future__ import annotations

import asyncio
import logging
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


@dataclass
class CallbackRecord:
    """One callback, updated as attempts are made."""

    task_id: str
    url: str
    attempts: int = 0
    delivered: bool = False

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
