"""The budget cap: a run never submits a task that could take its images past the cap.

A task counts as the template's set size once a submit answer has shown it (the length
of ``sub_task_ids``), and as ``HIDREAM_IMAGES_PER_SET`` until then. Reservations are
taken before the submit and settled with the real count after it, so racing submits of
one run cannot overshoot.
"""

from __future__ import annotations

from modelset.ledger import LedgerRecord


class Budget:
    def __init__(self, cap: int | None, default_set_size: int) -> None:
        self.cap = cap
        self.default_set_size = default_set_size
        self.spent = 0
        self.reserved = 0
        self._set_sizes: dict[int, int] = {}

    def set_size(self, template_id: int) -> int:
        return self._set_sizes.get(template_id, self.default_set_size)

    def reserve(self, template_id: int) -> bool:
        """Take room for one task of this template; False when it could pass the cap."""
        size = self.set_size(template_id)
        if self.cap is not None and self.spent + self.reserved + size > self.cap:
            return False
        self.reserved += size
        return True

    def release(self, template_id: int) -> None:
        self.reserved -= self.set_size(template_id)

    def settle(self, template_id: int, record: LedgerRecord, run_id: str) -> None:
        """Replace the reservation by what this run actually paid for."""
        self.release(template_id)
        if record.task_id is not None and record.sub_task_ids:
            self._set_sizes[template_id] = len(record.sub_task_ids)
            if record.claimed_by_run == run_id:
                self.spent += len(record.sub_task_ids)

    def refusal(self) -> str:
        return (
            f"budget: the cap of {self.cap} images is reached; "
            "rerun with a larger --max-images to continue"
        )
