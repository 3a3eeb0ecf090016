"""``modelset run`` in-process with a stopwatch on every stage: where a run's time goes.

```sh
.venv/bin/python -m bench --quick --only P1 --wrap ".venv/bin/python -m bench.stagetimer"
```

Wraps the stages (``prepare_validated``: the decode, fix and encode; ``submit_once``,
``collect_set``, the client's calls, each image download), the Prefect task calls around
them (``TASK ...``: the difference is Prefect's per-task-run cost), the steps that read or
write the output location in bulk (the bucket probe, reading the manifest and the ledger,
writing the report) and measures the event loop's lag. At exit it
prints one ``STAGES {json}`` line and one ``LAG`` line (p50/max per 5 s) to stderr, which
the bench keeps in the run's log.

``BENCH_NO_TASKS=1`` tries one more step without editing ``modelset/``: no task run per
set at all (the submit as plain code; docs/performance.md).

A profiling aid: it patches module attributes and breaks if their names change.
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


def install() -> None:
    # Any-typed on purpose: this rebinds names the modules do not export.
    flow: Any = importlib.import_module("modelset.flows.generate")
    client: Any = importlib.import_module("modelset.hidream.client")
    # Each stage where it is defined, so that the calls between stages are timed too.
    prepare: Any = importlib.import_module("modelset.stages.prepare")
    submit: Any = importlib.import_module("modelset.stages.submit")
    collect: Any = importlib.import_module("modelset.stages.collect")
    download: Any = importlib.import_module("modelset.stages.download")
    photos: Any = importlib.import_module("modelset.tasks.photos")
    runtime: Any = importlib.import_module("modelset.tasks.runtime")
    submission: Any = importlib.import_module("modelset.tasks.submission")

    _timed_async(submit, "submit_once")
    for name in ("collect_once", "collect_set"):
        _timed_async(collect, name)
    _timed_async(download, "download_image")
    _timed_sync(prepare, "prepare_validated")
    for name in ("submit_variation", "wait_for_result", "get_result"):
        _timed_async(client.HiDreamClient, name)
    # The task modules imported the stages by name: point them at the timed ones.
    photos.prepare_validated = prepare.prepare_validated
    submission.submit_once = submit.submit_once
    runtime.collect_once = collect.collect_once

    if os.environ.get("BENCH_NO_TASKS"):
        flow.submit_photo = submission.submit_photo.fn

    for name in ("run_batch", "_prepare_all", "_generate", "check_templates", "publish_results"):
        _timed_async(flow, name)
    # What reads or writes the output location in bulk (on a bucket: many requests).
    for name in (
        "probe_conditional_writes",
        "read_manifest",
        "update_report",
    ):
        _timed_sync(flow, name)
    ledger: Any = importlib.import_module("modelset.ledger")
    _timed_sync(ledger.Ledger, "read_many")
    _timed_async(flow, "submit_photo", "TASK submit-photo")
    _timed_async(flow, "collect", "collect (plain code)")

    generate: Callable[..., Any] = flow._generate

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

    flow._generate = generate_watching_the_loop


def main() -> None:
    install()
    _events["imports done"].append((time.perf_counter() - STARTED, 0.0))
    atexit.register(_report)
    from modelset.cli import app

    args = sys.argv[1:]
    if args and args[0].endswith("modelset"):  # as given by `bench --wrap`
        args = args[1:]
    sys.argv = ["modelset", *args]
    app()


if __name__ == "__main__":
    main()
