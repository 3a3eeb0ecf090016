"""``python -m bench [--quick] [--n N] [--concurrency C] [--only P1,P3] [--repeat K]``.

Starts a Prefect server (own temporary PREFECT_HOME), for the bucket figures moto's S3
server behind a proxy that adds ``--s3-latency-ms`` (20) to every request, and per measured
run a fresh sandbox (latency 200 ms, generation 2 s, 4 images per set), each in its own
process on 127.0.0.1; generates the input photos once into ``bench/.cache/``; measures the
figures (P1-P7; P1-CPU, P1-TASKS, P1-SLOPE and P1-FIRST from P1's runs and a pair at the
other of N=200 and 1000; P1-S3, P4-S3 and S3-REQ: the same runs with ``--out`` on the S3
server; LOOKS and LABELS in process) and prints them with their goals. Raw numbers go
to ``bench/.cache/results/``. Method and history: docs/performance.md.

``--pipeline-src DIR`` measures the pipeline of another source tree (a checkout of an
older commit) with this bench, its baseline, sandbox and servers, and this venv: P7 of
two commits side by side on one machine (docs/performance.md, "Two commits side by side").
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.figures import (
    Bench,
    Config,
    Figure,
    PipelineRun,
    looks_planning,
    p1_bucket,
    p1_slope,
    p1_throughput,
    p2_preparation,
    p3_memory,
    p3_small_run,
    p4_bucket,
    p4_rerun,
    p4_reruns,
    p5_fixed_cost,
    p6_slot_use,
    p7_scale,
    pipeline_modelset,
    s3_requests,
)
from bench.labels import labels_cpu
from bench.measure import NOISY_SHARE, machine
from bench.photos import CACHE, ensure_photos
from bench.servers import BIN, PrefectServer, S3Server, migrate_home

FIGURES = (
    "P1",
    "P1-CPU",
    "P1-TASKS",
    "P1-SLOPE",
    "P1-FIRST",
    "P1-S3",
    "S3-REQ",
    "P2",
    "P3",
    "P4",
    "P4-S3",
    "P5",
    "P6",
    "P7",
    "LOOKS",
    "LABELS",
)
QUICK_SKIPS = {"P7"}  # the 5,000-photo run is for `make bench` (or --only P7)
console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
errors = Console(stderr=True, highlight=False)


def parse(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="N=200 and fewer repeats (about 11 min for every figure)",
    )
    parser.add_argument("--n", type=int, help="photos in P1's batch (default 1000; quick 200)")
    parser.add_argument(
        "--n-small",
        type=int,
        help="P3's small batch (default N/10, at least 1.25x the concurrency: 100; quick 40)",
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--s3-latency-ms",
        type=float,
        default=20.0,
        help="latency the proxy in front of the S3 server adds to every request (default 20)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="P1 pairs, alternating order")
    parser.add_argument(
        "--only",
        default=None,
        help="figures to measure, e.g. P1,P3,P1-S3 (default: all; --quick: all but P7)",
    )
    parser.add_argument(
        "--pipeline-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for every `modelset run` (to try a setting); repeatable",
    )
    parser.add_argument(
        "--pipeline-src",
        type=Path,
        default=None,
        metavar="DIR",
        help="run `modelset run` from the source tree DIR (e.g. `git worktree add` of an "
        "older commit) instead of the one this venv imports; everything else is this "
        "bench's (docs/performance.md: two commits side by side)",
    )
    parser.add_argument(
        "--wrap",
        default="",
        metavar="CMD",
        help="run every `modelset run` under CMD, e.g. a profiler: "
        '"py-spy record -o /tmp/run.svg --"',
    )
    args = parser.parse_args(argv)
    chosen = args.only or ",".join(f for f in FIGURES if not (args.quick and f in QUICK_SKIPS))
    only = {part.strip().upper() for part in chosen.split(",") if part.strip()}
    if only & {"P1-CPU", "P1-SLOPE", "P1-FIRST"}:
        only.add("P1")  # read off P1's runs (and, for the slope, a pair at the other size)
    if "S3-REQ" in only:
        only.update({"P1-S3", "P4-S3"})
    if unknown := only - set(FIGURES):
        parser.error(f"--only: unknown figure(s) {', '.join(sorted(unknown))}")
    n = args.n or (200 if args.quick else 1000)
    source = args.pipeline_src.resolve() if args.pipeline_src else None
    if source is not None and not (source / "modelset" / "__main__.py").is_file():
        parser.error(f"--pipeline-src {args.pipeline_src}: no modelset/__main__.py in it")
    extra_env = {}
    for pair in args.pipeline_env:
        key, sep, value = pair.partition("=")
        if not sep:
            parser.error(f"--pipeline-env {pair!r}: expected KEY=VALUE")
        extra_env[key] = value
    # The small batch must not be below the concurrency: memory bound by the sets in
    # flight would then differ between the two sizes, and P3 is about growth with N.
    floor = args.concurrency + args.concurrency // 4
    return Config(
        quick=args.quick,
        n=n,
        n_small=args.n_small or min(n, max(n // 10, floor)),
        n_prep=20 if args.quick else 100,
        concurrency=args.concurrency,
        repeat=max(1, args.repeat),
        p5_repeat=3,
        settle_max_s=20.0 if args.quick else 120.0,
        only=only,
        pipeline_env=extra_env,
        wrap=shlex.split(args.wrap),
        pipeline_src=source,
        s3_latency_ms=args.s3_latency_ms,
    )


def source_commit(where: str) -> str:
    """The commit of a source tree, ``-dirty`` when it has changes."""
    try:
        described = subprocess.run(
            ["git", "-C", where, "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return described


def compile_tree(source: Path) -> None:
    """Compile a --pipeline-src tree's modules once, as `make setup` does for the venv's:
    where PYTHONDONTWRITEBYTECODE is set, every pipeline process would otherwise compile
    every module it imports, and that tree's runs would pay for it."""
    note(f"compiling {source / 'modelset'}")
    subprocess.run(
        [str(BIN / "python"), "-m", "compileall", "-q", str(source / "modelset")],
        check=False,
        capture_output=True,
    )


