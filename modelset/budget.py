"""The budget cap: a run never submits a task that could take its images past the cap.

A task counts as the template's set size once a submit answer has shown it (the length
of ``sub_task_ids``), and as ``HIDREAM_IMAGES_PER_SET`` until then. Room is reserved
before each submit and settled with the real count after it, so racing submits cannot
overshoot. The child runs of a sharded batch share one budget through an object in the
output location, changed only by compare-and-swap, so the cap holds for the batch as a
whole on a folder or a bucket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, Field

from modelset.ledger import LedgerRecord
from modelset.storage import Store, off_loop, update

T = TypeVar("T")

_PROBE_WAIT_S = 0.05


class _Tally(BaseModel):
    spent: int = 0
    reserved: int = 0
    set_sizes: dict[int, int] = Field(default_factory=dict)
    probing: dict[int, int] = Field(default_factory=dict)  # unknown-size submits in flight


class Budget:
    def __init__(
        self, cap: int | None, default_set_size: int, shared: tuple[Store, str] | None = None
    ):
        self.cap = cap
        self.default_set_size = default_set_size
        self._shared = shared
        self._tally = _Tally()

    def set_size(self, template_id: int) -> int:
        return self._transact(lambda tally: tally.set_sizes.get(template_id, self.default_set_size))

    async def reserve(self, template_id: int) -> int | None:
        """Room for one task of this template (the images reserved), or None past the cap.

        Under a cap, while a template's set size is unknown only one of its submits is in
        flight, so a set larger than assumed can overshoot by one set at most.
        """

        def attempt(tally: _Tally) -> int | bool | None:
            known = template_id in tally.set_sizes
            if not (known or self.cap is None or not tally.probing.get(template_id)):
                return False  # wait for the probing submit to settle
            size = tally.set_sizes.get(template_id, self.default_set_size)
            if self.cap is not None and tally.spent + tally.reserved + size > self.cap:
                return None
            tally.reserved += size
            if not known:
                tally.probing[template_id] = tally.probing.get(template_id, 0) + 1
            return size

        while True:
            room = await self._run(attempt)
            if room is not False:
                return None if room is None else int(room)
            await asyncio.sleep(_PROBE_WAIT_S)

    async def settle(
        self, template_id: int, reserved: int, record: LedgerRecord | None, run_id: str
    ) -> None:
        """Replace a reservation by what this run actually paid for (None: nothing)."""

        def apply(tally: _Tally) -> None:
            tally.reserved -= reserved
            if tally.probing.get(template_id):
                tally.probing[template_id] -= 1
            if record is not None and record.task_id is not None and record.sub_task_ids:
                tally.set_sizes[template_id] = len(record.sub_task_ids)
                if record.claimed_by_run == run_id:
                    tally.spent += len(record.sub_task_ids)

        await self._run(apply)

    def refusal(self) -> str:
        return (
            f"budget: the cap of {self.cap} images is reached; "
            "rerun with a larger --max-images to continue"
        )

    async def _run(self, change: Callable[[_Tally], T]) -> T:
        if self._shared is None:
            return self._transact(change)
        return await off_loop(self._shared[0], self._transact, change)

    def _transact(self, change: Callable[[_Tally], T]) -> T:
        """Apply ``change`` to the tally: in memory, or to the shared one on the store
        with a compare-and-swap (retried when another run changed it first)."""
        if self._shared is None:
            return change(self._tally)
        store, key = self._shared

        def apply(data: bytes | None) -> tuple[bytes, T]:
            tally = _Tally.model_validate_json(data) if data else _Tally()
            value = change(tally)
            return tally.model_dump_json().encode(), value

        return update(store, key, apply)
