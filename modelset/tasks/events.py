"""Task runs recorded from their final state: one event to the Prefect server, not three.

Prefect 3.9 records a task run from the events its engine emits at every state change:
Pending, Running and the final state (plus AwaitingRetry and Running again on a retry).
The server turns each into an event row, its resource rows and an upsert of the task run
with a state row: about 8 ms of server CPU per event on this hardware, 26 ms for a
trivial task run, the most of what a batch costs the server (docs/performance.md).

The final state's event carries the whole task run (name, task inputs, start and end
time, run count, total run time), so the run graph, the task run's page and caching look
the same from it alone. What is given up: a task run of ours appears once it has
finished (crashed and failed included), not while it runs. In-flight progress is what
the progress artifact shows. ``HIDREAM_TASK_RUN_EVENTS=all`` restores every state.

The engine also logs ``Finished in state Completed()`` (or ``Cached(...)``) at INFO for
every task run: 240 lines in the flow run's logs for 200 photos, each sent to the API
(about 0.8 ms of the flow process's CPU per task run, measured). Inside a batch that
line is left out for these tasks: the task run's state says the same. A task run that
fails or crashes still logs its line at ERROR, and the tasks' own messages are untouched.

Only the task runs of modelset's own tasks (registered with :func:`final_state_only`)
inside a batch (:func:`recording_final_states`) are affected, never a user's tasks.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import prefect.task_engine

_QUIET_TASK_KEYS: set[str] = set()
_QUIET_TASK_NAMES: set[str] = set()
_final_only: ContextVar[bool] = ContextVar("modelset_final_states_only", default=False)
_engine: Any = prefect.task_engine  # rebinds a name the module does not export
# Prefect is pinned (requirements.lock); should a release move the function, every state
# is sent again rather than the import failing.
_original: Any = getattr(_engine, "emit_task_run_state_change_event", None)


def _emit(task_run: Any, initial_state: Any, validated_state: Any, follows: Any = None) -> Any:
    if (
        _final_only.get()
        and task_run.task_key in _QUIET_TASK_KEYS
        and not validated_state.is_final()
    ):
        return follows  # the engine keeps this as the event the next one follows
    return _original(
        task_run=task_run,
        initial_state=initial_state,
        validated_state=validated_state,
        follows=follows,
    )


class _QuietCompletions(logging.Filter):
    """Drops the engine's routine completion line of a marked task run in a batch."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno == logging.INFO
            and _final_only.get()
            and getattr(record, "task_name", None) in _QUIET_TASK_NAMES
            and isinstance(record.msg, str)
            and record.msg.startswith("Finished in state")
        )


_quiet_completions = _QuietCompletions()


def final_state_only(*tasks: Any) -> None:
    """Mark tasks whose runs send only their final state inside a batch."""
    _QUIET_TASK_NAMES.update(task.name for task in tasks)
    logging.getLogger("prefect.task_runs").addFilter(_quiet_completions)
    if _original is None:
        return
    _QUIET_TASK_KEYS.update(task.task_key for task in tasks)
    # The engine calls the function through its module's name: route it through ours.
    _engine.emit_task_run_state_change_event = _emit


@contextlib.contextmanager
def recording_final_states(enabled: bool) -> Iterator[None]:
    """Within this block (and the tasks it starts), marked tasks send their final state
    only when ``enabled``."""
    token = _final_only.set(enabled)
    try:
        yield
    finally:
        _final_only.reset(token)
