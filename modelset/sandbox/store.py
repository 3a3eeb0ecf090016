"""What the sandbox remembers: tasks and submissions in memory (and in the state file,
if one is set), photos on disk."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, TypedDict

from modelset.atomic import write_bytes
from modelset.labels import AigcRecord, write_labels
from modelset.sandbox.imagery import ImageFormat, render_pose

WAITING, SUCCEEDED, PROCESSING, FAILED, REJECTED = 0, 1, 2, 3, 4
FINAL = frozenset({SUCCEEDED, FAILED, REJECTED})
UNDOCUMENTED = 7
"""Reported instead of PROCESSING by sub-tasks drawn by the unknown_status fault."""
STATE_VERSION = 1

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
    unknown_status: bool = False
    """Reports UNDOCUMENTED instead of PROCESSING (unknown_status fault)."""
    expires: bool = False
    """Its image URLs expire at the first download (expire fault)."""


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
        processing = UNDOCUMENTED if self.sub_tasks[index].unknown_status else PROCESSING
        return processing, round(elapsed / self.duration, 2)

    def image_url(self, pose: int) -> str:
        return f"{self.base_url}/_sandbox/images/{self.task_id}/{pose}.jpg"

    def sub_task_results(
        self, now: float, link: Callable[[Task, int], str] | None = None
    ) -> list[dict[str, Any]]:
        """The sub-tasks as the results endpoint shows them; ``link(task, pose)`` makes
        the image URLs (default: :meth:`image_url`)."""
        results: list[dict[str, Any]] = []
        for index, sub_task in enumerate(self.sub_tasks):
            status, completion = self.status(index, now)
            image = ""
            if status == SUCCEEDED:
                image = link(self, index + 1) if link is not None else self.image_url(index + 1)
            results.append(
                {
                    "sub_task_id": sub_task.sub_task_id,
                    "task_status": status,
                    "task_completion": completion,
                    "image": image,
                    "description": sub_task.description if status in FINAL else "",
                }
            )
        return results

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form; ``started`` is stored as wall-clock time (monotonic clocks
        do not survive a restart)."""
        data = asdict(self)
        data["started"] = time.time() - (time.monotonic() - self.started)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Task:
        started = time.monotonic() - (time.time() - float(data["started"]))
        sub_tasks = tuple(SubTask(**sub) for sub in data["sub_tasks"])
        return cls(**{**data, "started": started, "sub_tasks": sub_tasks})


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

    def tasks(self) -> list[Task]:
        """Every task, oldest first."""
        return list(self._tasks.values())

    def restore(self, tasks: list[Task], submissions: list[Submission]) -> None:
        """Put back tasks and the submissions log read from a state file."""
        for task in tasks:
            self._tasks[task.task_id] = task
            self._by_request_id.setdefault(task.request_id, task)
        self._submissions.extend(submissions)


class StateFile:
    """The ``--state`` file: tasks, submissions and callbacks as one JSON document.

    Written whole and atomically (temporary file + rename) on every change, so a
    sandbox killed at any moment leaves the previous or the new state, never half.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any] | None:
        """The saved document, or None when there is none yet."""
        try:
            data: dict[str, Any] = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        if data.get("version") != STATE_VERSION:
            raise ValueError(
                f"{self.path}: unsupported sandbox state version {data.get('version')}"
            )
        return data

    def save(self, store: TaskStore, callbacks: list[dict[str, Any]]) -> None:
        document = {
            "version": STATE_VERSION,
            "saved": datetime.now(UTC).isoformat(),
            "tasks": [task.to_json() for task in store.tasks()],
            "submissions": store.submissions(),
            "callbacks": callbacks,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(self.path, json.dumps(document).encode(), durable=False)

    @staticmethod
    def tasks(document: dict[str, Any]) -> list[Task]:
        return [Task.from_json(task) for task in document.get("tasks", [])]

    @staticmethod
    def submissions(document: dict[str, Any]) -> list[Submission]:
        return [
            Submission(
                request_id=entry["request_id"],
                sha256=entry["sha256"],
                template_id=entry["template_id"],
                task_id=entry["task_id"],
                time=entry["time"],
            )
            for entry in document.get("submissions", [])
        ]


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
            write_bytes(path, data, durable=False)
        return digest

    def render(
        self,
        sha256: str,
        template_id: int,
        pose: int,
        image_format: ImageFormat = "JPEG",
    ) -> bytes:
        """One pose of the set generated from a stored photo, in ``image_format``."""
        path = self._renders / f"{sha256}-t{template_id}-p{pose}.{image_format.lower()}"
        if path.exists():
            return path.read_bytes()
        data = render_pose((self._photos / sha256).read_bytes(), template_id, pose, image_format)
        write_bytes(path, data, durable=False)
        return data

    def close(self) -> None:
        """Remove the temporary directory, if this store made one."""
        if self._temporary is not None:
            self._temporary.cleanup()


def labelled_as_upstream(data: bytes, producer: str, sub_task_id: str) -> bytes:
    """An image as an upstream that labels its images hands it out: with its own AIGC
    record (propagator fields empty) and digital source type."""
    record = AigcRecord(ContentProducer=producer, ProduceID=sub_task_id, ReservedCode1="sandbox")
    return write_labels(data, record)
