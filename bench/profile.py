"""Where every millisecond goes: py-spy on the flow process and the Prefect server at once.

```sh
python3 -m venv /tmp/prof-venv && /tmp/prof-venv/bin/pip install py-spy
.venv/bin/python -m bench.profile --n 200 --py-spy /tmp/prof-venv/bin/py-spy
.venv/bin/python -m bench.profile --n 200 --pipeline-env PREFECT_LOGGING_HANDLERS_API_LEVEL=0
.venv/bin/python -m bench.profile --n 200 --baseline   # and bench.baseline beside it
```

Starts a Prefect server and a fresh sandbox (as the bench does), runs ``modelset run`` on
N bench photos under ``py-spy record`` (non-blocking, raw collapsed stacks) while a second
py-spy samples the server for the run and its tail, then sorts every sample into what it
was spent on: a stage, a Prefect call (task runs and their states, events, logs sent to the
API, artifacts, results, the flow run), the report. Each sample is one thread on CPU for
1/rate s, so a category's samples / rate / N is its milliseconds per photo. A stack goes to the
first rule (in order, the specific before the general) that any of its frames matches: a
log line sent from inside a task counts as "logs", a decode inside ``prepare`` as
"prepare". Samples whose innermost frame waits (select, a lock, a queue, fsync: py-spy
cannot always tell those from work) are shown apart and left out of the ms.

Prints two tables (flow process, server) and the CPU measured from outside beside the
sampled total (for the flow process this misses whatever py-spy's child used when py-spy
exits before reaping it: take the CPU from ``python -m bench`` instead); with
``--baseline``, a third table: the flow process beside the baseline, category by
category. Keeps the raw stacks in ``bench/.cache/logs/<time>/``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from bench.figures import Bench, Config
from bench.measure import Run, machine
from bench.photos import CACHE, ensure_photos

# (category, substrings of a frame): a stack goes to the first category (in this order)
# that any of its frames matches, so the specific comes before the general.
FLOW_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("start-up: imports", ("_find_and_load", "_call_with_frames_removed")),
    ("logs sent to the API", ("prefect/logging/handlers.py", "APILogWorker")),
    ("events (task/flow run states) to the API", ("prefect/events/",)),
    ("artifacts: progress", ("ProgressArtifact", "update_progress_artifact")),
    ("artifacts: table + summary", ("publish_results", "_thumbnails (modelset", "_strip (")),
    ("report: manifest, csv, index.html", ("update_report",)),
    ("stage: prepare (decode, fix, JPEG, thumbnail)", ("prepare_validated", "prepare_image")),
    ("stage: validate (header)", ("validate_photo", "inspect_image")),
    ("stage: fetch + hash", ("fetch_photo", "hash_file")),
    ("stage: submit (upload, base64, POST)", ("submit_variation", "encode_image", "upload_file")),
    ("stage: poll", ("wait_for_result", "get_result")),
    ("stage: download, verify, write", ("download_image", "download_set", "_store_image")),
    ("ledger (claims, records, fsync)", ("modelset/ledger/",)),
    ("task results persisted (stage tasks)", ("prefect/results.py", "OutputLocationResults")),
    ("task cache keys", ("cache_policies.py", "_fetch_key", "_validate_key", "_prepare_key")),
    ("task run: engine, states, creation", ("prefect/task_engine.py", "prefect/tasks.py")),
    ("flow run: creation, states, engine", ("prefect/flow_engine.py", "prefect/flows.py")),
    ("Prefect client (other API calls)", ("prefect/client/",)),
    ("Prefect settings/context", ("prefect/settings/", "prefect/context.py")),
    ("modelset flow code (planning, rows)", ("modelset/",)),
    ("pydantic (outside the above)", ("pydantic",)),
    ("httpx/anyio/asyncio (unattributed)", ("httpx", "httpcore", "anyio", "asyncio", "h11")),
]

SERVER_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("task runs recorded from events", ("task_run_recorder",)),
    ("events: persist (event + resources rows)", ("event_persister", "events/storage")),
    ("triggers / automations", ("events/triggers.py", "events/actions.py", "proactive")),
    ("events: receive (websocket)", ("api/events.py", "events/stream.py", "events/messaging")),
    ("logs", ("api/logs.py", "models/logs.py")),
    ("artifacts", ("api/artifacts.py", "models/artifacts.py")),
    ("flow runs (create, states)", ("api/flow_runs.py", "models/flow_runs.py", "flow_run_states")),
    ("task runs API", ("api/task_runs.py", "models/task_runs.py")),
    ("orchestration rules", ("orchestration/",)),
    ("blocks (result storage saved)", ("block_", "api/blocks")),
    ("concurrency limits", ("concurrency_limits",)),
    ("other API routes", ("prefect/server/api/",)),
    ("background services (periodic)", ("prefect/server/services/",)),
    ("SQLite thread (any route)", ("aiosqlite", "sqlite3")),
    ("SQLAlchemy (any route)", ("sqlalchemy",)),
    ("HTTP server (uvicorn, starlette)", ("uvicorn", "starlette", "fastapi", "h11", "httptools")),
    ("pydantic (any route)", ("pydantic",)),
    ("asyncio/anyio (unattributed)", ("asyncio", "anyio")),
]


def parse_raw(path: Path) -> Counter[tuple[str, ...]]:
    """py-spy's raw format: ``frame;frame;...;frame COUNT`` per line, outermost first."""
    stacks: Counter[tuple[str, ...]] = Counter()
    if not path.exists():
        return stacks
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


