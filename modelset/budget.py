"""The budget cap: a run never submits a task that could take its images past the cap.

A task counts as the template's set size once a submit answer has shown it (the length
of ``sub_task_ids``), and as ``HIDREAM_IMAGES_PER_SET`` until then. Room is reserved
before each submit and settled with the real count after it, so racing submits cannot
overshoot. The child runs of a sharded batch share one budget through a file under a
``flock``, so the cap holds for the batch as a whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, Field

from modelset.ledger import LedgerRecord

_PROBE_WAIT_S = 0.05


class _Tally(BaseModel):
    spent: int = 0
    reserved: int = 0
    set_sizes: dict[int, int] = Field(default_factory=dict)
    probing: dict[int, int] = Field(default_factory=dict)  # unknown-size submits in flight


class Budget:
    def __init__(self, cap: int | None, default_set_size: int, shared: Path | None = None):
        self.cap = cap
        self.default_set_size = default_set_size
        self._shared = shared
        self._tally = _Tally()

    def set_size(self, template_id: int) -> int:
        with self._tally_held() as tally:
            return tally.set_sizes.get(template_id, self.default_set_size)

    async def reserve(self, template_id: int) -> int | None:
        """Room for one task of this template (the images reserved), or None past the cap.

        Under a cap, while a template's set size is unknown only one of its submits is in
        flight, so a set larger than assumed can overshoot by one set at most.
        """
        while True:
            with self._tally_held() as tally:
                known = template_id in tally.set_sizes
                if known or self.cap is None or not tally.probing.get(template_id):
                    size = tally.set_sizes.get(template_id, self.default_set_size)
                    if self.cap is not None and tally.spent + tally.reserved + size > self.cap:
                        return None
                    tally.reserved += size
                    if not known:
                        tally.probing[template_id] = tally.probing.get(template_id, 0) + 1
                    return size
            await asyncio.sleep(_PROBE_WAIT_S)

    def settle(
        self, template_id: int, reserved: int, record: LedgerRecord | None, run_id: str
    ) -> None:
        """Replace a reservation by what this run actually paid for (None: nothing)."""
        with self._tally_held() as tally:
            tally.reserved -= reserved
            if tally.probing.get(template_id):
                tally.probing[template_id] -= 1
            if record is not None and record.task_id is not None and record.sub_task_ids:
                tally.set_sizes[template_id] = len(record.sub_task_ids)
                if record.claimed_by_run == run_id:
                    tally.spent += len(record.sub_task_ids)

    def refusal(self) -> str:
        return (
            f"budget: the cap of {self.cap} images is reached; "
            "rerun with a larger --max-images to continue"
        )

    @contextlib.contextmanager
    def _tally_held(self) -> Iterator[_Tally]:
        if self._shared is None:
            yield self._tally
            return
        with self._shared.open("a+", encoding="utf-8") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                handle.seek(0)
                text = handle.read()
                tally = _Tally.model_validate_json(text) if text.strip() else _Tally()
                before = tally.model_copy(deep=True)
                yield tally
                if tally != before:
                    handle.seek(0)
                    handle.truncate()
                    handle.write(json.dumps(tally.model_dump(mode="json")))
                    handle.flush()
                    os.fsync(handle.fileno())
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
