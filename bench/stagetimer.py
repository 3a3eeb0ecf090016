"""``modelset run`` in-process with a stopwatch on every stage: where a run's time goes.

```sh
.venv/bin/python -m bench --quick --only P1 --wrap "$PWD/.venv/bin/python -m bench.stagetimer"
```

Wraps the stages' work (``prepare_validated``: the decode, fix and encode; ``send_set``,
``submit_once``, ``collect_set``, the client's calls, each image download), the engine's
steps (``modelset.batch``: ``run_batch``, ``prepare_all``, ``generate``, ``run_jobs``), what
the engine asks of Prefect (``PrefectOrchestration``: ``open``, ``catalogue``,
``progress``, ``publish``, and each ``TASK fetch|validate|prepare|submit``, a task run per
chunk, beside the plain code it runs: the difference is Prefect's per-task-run cost), the
steps that read or write the output location in bulk (the bucket probe, reading the
manifest and the ledger, writing the report) and measures the event loop's lag. At exit
it prints one ``STAGES {json}`` line and one ``LAG`` line (p50/max per 5 s) to stderr,
which the bench keeps in the run's log.

``BENCH_NO_TASKS=1`` tries one step further without editing ``modelset/``: no task run at
all, the stages and the submit chunks run as plain code (``InProcess``'s way, the same
retries) inside the flow run (docs/performance.md).

A profiling aid: it patches module attributes and breaks if their names change (it
fails at start, naming the attribute, rather than timing nothing).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import importlib
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

STARTED = time.perf_counter()
_events: dict[str, list[tuple[float, float]]] = defaultdict(list)


def _record(label: str, started: float) -> None:
    _events[label].append((started - STARTED, time.perf_counter() - started))


def _timed_async(owner: Any, name: str, label: str | None = None) -> None:
    original: Callable[..., Any] = getattr(owner, name)
    tag = label or name

    @functools.wraps(original)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            _record(tag, started)

    setattr(owner, name, timed)


def _timed_sync(owner: Any, name: str) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            _record(name, started)
            _events[f"{name} (thread CPU)"].append((started - STARTED, time.thread_time() - cpu))

    setattr(owner, name, timed)


def _report() -> None:
    summary: dict[str, dict[str, float]] = {}
    for label, samples in sorted(_events.items()):
        if label == "loop lag":
            continue
        durations = sorted(duration for _, duration in samples)
        summary[label] = {
            "n": len(samples),
            "first_s": round(min(at for at, _ in samples), 2),
            "last_end_s": round(max(at + duration for at, duration in samples), 2),
            "p50_s": round(durations[len(durations) // 2], 3),
            "p90_s": round(durations[int(len(durations) * 0.9)], 3),
            "sum_s": round(sum(durations), 2),
        }
    print(f"STAGES {json.dumps(summary)}", file=sys.stderr)
    buckets: dict[int, list[float]] = defaultdict(list)
    for at, lag in _events.get("loop lag", []):
        buckets[int(at // 5) * 5].append(lag)
    print(
        "LAG "
        + " ".join(
            f"{start}s:{sorted(v)[len(v) // 2] * 1000:.0f}/{max(v) * 1000:.0f}ms"
            for start, v in sorted(buckets.items())
        ),
        file=sys.stderr,
    )
    print(f"CPU {time.process_time():.2f} s", file=sys.stderr)


def _stage_timed(owner: Any, prefix: str) -> None:
    """``PrefectOrchestration.stage`` timed under each stage's name: ``TASK fetch`` ..."""
    original: Callable[..., Any] = owner.stage

    @functools.wraps(original)
    async def timed(self: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await original(self, name, *args, **kwargs)
        finally:
            _record(f"{prefix} {name}", started)

    owner.stage = timed


def _without_task_runs(orchestration: Any) -> None:
    """BENCH_NO_TASKS: the stages and the submit chunks as plain code in the flow run."""
    chunks: Any = importlib.import_module("modelset.batch.chunks")
    batch: Any = importlib.import_module("modelset.batch.orchestration")

    async def stage(self: Any, name: str, photos: Any, runtime: Any, label: str) -> Any:
        return await chunks.STAGES[name](photos, runtime)

    async def submit(self: Any, chunk: Any, label: str) -> None:
        await batch.run_with_retries(chunk)

    orchestration.PrefectOrchestration.stage = stage
    orchestration.PrefectOrchestration.submit = submit


def install() -> None:
    # Any-typed on purpose: this rebinds names the modules do not export.
    client: Any = importlib.import_module("modelset.hidream.client")
    # Each stage where it is defined, so that the calls between stages are timed too.
    prepare: Any = importlib.import_module("modelset.stages.prepare")
    submit: Any = importlib.import_module("modelset.stages.submit")
    collect: Any = importlib.import_module("modelset.stages.collect")
    download: Any = importlib.import_module("modelset.stages.download")
    chunks: Any = importlib.import_module("modelset.batch.chunks")
    engine: Any = importlib.import_module("modelset.batch.engine")
    planning: Any = importlib.import_module("modelset.batch.planning")
    runtime: Any = importlib.import_module("modelset.batch.runtime")
    sets: Any = importlib.import_module("modelset.batch.sets")
    ledger: Any = importlib.import_module("modelset.ledger")
    flow: Any = importlib.import_module("modelset.flows.generate")
    stage_tasks: Any = importlib.import_module("modelset.tasks.photos")
    orchestration: Any = importlib.import_module("modelset.tasks.orchestration")

    _timed_async(submit, "submit_once")
    for name in ("collect_once", "collect_set"):
        _timed_async(collect, name)
    _timed_async(download, "download_image")
    _timed_sync(prepare, "prepare_validated")
    for name in ("submit_variation", "wait_for_result", "get_result"):
        _timed_async(client.HiDreamClient, name)
    # The engine's modules imported the stages by name: point them at the timed ones.
    chunks.prepare_validated = prepare.prepare_validated
    sets.submit_once = submit.submit_once
    runtime.collect_once = collect.collect_once

    # What one task run runs, as plain code: a stage over a chunk, a chunk of sets.
    for name in ("fetch_chunk", "validate_chunk", "prepare_chunk"):
        _timed_async(stage_tasks, name, f"{name.removesuffix('_chunk')} (plain code)")
    _timed_async(sets.SetChunk, "run", "submit chunk (plain code)")
    _timed_async(sets, "send_set")
    _timed_async(sets, "collect", "collect (plain code)")

    # What the engine asks of Prefect: each task run, and the rest.
    if os.environ.get("BENCH_NO_TASKS"):
        _without_task_runs(orchestration)
    prefix = "NO TASK" if os.environ.get("BENCH_NO_TASKS") else "TASK"
    _stage_timed(orchestration.PrefectOrchestration, prefix)
    _timed_async(orchestration.PrefectOrchestration, "submit", f"{prefix} submit")
    for name in ("open", "catalogue", "progress", "publish"):
        _timed_async(orchestration.PrefectOrchestration, name, f"prefect {name}")

    # The engine's steps (the flow imported run_batch by name).
    _timed_async(flow, "run_batch")
    for name in ("prepare_all", "generate"):
        _timed_async(engine, name)
    _timed_async(planning, "run_jobs")
    # What reads or writes the output location in bulk (on a bucket: many requests).
    for name in ("probe_conditional_writes", "read_manifest", "mark_pending", "update_report"):
        _timed_sync(engine, name)
    _timed_sync(ledger.Ledger, "read_many")

    generate: Callable[..., Any] = engine.generate

    async def generate_watching_the_loop(*args: Any, **kwargs: Any) -> Any:
        async def watch() -> None:
            while True:
                started = time.perf_counter()
                await asyncio.sleep(0.05)
                _events["loop lag"].append(
                    (started - STARTED, time.perf_counter() - started - 0.05)
                )

        watcher = asyncio.ensure_future(watch())
        try:
            return await generate(*args, **kwargs)
        finally:
            watcher.cancel()

    engine.generate = generate_watching_the_loop


def main() -> None:
    install()
    _events["imports done"].append((time.perf_counter() - STARTED, 0.0))
    atexit.register(_report)
    from modelset.cli import app
    from modelset.memory import limit_malloc_arenas

    args = sys.argv[1:]
    if args and args[0].endswith("modelset"):  # as given by `bench --wrap`
        args = args[1:]
    elif args[1:3] == ["-m", "modelset"]:  # ... with --pipeline-src: python -m modelset
        args = args[3:]
    sys.argv = ["modelset", *args]
    # As `modelset.cli.main` does, without its exit that skips the handlers (the report).
    limit_malloc_arenas()
    app(prog_name="modelset")


if __name__ == "__main__":
    main()