def note(message: str) -> None:
    errors.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {message}")


def main(argv: list[str] | None = None) -> int:
    config = parse(argv)
    started = time.perf_counter()
    host = machine()
    console.print(f"[bold]modelset benchmark[/] ({'quick' if config.quick else 'full'})")
    console.print(f"machine: {host.describe()}")
    if config.pipeline_env:
        console.print(f"pipeline environment: {config.pipeline_env}")
    if config.wrap:
        console.print(f"pipeline runs under: {shlex.join(config.wrap)}")
    if config.pipeline_src is not None:
        compile_tree(config.pipeline_src)
    pipeline_tree = pipeline_modelset(config)
    pipeline_commit = source_commit(pipeline_tree)
    console.print(f"pipeline from: {pipeline_tree} ({pipeline_commit})")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    logs = CACHE / "logs" / stamp
    logs.mkdir(parents=True)
    with_bucket = config.wants("P1-S3", "P4-S3")
    bench = Bench.fresh(
        config, logs, ephemeral_home=CACHE / "prefect-ephemeral-home", with_s3=with_bucket
    )
    work, server, s3 = bench.work, bench.server, bench.s3
    needs_server = config.wants("P1", "P1-TASKS", "P3", "P4", "P5", "P6", "P7", "P1-S3", "P4-S3")
    figures: dict[str, Figure] = {}
    try:
        # Start what takes a while side by side: the servers, the ephemeral home's one-time
        # migration, the photos.
        server_error: list[BaseException] = []

        def start(what: PrefectServer | S3Server) -> None:
            try:
                what.start()
            except BaseException as exc:
                server_error.append(exc)

        starters = []
        if needs_server:
            note(f"starting a Prefect server on {server.api_url}")
            starters.append(threading.Thread(target=start, args=(server,), daemon=True))
        if s3 is not None:
            note(f"starting an S3 server (moto) on {s3.endpoint}")
            starters.append(threading.Thread(target=start, args=(s3,), daemon=True))
        for starter in starters:
            starter.start()
        migration = (
            migrate_home(bench.ephemeral_home, logs / "migrate-ephemeral-home.log")
            if config.wants("P5")
            else None
        )
        note(f"photos: {config.n} in {CACHE}")
        made = time.perf_counter()
        ensure_photos(config.n)
        if config.wants("P3"):
            ensure_photos(config.n_small)
        note(f"photos ready in {time.perf_counter() - made:.1f} s")
        for starter in starters:
            starter.join()
        if server_error:
            raise server_error[0]
        if needs_server:
            note(f"Prefect server ready in {server.started_in_s:.1f} s")
            idle = bench.measure_server_idle(10.0 if config.quick else 30.0)
            note(f"Prefect server idle: {idle * 1000:.0f} ms of CPU a second")
        if s3 is not None:
            note(f"S3 server ready in {s3.started_in_s:.1f} s")
        if migration is not None:
            migration.wait()

        small: PipelineRun | None = None
        large: PipelineRun | None = None
        prefect_cpu: tuple[float, float] | None = None
        if config.wants("P3"):
            note(f"P3: pipeline on N={config.n_small}")
            small = p3_small_run(bench)
        bucket_first: PipelineRun | None = None
        bucket_runs: list[PipelineRun] = []
        if config.wants("P1", "P1-TASKS", "P3", "P4", "P1-S3", "P4-S3"):
            runs = ["baseline"] if config.wants("P1") else []
            runs += ["pipeline"] + (["pipeline into a bucket"] if with_bucket else [])
            note(f"P1: {', '.join(runs)} on N={config.n}")
            p1 = p1_throughput(bench, with_baseline=config.wants("P1"), with_bucket=with_bucket)
            large, prefect_cpu = p1.last, p1.prefect_cpu
            if config.wants("P1"):
                figures["P1"] = p1.figure
                if "P1-CPU" in bench.figures:
                    figures["P1-CPU"] = bench.figures["P1-CPU"]
            if config.wants("P1-TASKS"):
                figures["P1-TASKS"] = bench.figures["P1-TASKS"]
            if config.wants("P1-SLOPE", "P1-FIRST"):
                note("P1-SLOPE, P1-FIRST: baseline and pipeline at the other of N=200, 1000")
                figures["P1-SLOPE"], figures["P1-FIRST"] = p1_slope(bench, p1)
            if config.wants("P1-S3"):
                figures["P1-S3"] = p1_bucket(bench, p1)
                bucket_runs = p1.bucket
            if config.wants("P4-S3"):
                bucket_first = p1.bucket[-1]
        if config.wants("P2"):
            note("P2: preparation CPU, in process")
            figures["P2"] = p2_preparation(
                bench,
                prefect_cpu[0] if prefect_cpu else None,
                prefect_cpu[1] if prefect_cpu else None,
            )
        if config.wants("P3") and small is not None and large is not None:
            figures["P3"] = p3_memory(bench, small, large)
        if config.wants("P4", "P4-S3") and large is not None:
            note("P4: rerun of the same batch" + (", folder and bucket" if bucket_first else ""))
            reruns = p4_reruns(bench, large, bucket_first)
            if config.wants("P4"):
                figures["P4"] = p4_rerun(bench, reruns)
            if config.wants("P4-S3"):
                figures["P4-S3"] = p4_bucket(bench, reruns)
                figures["S3-REQ"] = s3_requests(bench, bucket_runs, reruns.bucket)
        if large is not None:
            large.sandbox.stop()
        bench.stop_all()  # the bucket run's sandbox too
        if config.wants("P5"):
            note("P5: one photo in a fresh process")
            figures["P5"] = p5_fixed_cost(bench)
        if config.wants("P6"):
            note("P6: slot use, 128 photos at concurrency 32, 20 s generation")
            figures["P6"] = p6_slot_use(bench)
            bench.stop_all()
        if config.wants("P7"):
            note("P7: 5,000 small photos at concurrency 64, then the rerun")
            n1000 = large.run.peak_rss_mib if large is not None and config.n == 1000 else None
            figures["P7"] = p7_scale(bench, n1000)
            bench.stop_all()
        if config.wants("LOOKS"):
            note("LOOKS: near-duplicate planning, 10,000 new photos against 100,000 looks")
            figures["LOOKS"] = looks_planning(bench)
        if config.wants("LABELS"):
            note("LABELS: CPU to label and to sign one stored image")
            figures["LABELS"] = labels_cpu(bench)
    finally:
        bench.stop_all()
        server.stop()
        if s3 is not None:
            s3.stop()
    elapsed = time.perf_counter() - started
    report(figures, config, elapsed)
    save(bench, figures, host.describe(), elapsed, stamp, pipeline_commit)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def report(figures: dict[str, Figure], config: Config, elapsed: float) -> None:
    table = Table(title="modelset vs a hand-written script", show_lines=True)
    table.add_column("figure")
    table.add_column("measured")
    table.add_column("goal")
    table.add_column("other processes' CPU (noise)")
    table.add_column("result")
    colours = {
        "pass": "green",
        "falls short": "red",
        "invalid": "bold red",
        "noisy (not a pass)": "yellow",
        "falls short (noisy)": "red",
        "reported": "cyan",
        "not run": "dim",
    }
    for key in FIGURES:
        if key not in figures:
            continue
        figure = figures[key]
        verdict = figure.shown_verdict
        table.add_row(
            f"{key} {figure.title}",
            figure.measured,
            figure.goal,
            figure.noise()[0],
            f"[{colours.get(verdict, 'white')}]{verdict}[/]",
        )
    console.print(table)
    for key in FIGURES:
        if key in figures and figures[key].details:
            console.print(f"[bold]{key}[/]")
            for line in figures[key].details:
                console.print(f"  - {line}")
    console.print(
        f"bench {'--quick ' if config.quick else ''}took {elapsed:.0f} s. Noise: the CPU "
        "other processes used during a figure's runs, against the machine's busy CPU then; "
        f"a run where they took more than {NOISY_SHARE:.0%} makes its figure noisy, never "
        "a pass."
    )


def save(
    bench: Bench,
    figures: dict[str, Figure],
    host: str,
    elapsed: float,
    stamp: str,
    pipeline_commit: str,
) -> None:
    folder = CACHE / "results"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stamp}-{'quick' if bench.config.quick else 'full'}.json"
    record: dict[str, Any] = {
        "machine": host,
        "config": {**bench.config.__dict__, "only": sorted(bench.config.only)},
        "elapsed_s": elapsed,
        "pipeline_commit": pipeline_commit,
        "figures": {key: figure.record() for key, figure in figures.items()},
        "raw": bench.raw,
    }
    path.write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    console.print(f"raw numbers: {path}; logs: {bench.logs}")


if __name__ == "__main__":
    sys.exit(main())