IDLE = (
    "EpollSelector.select",
    "Condition.wait",
    "Event.wait",
    "aiosqlite/core.py:59)",  # its worker thread waiting for the next statement
    "concurrent/futures/thread.py:81)",  # a pool thread waiting for work
    "_atomic (modelset/atomic.py:26)",  # os.fsync: waiting on the disk
    "FlockLocks.hold",  # a worker thread blocked in flock
)
WAITING = "(waiting, not CPU: select, locks, queues, fsync)"


def classify(
    stacks: Counter[tuple[str, ...]], rules: list[tuple[str, tuple[str, ...]]]
) -> Counter[str]:
    """Each stack to the first rule (in the rules' order) that any of its frames matches;
    stacks whose innermost frame waits (select, a lock, a queue, fsync) to WAITING."""
    found: Counter[str] = Counter()
    for stack, count in stacks.items():
        if any(idle in stack[-1] for idle in IDLE) or len(stack) == 1:
            found[WAITING] += count
            continue
        category = next(
            (name for name, keys in rules if any(k in frame for frame in stack for k in keys)),
            "other",
        )
        found[category] += count
    return found


def table(title: str, counts: Counter[str], rate: int, n: int, measured_s: float) -> list[str]:
    busy = {k: v for k, v in counts.items() if k != WAITING}
    total = sum(busy.values())
    sampled_s = total / rate
    lines = [
        f"### {title}",
        "",
        f"sampled on CPU {sampled_s:.1f} s ({sampled_s / n * 1000:.1f} ms per photo; "
        f"{counts[WAITING] / rate:.1f} s more waiting); measured from outside "
        f"{measured_s:.1f} s ({measured_s / n * 1000:.1f} ms per photo)",
        "",
        "| where | ms per photo | share |",
        "|---|---:|---:|",
    ]
    for category, count in Counter(busy).most_common():
        lines.append(
            f"| {category} | {count / rate / n * 1000:.1f} | {count / max(1, total):.0%} |"
        )
    return lines


def side_by_side(
    flow: Counter[str],
    baseline: Counter[str],
    rate: int,
    n: int,
) -> list[str]:
    """The flow process beside the baseline, category by category: what the pipeline adds
    to the work both do, and what only it does."""
    per_photo = {
        name: (flow[name] / rate / n * 1000, baseline[name] / rate / n * 1000)
        for name in {*flow, *baseline} - {WAITING}
    }
    lines = [
        "### flow process beside the baseline (same photos, same sandbox settings)",
        "",
        "Sampled, both: a process under py-spy is not always reaped in time for wait4 to",
        "count it, and a thread waiting for the GIL can be sampled as busy (more so with",
        "the baseline's preparing threads), so compare the categories only one of them has.",
        "",
        "| where | pipeline ms per photo | baseline ms per photo | difference |",
        "|---|---:|---:|---:|",
    ]
    ordered = sorted(per_photo.items(), key=lambda item: item[1][1] - item[1][0])
    for category, (ours, theirs) in ordered:
        lines.append(f"| {category} | {ours:.1f} | {theirs:.1f} | {ours - theirs:+.1f} |")
    ours_total = sum(ours for ours, _ in per_photo.values())
    theirs_total = sum(theirs for _, theirs in per_photo.values())
    lines.append(
        f"| **sampled total** | {ours_total:.1f} | {theirs_total:.1f} | "
        f"{ours_total - theirs_total:+.1f} |"
    )
    return lines


