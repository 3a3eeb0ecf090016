"""Pydantic models of the HiDream answers. Unknown extra fields are kept, never fatal."""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelset.hidream._exceptions import ServiceError


class TaskStatus(IntEnum):
    """A sub-task's ``task_status``. Values the docs do not list are kept, not refused."""

    WAITING = 0
    SUCCEEDED = 1
    PROCESSING = 2
    FAILED = 3
    REJECTED = 4
    NO_RESULT_1004 = 1004
    NO_RESULT_1005 = 1005
    NO_RESULT_1006 = 1006

    @classmethod
    def _missing_(cls, value: object) -> TaskStatus | None:
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        member = int.__new__(cls, value)
        member._name_ = f"UNKNOWN_{value}"
        member._value_ = value
        return member

    @property
    def is_known(self) -> bool:
        return self._name_ in type(self).__members__

    @property
    def is_final(self) -> bool:
        # An unknown status is treated as still running: waiting until the deadline
        # loses nothing, while calling it failed could make a rerun pay again.
        return self.is_known and self not in (TaskStatus.WAITING, TaskStatus.PROCESSING)


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class Envelope(_Answer):
    code: int
    message: str = ""
    request_id: str = ""
    result: Any = None


class Receipt(_Answer):
    """What a submit paid for: the task and its sub-tasks."""

    task_id: str
    sub_task_ids: list[str] = Field(default_factory=list)
    request_id: str | None = None
    found_by_lookup: bool = False


class SubTaskResult(_Answer):
    sub_task_id: str = ""
    task_status: TaskStatus
    task_completion: float = 0.0
    image: str = ""
    description: str = ""

    @property
    def succeeded(self) -> bool:
        return self.task_status is TaskStatus.SUCCEEDED and bool(self.image)


class TaskResult(_Answer):
    """A task's state. ``task_id`` is present when the service (or a callback) names it."""

    task_id: str | None = None
    sub_task_results: list[SubTaskResult] = Field(default_factory=list)

    @property
    def finished(self) -> bool:
        return bool(self.sub_task_results) and all(
            sub.task_status.is_final for sub in self.sub_task_results
        )

    @property
    def completion(self) -> float:
        if not self.sub_task_results:
            return 0.0
        return sum(sub.task_completion for sub in self.sub_task_results) / len(
            self.sub_task_results
        )

    @property
    def image_urls(self) -> list[str]:
        return [sub.image for sub in self.sub_task_results if sub.succeeded]

    def failure_reasons(self) -> list[str]:
        """One line per sub-task that ended without an image."""
        reasons = []
        for sub in self.sub_task_results:
            if sub.task_status.is_final and not sub.succeeded:
                detail = sub.description or "no reason given"
                reasons.append(f"{sub.task_status.name.lower()}: {detail}")
        return reasons


class Template(_Answer):
    id: int
    gender: str = ""
    show_image: str = ""


class TemplatePage(_Answer):
    templates: list[Template] = Field(default_factory=list)
    total_count: int = 0
    total_page: int = 0


Gender = Literal["man", "woman"]


def parse_callback_body(body: Any) -> TaskResult:
    """Read a callback body in either documented shape.

    ``{"main_task_id": ..., "sub_task_results": [...]}`` (older docs) or the result
    envelope ``{"code": 0, "result": {...}}`` (v3 pages). The body is only a hint: the
    receiver re-queries the result before trusting it.
    """
    if not isinstance(body, dict):
        raise ServiceError("callback body is not a JSON object")
    payload: Any = body
    if "result" in body and "sub_task_results" not in body:
        payload = body["result"]
        if not isinstance(payload, dict):
            raise ServiceError("callback body's result is not a JSON object")
    task_id = payload.get("task_id") or payload.get("main_task_id") or body.get("main_task_id")
    try:
        return TaskResult.model_validate({**payload, "task_id": task_id})
    except ValidationError as exc:
        raise ServiceError(f"callback body does not match the task result: {exc}") from None
