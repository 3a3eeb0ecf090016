"""What the sandbox remembers: tasks and submissions in memory, photos on disk."""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, TypedDict

from modelset.sandbox.imagery import render_pose

WAITING, SUCCEEDED, PROCESSING, FAILED, REJECTED = 0, 1, 2, 3, 4
FINAL = frozenset({SUCCEEDED, FAILED, REJECTED})

TEMPLATES: dict[int, str] = {
    template_id: "woman" if template_id % 2 == 0 else "man" for template_id in range(1, 25)
}
"""The template catalogue: id -> gender. Id 20 is the one used in the official examples."""


class Submission(TypedDict):
    """One accepted submission, as listed by ``/_sandbox/submissions``."""

    request_id: str
    sha256: str
    template_id: int
    task_id: str
    time: str


@dataclass(frozen=True)
class SubTask:
    sub_task_id: str
    final_status: int
    description: str


@dataclass(frozen=True)
class Task:
    task_id: str
    request_id: str
    template_id: int
    sha256: str
    sub_tasks: tuple[SubTask, ...]
    started: float
    """time.monotonic() at submit."""
    duration: float
    """Seconds until every sub-task is final."""
    base_url: str
    """Where this server was reached, for the image URLs."""

    @property
    def finished_at(self) -> float:
        return self.started + self.duration

    def status(self, index: int, now: float) -> tuple[int, float]:
        """(task_status, task_completion) of sub-task ``index`` at monotonic time ``now``."""
        elapsed = now - self.started
        if elapsed >= self.duration:
            return self.sub_tasks[index].final_status, 1.0
        if elapsed < 0.1 * self.duration:
            return WAITING, 0.0
        return PROCESSING, round(elapsed / self.duration, 2)

    def image_url(self, pose: int) -> str:
        return f"{self.base_url}/_sandbox/images/{self.task_id}/{pose}.jpg"

    def sub_task_results(self, now: float) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for index, sub_task in enumerate(self.sub_tasks):
            status, completion = self.status(index, now)
            results.append(
                {
                    "sub_task_id": sub_task.sub_task_id,
                    "task_status": status,
                    "task_completion": completion,
                    "image": self.image_url(index + 1) if status == SUCCEEDED else "",
                    "description": sub_task.description if status in FINAL else "",
                }
            )
        return results


class TaskStore:
    """Tasks by id and by request_id, plus the log of accepted submissions."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._by_request_id: dict[str, Task] = {}
        self._submissions: list[Submission] = []

    def add(self, task: Task) -> None:
        self._tasks[task.task_id] = task
        # A reused request_id keeps pointing at the first task created with it.
        self._by_request_id.setdefault(task.request_id, task)
        self._submissions.append(
            Submission(
                request_id=task.request_id,
                sha256=task.sha256,
                template_id=task.template_id,
                task_id=task.task_id,
                time=datetime.now(UTC).isoformat(),
            )
        )

    def find(self, task_id: str | None = None, request_id: str | None = None) -> Task | None:
        """The task with this id (and request_id, if both are given)."""
        if task_id:
            task = self._tasks.get(task_id)
            if task is not None and request_id and task.request_id != request_id:
                return None
            return task
        return self._by_request_id.get(request_id) if request_id else None

    def submissions(self) -> list[Submission]:
        return [Submission(**submission) for submission in self._submissions]


def _write_atomically(path: Path, data: bytes) -> None:
    """Concurrent writers of the same content never expose a half-written file."""
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    partial.write_bytes(data)
    os.replace(partial, path)


class PhotoStore:
    """Uploaded photos by sha256, and a cache of the images rendered from them."""

    def __init__(self, root: Path | None) -> None:
        self._temporary: TemporaryDirectory[str] | None = None
        if root is None:
            self._temporary = TemporaryDirectory(prefix="modelset-sandbox-")
            root = Path(self._temporary.name)
        self._photos = root / "photos"
        self._renders = root / "renders"
        self._photos.mkdir(parents=True, exist_ok=True)
        self._renders.mkdir(parents=True, exist_ok=True)

    def save(self, data: bytes) -> str:
        """Store the photo; returns its sha256 (hex)."""
        digest = hashlib.sha256(data).hexdigest()
        path = self._photos / digest
        if not path.exists():
            _write_atomically(path, data)
        return digest

    def render(self, sha256: str, template_id: int, pose: int) -> bytes:
        """JPEG of one pose of the set generated from a stored photo."""
        path = self._renders / f"{sha256}-t{template_id}-p{pose}.jpg"
        if path.exists():
            return path.read_bytes()
        data = render_pose((self._photos / sha256).read_bytes(), template_id, pose)
        _write_atomically(path, data)
        return data

    def close(self) -> None:
        """Remove the temporary directory, if this store made one."""
        if self._temporary is not None:
            self._temporary.cleanup()