def summarize(folder: Path, rate: int, n: int) -> str:
    """The two tables again from the raw stacks a run left in ``folder``."""
    flow = classify(parse_raw(folder / "flow.pyspy.txt"), FLOW_RULES)
    served = classify(parse_raw(folder / "server.pyspy.txt"), SERVER_RULES)
    return "\n".join(
        [
            *table("flow process", flow, rate, n, 0.0),
            "",
            *table("Prefect server", served, rate, n, 0.0),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--py-spy", default="/tmp/prof-venv/bin/py-spy")
    parser.add_argument("--pipeline-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also profile bench.baseline on the same photos and print both side by side",
    )
    args = parser.parse_args(argv)
    extra = dict(pair.split("=", 1) for pair in args.pipeline_env)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    logs = CACHE / "logs" / f"{stamp}-profile"
    logs.mkdir(parents=True)
    flow_raw, server_raw = logs / "flow.pyspy.txt", logs / "server.pyspy.txt"
    baseline_raw = logs / "baseline.pyspy.txt"
    spy = [args.py_spy, "record", "--nonblocking", "-r", str(args.rate), "-f", "raw"]
    config = Config(
        quick=True,
        n=args.n,
        n_small=args.n,
        n_prep=0,
        concurrency=args.concurrency,
        repeat=1,
        p5_repeat=1,
        settle_max_s=60.0,
        only={"P1"},
        pipeline_env=extra,
        wrap=[*spy, "-o", str(flow_raw), "--"],
        wrap_baseline=[*spy, "-o", str(baseline_raw), "--"],
    )
    bench = Bench.fresh(config, logs)
    server = bench.server
    print(f"machine: {machine().describe()}", flush=True)
    photos = ensure_photos(args.n)
    server.start()
    baseline: Run | None = None
    try:
        sandbox = bench.sandbox("profile")
        bench.settle()
        watcher = subprocess.Popen(
            [*spy, "--subprocesses", "--pid", str(server.pid), "-o", str(server_raw)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
        result = bench.run_pipeline([str(photos)], "profile", sandbox=sandbox)
        watcher.send_signal(signal.SIGINT)
        watcher.wait(timeout=60)
        if args.baseline:
            baseline = bench.run_baseline(photos, "profile-baseline").run
    finally:
        bench.stop_all()
        server.stop()
    run = result.run
    n = args.n
    print(
        f"run: {run.wall_s:.1f} s wall, flow CPU {run.cpu_s:.1f} s (py-spy included), "
        f"{result.images} images, server CPU {result.server_cpu_s:.1f} s + "
        f"{result.server_tail_cpu_s:.1f} s after, sandbox {result.sandbox_cpu_s:.1f} s, "
        f"other processes {run.other_cpu_s:.1f} s, exit {run.returncode}"
    )
    flow = classify(parse_raw(flow_raw), FLOW_RULES)
    served = classify(parse_raw(server_raw), SERVER_RULES)
    lines = [
        *table("flow process (`modelset run`)", flow, args.rate, n, run.cpu_s),
        "",
        *table(
            "Prefect server", served, args.rate, n, result.server_cpu_s + result.server_tail_cpu_s
        ),
    ]
    if baseline is not None:
        print(f"baseline: {baseline.wall_s:.1f} s wall, exit {baseline.returncode}")
        by_stage = classify(parse_raw(baseline_raw), FLOW_RULES)
        lines += ["", *side_by_side(flow, by_stage, args.rate, n)]
    text = "\n".join(lines)
    print(text)
    (logs / "profile.md").write_text(text + "\n", encoding="utf-8")
    print(f"raw stacks: {flow_raw}, {server_raw}")
    os.environ.pop("PYTHONPATH", None)
    return 0 if run.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
