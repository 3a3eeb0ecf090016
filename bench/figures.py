"""The five figures of issue 5, each measured with its goal, and two on a bucket.

P1 throughput, P2 preparation CPU, P3 memory, P4 rerun, P5 fixed cost; P1-S3 and P4-S3
are P1's pipeline run and P4's rerun with ``--out s3://...`` on a local S3 server,
against the same runs into a folder. ``bench.__main__`` runs them in an order that lets
one pipeline run serve P1, P3 and P4 (see docs/performance.md for the method).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from bench.measure import (
    Run,
    cpu_seconds,
    machine_busy_seconds,
    peak_rss_mib,
    reset_peak_rss,
    run_measured,
    time_import,
    tree,
    wait_until_idle,
)
from bench.photos import ensure_photos, ensure_small_photos, photo_paths
from bench.servers import BIN, PrefectServer, S3Server, Sandbox, clean_environment

TEMPLATE = 20
OTHER_TEMPLATE = 21  # for in-process reference runs: no render cache shared with a measured run
BUCKET_GOAL = 1.15  # P1-S3: the bucket's time over the folder's
BUCKET_RERUN_GOAL = 1.5  # P4-S3


@dataclass
class Config:
    quick: bool
    n: int  # P1 batch (and P3's large N, and P4's batch)
    n_small: int  # P3's small N
    n_prep: int  # P2 photos
    concurrency: int
    repeat: int  # P1 pairs (baseline + pipeline), alternating order
    p5_repeat: int
    settle_max_s: float  # how long to let the Prefect server finish writing after a run
    only: set[str]
    pipeline_env: dict[str, str] = field(default_factory=dict)
    wrap: list[str] = field(default_factory=list)  # e.g. a profiler's command line
    wrap_baseline: list[str] = field(default_factory=list)  # the same for the baseline
    s3_latency_ms: float = 20.0  # added to every bucket request by the proxy
    # `modelset run` from this source tree (another commit's checkout), else from wherever
    # this venv's python finds modelset (PYTHONPATH, else the editable install)
    pipeline_src: Path | None = None

    def wants(self, *keys: str) -> bool:
        return any(key in self.only for key in keys)


@dataclass
class Figure:
    key: str
    title: str
    measured: str
    goal: str
    verdict: str  # "pass", "falls short", "reported", "not run"
    details: list[str] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list, repr=False)  # what the noise is read from

    def noise(self) -> tuple[str, bool]:
        """The CPU other processes used during the figure's runs, and whether any run
        was noisy (they took more than NOISY_SHARE of the machine's CPU during it)."""
        if not self.runs:
            return "n/a", False
        other = sum(r.other_cpu_s for r in self.runs)
        busy = sum(r.busy_cpu_s for r in self.runs)
        worst = max(self.runs, key=lambda r: r.noise_share)
        noisy = any(r.noisy for r in self.runs)
        text = (
            f"{other:.1f} s of {busy:.1f} s = {other / busy if busy else 0:.0%} "
            f"(worst run {worst.noise_share:.0%})"
        )
        return (f"{text} NOISY" if noisy else text), noisy

    @property
    def shown_verdict(self) -> str:
        """The verdict, never a pass when the figure was noisy."""
        _, noisy = self.noise()
        if noisy and self.verdict == "pass":
            return "noisy (not a pass)"
        if noisy and self.verdict == "falls short":
            return "falls short (noisy)"
        return self.verdict

    def record(self) -> dict[str, Any]:
        text, noisy = self.noise()
        kept = {k: v for k, v in self.__dict__.items() if k != "runs"}
        return {**kept, "shown_verdict": self.shown_verdict, "noise": text, "noisy": noisy}


@dataclass
class PipelineRun:
    run: Run
    out: str  # a folder, or s3://bucket/out
    sandbox: Sandbox
    submissions: int
    server_cpu_s: float  # during the run
    server_tail_s: float  # settle time after it returned
    server_tail_cpu_s: float
    server_peak_rss_mib: float
    sandbox_cpu_s: float
    images: int
    statuses: dict[str, int]
    s3_cpu_s: float = 0.0  # the S3 server's CPU during the run
    requests: dict[str, int] = field(default_factory=dict)  # to the S3 server, by kind
    flow_message: str = ""  # the flow run's final state message, when the run failed
    first_submit_s: float | None = None  # from the spawn to the sandbox's first submission

    @property
    def cpu_with_server_s(self) -> float:
        """The flow process's CPU and the Prefect server's during and after the run."""
        return self.run.cpu_s + self.server_cpu_s + self.server_tail_cpu_s

    @property
    def on_bucket(self) -> bool:
        return self.out.startswith("s3://")


@dataclass
class BaselineRun:
    run: Run
    summary: dict[str, Any]
    sandbox_cpu_s: float
    first_submit_s: float | None


@dataclass
class Bench:
    config: Config
    work: Path
    logs: Path
    server: PrefectServer
    client_home: Path
    ephemeral_home: Path
    s3: S3Server | None = None  # started when a bucket figure is wanted
    raw: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    started: list[Sandbox] = field(default_factory=list)
    server_idle_cpu_per_s: float = 0.0  # the server's periodic services, with no run
    _counter: int = 0

    @classmethod
    def fresh(
        cls,
        config: Config,
        logs: Path,
        *,
        ephemeral_home: Path | None = None,
        with_s3: bool = False,
    ) -> Bench:
        """A bench in a new scratch folder, with its Prefect server (and S3 server) to start."""
        work = Path(tempfile.mkdtemp(prefix="modelset-bench-"))
        return cls(
            config=config,
            work=work,
            logs=logs,
            server=PrefectServer(logs),
            client_home=work / "client-prefect-home",
            ephemeral_home=ephemeral_home or work / "ephemeral-prefect-home",
            s3=S3Server(logs, config.s3_latency_ms) if with_s3 else None,
        )

    def _name(self, what: str) -> str:
        self._counter += 1
        return f"{self._counter:02d}-{what}"

    # -- running things ----------------------------------------------------------------

    def sandbox(self, what: str) -> Sandbox:
        sandbox = Sandbox(self.logs, name=self._name(f"sandbox-{what}"))
        self.started.append(sandbox)
        return sandbox.start()

    def stop_all(self) -> None:
        for sandbox in self.started:
            sandbox.stop()

    def pipeline_env(self, sandbox: Sandbox, *, ephemeral: bool = False) -> dict[str, str]:
        env = clean_environment()
        env.update(sandbox.client_env())
        if ephemeral:
            env["PREFECT_HOME"] = str(self.ephemeral_home)
            env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "90"
        else:
            env["PREFECT_HOME"] = str(self.client_home)
            env["PREFECT_API_URL"] = self.server.api_url
        return env

    def settle(self) -> tuple[float, float]:
        return wait_until_idle(self.server.pid, max_s=self.config.settle_max_s)

    def measure_server_idle(self, window_s: float) -> float:
        """The Prefect server's CPU per second with nothing to do: its periodic services
        (scheduler, late runs, triggers, event persister), which a run's wall time pays
        whatever the run sends."""
        self.settle()
        before = cpu_seconds(tree(self.server.pid))
        time.sleep(window_s)
        self.server_idle_cpu_per_s = (cpu_seconds(tree(self.server.pid)) - before) / window_s
        return self.server_idle_cpu_per_s

    def server_cpu_of_run_s(self, run: PipelineRun) -> float:
        """The server's CPU during and right after ``run``, less what it spends idle in
        as long: what the run itself cost it."""
        idle = self.server_idle_cpu_per_s * (run.run.wall_s + run.server_tail_s)
        return run.server_cpu_s + run.server_tail_cpu_s - idle

    def run_pipeline(
        self,
        sources: list[str],
        what: str,
        *,
        sandbox: Sandbox | None = None,
        out: str | None = None,
        bucket: bool = False,
        concurrency: int | None = None,
        extra_env: dict[str, str] | None = None,
        ephemeral: bool = False,
    ) -> PipelineRun:
        """``modelset run`` in a fresh process; into ``out``, else a new folder (or with
        ``bucket`` a new bucket on the S3 server)."""
        sandbox = sandbox or self.sandbox(what)
        if out is None:
            if bucket:
                assert self.s3 is not None, "a bucket run needs the S3 server"
                out = self.s3.new_bucket(what)
            else:
                out = str(self.work / self._name(f"out-{what}"))
        on_bucket = out.startswith("s3://")
        self.settle()
        before = len(sandbox.submissions())
        server_pids = tree(self.server.pid)
        reset_peak_rss(server_pids)
        env = self.pipeline_env(sandbox, ephemeral=ephemeral)
        if on_bucket:
            assert self.s3 is not None
            env.update(self.s3.client_env())
        env.update(self.config.pipeline_env)
        env.update(extra_env or {})
        env.update(pipeline_path(self.config))
        command = [
            *self.config.wrap,
            *pipeline_command(self.config),
            "run",
            *sources,
            "-t",
            str(TEMPLATE),
            "--out",
            out,
            "--concurrency",
            str(concurrency or self.config.concurrency),
            "--yes",
        ]
        watch = {"server": self.server.pid, "sandbox": sandbox.pid}
        if self.s3 is not None:  # idle in a folder run; watched so it is never "other"
            watch["s3"] = self.s3.pid
            watch["s3-proxy"] = self.s3.proxy_pid
        offset = self.s3.log_offset() if self.s3 is not None else 0
        run = run_measured(
            command,
            env=env,
            cwd=self.work,
            log=self.logs / f"{self._name(what)}.log",
            watch=watch,
        )
        requests = self.s3.requests_since(offset) if self.s3 is not None and on_bucket else {}
        tail_s, tail_cpu = (0.0, 0.0) if ephemeral else self.settle()
        with self.s3.environment() if self.s3 is not None and on_bucket else nullcontext():
            statuses, images = manifest_counts(out)
        failed = "" if run.returncode == 0 or ephemeral else last_flow_run(self.server.api_url)
        return PipelineRun(
            run=run,
            out=out,
            sandbox=sandbox,
            submissions=len(sandbox.submissions()) - before,
            server_cpu_s=run.watched_cpu_s.get("server", 0.0),
            server_tail_s=tail_s,
            server_tail_cpu_s=tail_cpu,
            server_peak_rss_mib=peak_rss_mib(server_pids),
            sandbox_cpu_s=run.watched_cpu_s.get("sandbox", 0.0),
            images=images,
            statuses=statuses,
            s3_cpu_s=run.watched_cpu_s.get("s3", 0.0),
            requests=dict(requests),
            flow_message=failed,
            first_submit_s=sandbox.first_submit_after(run.started_at, before),
        )

    def run_baseline(self, photos: Path, what: str) -> BaselineRun:
        sandbox = self.sandbox(what)
        try:
            self.settle()
            out = self.work / self._name(f"out-{what}")
            env = clean_environment()
            command = [
                *self.config.wrap_baseline,
                str(BIN / "python"),
                "-m",
                "bench.baseline",
                "--base-url",
                sandbox.base_url,
                "--token",
                sandbox.token,
                "--concurrency",
                str(self.config.concurrency),
                "-t",
                str(TEMPLATE),
                "--out",
                str(out),
                str(photos),
            ]
            env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
            run = run_measured(
                command,
                env=env,
                cwd=self.work,
                log=self.logs / f"{self._name(what)}.log",
                watch={"sandbox": sandbox.pid},
            )
            summary: dict[str, Any] = {}
            for line in run.log.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    summary = json.loads(line)
            return BaselineRun(
                run,
                summary,
                run.watched_cpu_s.get("sandbox", 0.0),
                sandbox.first_submit_after(run.started_at),
            )
        finally:
            sandbox.stop()


def pipeline_path(config: Config) -> dict[str, str]:
    """The PYTHONPATH of a pipeline process, where it must be set: ``--pipeline-src``'s
    tree first, and this bench's when ``--wrap`` runs a module of it (bench.stagetimer)."""
    paths = [str(config.pipeline_src)] if config.pipeline_src is not None else []
    if config.wrap:
        paths.append(str(Path(__file__).resolve().parents[1]))
    return {"PYTHONPATH": os.pathsep.join(paths)} if paths else {}


def pipeline_command(config: Config) -> list[str]:
    """How a pipeline process starts: the venv's ``modelset`` script, or for another
    source tree ``python -m modelset`` (the script's entry point moved between commits;
    every commit has ``modelset/__main__.py``)."""
    if config.pipeline_src is not None:
        return [str(BIN / "python"), "-m", "modelset"]
    return [str(BIN / "modelset")]


def pipeline_modelset(config: Config) -> str:
    """Where a pipeline process imports modelset from (with --pipeline-src, that tree)."""
    env = clean_environment()
    env.update(pipeline_path(config))
    try:
        found = subprocess.run(
            [str(BIN / "python"), "-c", "import modelset; print(modelset.__file__)"],
            env=env,
            cwd=tempfile.gettempdir(),
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (modelset did not import)"
    return str(Path(found).parent.parent)


def manifest_counts(out: str) -> tuple[dict[str, int], int]:
    """Rows by status and images listed, from the manifest of a folder or a bucket (a
    bucket's needs the ``AWS_*`` of its server in this process: ``S3Server.environment``)."""
    from modelset.report import read_manifest

    statuses: Counter[str] = Counter()
    images = 0
    for row in read_manifest(out):
        statuses[row.status.value] += 1
        images += len(row.outputs or [])
    return dict(statuses), images


def _verdict(ok: bool) -> str:
    return "pass" if ok else "falls short"


def invalid(result: PipelineRun, photos: int, images_per_set: int = 4) -> str | None:
    """Why a pipeline run cannot count (it failed, or made fewer images), or None."""
    expected = photos * images_per_set
    if result.run.returncode != 0 or result.images < expected:
        flow = f"; flow run {result.flow_message}" if result.flow_message else ""
        return (
            f"INVALID RUN: exit {result.run.returncode}, {result.images} of {expected} images "
            f"{result.statuses}{flow}; log {result.run.log}: ...{result.run.tail(3)[-300:]}"
        )
    return None


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- P2: preparation CPU ---------------------------------------------------------------------


def bare_pillow(path: Path) -> bytes:
    """The reference: one decode, the same crop to 3:4 (and resize past 2048), JPEG q92."""
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    if abs(width / height - 0.75) > 0.01:
        if width / height > 0.75:
            new_width = round(height * 3 / 4)
            left = (width - new_width) // 2
            image = image.crop((left, 0, left + new_width, height))
        else:
            image = image.crop((0, 0, width, round(width * 4 / 3)))
    if max(image.size) > 2048:
        scale = 2048 / max(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def p2_preparation(
    bench: Bench, prefect_cpu_per_photo: float | None, server_cpu_per_photo: float | None
) -> Figure:
    from modelset.images import Fit, Policy, prepare_image
    from modelset.sources import fetch
    from modelset.stages import PrepareOptions, open_workspace, prepare_photo

    config = bench.config
    photos = photo_paths(ensure_photos(config.n_prep))
    options = PrepareOptions(policy=Policy.FIX, fit=Fit.CROP)
    warm = photos[:3]
    for path in warm:
        bare_pillow(path)
    rounds: dict[str, list[float]] = {"bare": [], "core": [], "prepare_image": [], "fetch": []}
    busy_before, cpu_before, wall_before = (
        machine_busy_seconds(),
        time.process_time(),
        time.perf_counter(),
    )
    for round_index in range(2):
        if round_index == 0:  # warm the preparation up in a workspace of its own
            warm_out = Path(tempfile.mkdtemp(dir=bench.work))
            with open_workspace(warm_out) as warm_workspace:
                for path in warm:
                    prepare_photo(str(path), warm_workspace, options)
            shutil.rmtree(warm_out, ignore_errors=True)
        out = Path(tempfile.mkdtemp(dir=bench.work))
        order = ["bare", "core"] if round_index == 0 else ["core", "bare"]
        with open_workspace(out) as workspace:
            for what in order:
                started = time.process_time()
                for path in photos:
                    if what == "bare":
                        bare_pillow(path)
                    else:
                        prepared = prepare_photo(str(path), workspace, options)
                        assert prepared.ready, prepared.reason
                rounds[what].append((time.process_time() - started) / len(photos))
        scratch = Path(tempfile.mkdtemp(dir=bench.work))
        started = time.process_time()
        for path in photos:
            fetch(str(path), scratch)
        rounds["fetch"].append((time.process_time() - started) / len(photos))
        started = time.process_time()
        for index, path in enumerate(photos):
            prepare_image(path, scratch / f"{index}.jpg", policy=Policy.FIX, fit=Fit.CROP)
        rounds["prepare_image"].append((time.process_time() - started) / len(photos))
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    best = {what: min(values) for what, values in rounds.items()}
    ratio = best["core"] / best["bare"]
    busy = machine_busy_seconds() - busy_before
    own = time.process_time() - cpu_before
    in_process = Run(
        command=["P2, in the bench process"],
        wall_s=time.perf_counter() - wall_before,
        cpu_s=own,
        peak_rss_mib=0.0,
        returncode=0,
        log=bench.logs,
        other_cpu_s=max(0.0, busy - own),
        busy_cpu_s=busy,
    )
    bench.raw["P2"] = {"per_photo_cpu_s": rounds, "best": best, "photos": len(photos)}
    prefect = (
        f"+{prefect_cpu_per_photo * 1000:.0f} ms in the flow process and "
        f"{(server_cpu_per_photo or 0.0) * 1000:.0f} ms in the server"
        if prefect_cpu_per_photo is not None
        else "n/a (needs P1)"
    )
    return Figure(
        "P2",
        "preparation CPU per photo",
        f"{best['core'] * 1000:.0f} ms vs bare Pillow {best['bare'] * 1000:.0f} ms "
        f"= {ratio:.2f}x; Prefect per photo: {prefect}",
        "core <= 1.3x bare",
        _verdict(ratio <= 1.3),
        [
            f"{len(photos)} photos (a third not 3:4), best of 2 rounds, time.process_time",
            f"core = modelset.stages.prepare_photo: fetch+hash {best['fetch'] * 1000:.0f} ms, "
            f"prepare_image {best['prepare_image'] * 1000:.0f} ms, thumbnail+records "
            f"{(best['core'] - best['fetch'] - best['prepare_image']) * 1000:.0f} ms",
            "Prefect per photo, from P1: (pipeline process CPU - baseline process CPU) / N, "
            "and the Prefect server's CPU during and right after the run / N",
        ],
        runs=[in_process],
    )


# -- P1, P3, P4 and their bucket twins -------------------------------------------------------


@dataclass
class P1Runs:
    """What P1 measured: its figure, and the pipeline runs into a folder and a bucket."""

    figure: Figure
    folder: list[PipelineRun]
    bucket: list[PipelineRun]
    prefect_cpu: tuple[float, float] | None  # per photo: flow above baseline, server
    baselines: list[BaselineRun] = field(default_factory=list)

    @property
    def last(self) -> PipelineRun:
        return self.folder[-1]


def p1_throughput(bench: Bench, *, with_baseline: bool, with_bucket: bool = False) -> P1Runs:
    """P1's baseline and pipeline runs, and with ``with_bucket`` the pipeline into a bucket
    (P1-S3) in the same rotation: K rounds, every other one in reverse order."""
    config = bench.config
    photos = ensure_photos(config.n)
    baseline_walls: list[float] = []
    baseline_cpus: list[float] = []
    baseline_runs: list[Run] = []
    baselines: list[BaselineRun] = []
    runs: dict[str, list[PipelineRun]] = {"pipeline": [], "pipeline-s3": []}
    task_runs_created: list[int] = []  # by each folder pipeline run
    details: list[str] = []
    kinds = [
        kind
        for kind, wanted in (
            ("baseline", with_baseline),
            ("pipeline", True),
            ("pipeline-s3", with_bucket),
        )
        if wanted
    ]
    for index in range(config.repeat):
        order = kinds if index % 2 == 0 else kinds[::-1]
        for what in order:
            if what == "baseline":
                baseline = bench.run_baseline(photos, f"p1-baseline-{index}")
                run, summary, sandbox_cpu = baseline.run, baseline.summary, baseline.sandbox_cpu_s
                baselines.append(baseline)
                baseline_walls.append(run.wall_s)
                baseline_cpus.append(run.cpu_s)
                baseline_runs.append(run)
                details.append(
                    f"baseline #{index + 1}: {run.wall_s:.1f} s wall, {run.cpu_s:.1f} s CPU, "
                    f"{run.peak_rss_mib:.0f} MiB peak, {summary.get('images', '?')} images, "
                    f"sandbox CPU {sandbox_cpu:.1f} s, other processes {run.other_cpu_s:.1f} s "
                    f"CPU, exit {run.returncode}"
                )
                bench.raw.setdefault("P1", {}).setdefault("baseline", []).append(
                    {**run.__dict__, "log": str(run.log), "summary": summary}
                )
                continue
            earlier = runs[what]
            if earlier:  # only the last run of each kind is kept for the reruns
                earlier[-1].sandbox.stop()
            before = count_task_runs(bench.server.api_url)
            result = bench.run_pipeline(
                [str(photos)], f"p1-{what}-{index}", bucket=what == "pipeline-s3"
            )
            task_runs = count_task_runs(bench.server.api_url) - before
            earlier.append(result)
            if what == "pipeline":
                task_runs_created.append(task_runs if before >= 0 else -1)
                details.append(_run_line(f"pipeline #{index + 1}", result))
                details.append(
                    f"pipeline #{index + 1}: {task_runs} task runs = "
                    f"{task_runs / config.n:.2f} per photo (one template), Prefect server "
                    f"{(result.server_cpu_s + result.server_tail_cpu_s) / config.n * 1000:.0f} "
                    "ms CPU per set"
                )
                bench.raw.setdefault("P1", {}).setdefault("pipeline", []).append(
                    _pipeline_raw(result)
                )
    folder = runs["pipeline"]
    broken = [reason for r in folder if (reason := invalid(r, config.n))]
    broken += [
        f"INVALID BASELINE RUN: exit {b['returncode']}, log {b['log']}"
        for b in bench.raw.get("P1", {}).get("baseline", [])
        if b["returncode"] != 0
    ]
    details.extend(broken)
    bench.figures["P1-TASKS"] = p1_task_runs(bench, folder, task_runs_created, broken)
    pipeline_walls = [r.run.wall_s for r in folder]
    title = f"throughput, N={config.n}, concurrency {config.concurrency}"
    if not baseline_walls:
        figure = Figure(
            "P1",
            title,
            f"pipeline {_median(pipeline_walls):.1f} s (baseline not run)",
            f"pipeline <= {p1_goal(config.n)}x baseline",
            "not run",
            details,
            runs=[r.run for r in folder],
        )
        return P1Runs(figure, folder, runs["pipeline-s3"], None, baselines)
    # Each pair's ratio (a pair ran back to back, in alternating order), then their median.
    pairs = [p / b for p, b in zip(pipeline_walls, baseline_walls, strict=False)]
    ratio = _median(pairs)
    spread = (
        f" (median of {len(pairs)} pairs: {', '.join(f'{r:.2f}x' for r in pairs)}; spread "
        f"{min(pairs):.2f}-{max(pairs):.2f}x)"
        if len(pairs) > 1
        else ""
    )
    pipeline_cpu = _median([r.run.cpu_s for r in folder])
    prefect_cpu = (pipeline_cpu - _median(baseline_cpus)) / config.n
    server_cpu = _median([r.server_cpu_s + r.server_tail_cpu_s for r in folder]) / config.n
    server_run_cpu = _median([bench.server_cpu_of_run_s(r) for r in folder]) / config.n
    details.append(
        f"per photo: pipeline process {pipeline_cpu / config.n * 1000:.0f} ms CPU, baseline "
        f"{_median(baseline_cpus) / config.n * 1000:.0f} ms, Prefect server "
        f"{server_cpu * 1000:.0f} ms"
    )
    goal = p1_goal(config.n)
    figure = Figure(
        "P1",
        title,
        f"pipeline {_median(pipeline_walls):.1f} s vs baseline {_median(baseline_walls):.1f} s "
        f"= {ratio:.2f}x{spread}",
        f"pipeline <= {goal}x baseline",
        "invalid" if broken else _verdict(ratio <= goal),
        details,
        runs=[*baseline_runs, *(r.run for r in folder)],
    )
    bench.raw["P1"]["ratio"] = ratio
    bench.raw["P1"]["pair_ratios"] = pairs
    per_photo = pipeline_cpu / config.n
    baseline_per_photo = _median(baseline_cpus) / config.n
    cpu_ratio = per_photo / baseline_per_photo
    bench.figures["P1-CPU"] = Figure(
        "P1-CPU",
        f"CPU of P1's runs, N={config.n}",
        f"pipeline process {per_photo * 1000:.0f} ms per photo vs baseline "
        f"{baseline_per_photo * 1000:.0f} ms = {cpu_ratio:.2f}x; Prefect server "
        f"{server_run_cpu * 1000:.1f} ms per set for the run ({server_cpu * 1000:.1f} ms "
        "with its idle services)",
        f"<= {CPU_GOAL}x baseline; server <= {SERVER_GOAL_MS} ms per set",
        "invalid"
        if broken
        else _verdict(cpu_ratio <= CPU_GOAL and server_run_cpu * 1000 <= SERVER_GOAL_MS),
        [
            "medians of P1's runs: the flow process's CPU from wait4; the server's during "
            "the run and while it finished writing afterwards, less what it spends with "
            f"no run in as long ({bench.server_idle_cpu_per_s * 1000:.0f} ms of CPU a "
            "second, measured before the runs: its periodic services)",
        ],
        runs=[*baseline_runs, *(r.run for r in folder)],
    )
    return P1Runs(figure, folder, runs["pipeline-s3"], (prefect_cpu, server_cpu), baselines)


CPU_GOAL = 1.25  # the pipeline process's CPU per photo over the baseline's (issue 13)
SERVER_GOAL_MS = 5.0  # the Prefect server's CPU per set (issue 32; 25 ms in issue 13)
TASK_RUNS_GOAL = 0.3  # task runs per photo at N=200, one template (issue 32)


def expected_task_runs(photos: int) -> int:
    """The task runs of a first run of ``photos`` photos and one template, as the engine
    chunks them today (``modelset.batch.chunk_bounds``): fetch, validate and prepare per
    chunk of photos, a submit per chunk of sets. The template catalogue is fetched by the
    CLI before the flow, so ``modelset run`` makes no ``template-catalogue`` task run (a
    deployment run makes one, cached for an hour)."""
    from modelset.batch import chunk_bounds

    return 3 * len(chunk_bounds(photos)) + len(chunk_bounds(photos))


def p1_task_runs(
    bench: Bench, folder: list[PipelineRun], created: list[int], broken: list[str]
) -> Figure:
    """P1-TASKS: the task runs P1's pipeline runs created on the server, per photo (the
    server's CPU and the flow process's task engine scale with them)."""
    n = bench.config.n
    expected = expected_task_runs(n)
    counted = [count for count in created if count >= 0]
    per_photo = _median([count / n for count in counted])
    server_ms = _median([(r.server_cpu_s + r.server_tail_cpu_s) * 1000 for r in folder])
    per_task_run = (
        f"; Prefect server {server_ms / _median([float(c) for c in counted]):.1f} ms CPU per "
        "task run (the flow run's own records included)"
        if counted and min(counted) > 0
        else ""
    )
    bench.raw["P1-TASKS"] = {"created": created, "per_photo": per_photo, "expected": expected}
    return Figure(
        "P1-TASKS",
        f"task runs per photo, N={n}, one template",
        f"{', '.join(str(c) for c in counted) or 'not counted'} task runs = "
        f"{per_photo:.2f} per photo{per_task_run}",
        f"<= {TASK_RUNS_GOAL} per photo (set at N=200; fewer per photo as N grows)",
        "invalid" if broken or not counted else _verdict(per_photo <= TASK_RUNS_GOAL),
        [
            "counted on the server (POST /api/task_runs/count) before and after each of P1's "
            "pipeline runs, once the server had finished writing",
            f"today's chunking expects {expected} = {expected / n:.2f} per photo: "
            f"{len(_chunks(n))} chunks ({', '.join(str(size) for size in _chunks(n))}) x "
            "(fetch, validate, prepare, submit); a `--pipeline-src` of another commit "
            "chunks as that commit does",
            *broken,
        ],
        runs=[r.run for r in folder],
    )


def _chunks(photos: int) -> list[int]:
    from modelset.batch import chunk_bounds

    return [end - start for start, end in chunk_bounds(photos)]


def p1_goal(n: int) -> float:
    """Issue 13: <= 1.20x at N=200, <= 1.15x at N=1000 (and above)."""
    return 1.15 if n >= 1000 else 1.20


def _run_line(label: str, result: PipelineRun) -> str:
    run = result.run
    s3 = f", S3 server CPU {result.s3_cpu_s:.1f} s" if result.on_bucket else ""
    return (
        f"{label}: {run.wall_s:.1f} s wall, {run.cpu_s:.1f} s CPU, "
        f"{run.peak_rss_mib:.0f} MiB peak, {result.images} images "
        f"{result.statuses}, Prefect server CPU {result.server_cpu_s:.1f} s "
        f"+ {result.server_tail_cpu_s:.1f} s in the {result.server_tail_s:.0f} s "
        f"after, sandbox CPU {result.sandbox_cpu_s:.1f} s{s3}, other processes "
        f"{run.other_cpu_s:.1f} s CPU, exit {run.returncode}"
    )


def _requests_line(result: PipelineRun, sets: int) -> str:
    """The S3 requests of a run, per set, by kind (from the S3 server's log)."""
    total = sum(result.requests.values())
    kinds = sorted(result.requests.items(), key=lambda item: (-item[1], item[0]))
    return (
        f"requests to S3 ({result.run.log.name}): {total}, {total / sets:.1f} per set: "
        + ", ".join(f"{kind} {count / sets:.2f}" for kind, count in kinds)
    )


def _cpu(result: PipelineRun) -> float:
    """CPU seconds the run cost this machine: the flow process, the Prefect server during
    and after it, and the S3 server (zero for a folder)."""
    return result.run.cpu_s + result.server_cpu_s + result.server_tail_cpu_s + result.s3_cpu_s


def _cpu_line(bucket: list[PipelineRun], folder: list[PipelineRun]) -> str:
    """CPU, which load moves far less than wall time: the bucket's against the folder's."""
    b = _median([_cpu(r) for r in bucket])
    f = _median([_cpu(r) for r in folder])
    flow_b = _median([r.run.cpu_s for r in bucket])
    s3 = _median([r.s3_cpu_s for r in bucket])
    return (
        f"CPU (flow process + Prefect server + S3 server; medians): bucket {b:.1f} s "
        f"(flow {flow_b:.1f} s, S3 server {s3:.1f} s) vs folder {f:.1f} s = {b / f:.2f}x"
    )


def _pipeline_raw(result: PipelineRun) -> dict[str, Any]:
    return {
        **{k: v for k, v in result.run.__dict__.items() if k != "log"},
        "log": str(result.run.log),
        "out": result.out,
        "submissions": result.submissions,
        "server_cpu_s": result.server_cpu_s,
        "server_tail_s": result.server_tail_s,
        "server_tail_cpu_s": result.server_tail_cpu_s,
        "server_peak_rss_mib": result.server_peak_rss_mib,
        "sandbox_cpu_s": result.sandbox_cpu_s,
        "s3_cpu_s": result.s3_cpu_s,
        "requests": result.requests,
        "images": result.images,
        "statuses": result.statuses,
    }


def p1_bucket(bench: Bench, p1: P1Runs) -> Figure:
    """P1-S3: the pipeline's wall time into a bucket against into a folder, same N."""
    config = bench.config
    folder_wall = _median([r.run.wall_s for r in p1.folder])
    bucket_wall = _median([r.run.wall_s for r in p1.bucket])
    ratio = bucket_wall / folder_wall
    broken = [reason for r in [*p1.folder, *p1.bucket] if (reason := invalid(r, config.n))]
    details = [
        *(_run_line(f"folder #{i + 1}", r) for i, r in enumerate(p1.folder)),
        *(_run_line(f"bucket #{i + 1}", r) for i, r in enumerate(p1.bucket)),
        *(_requests_line(r, config.n) for r in p1.bucket),
        _cpu_line(p1.bucket, p1.folder),
        "the folder runs are P1's pipeline runs; the bucket's: the same command with "
        f"--out s3://<fresh bucket>/out on moto's S3 server (127.0.0.1), behind a proxy "
        f"adding {bench.s3.latency_ms:.0f} ms to every request"
        if bench.s3
        else "",
        *broken,
    ]
    bench.raw["P1-S3"] = {
        "bucket": [_pipeline_raw(r) for r in p1.bucket],
        "folder_walls_s": [r.run.wall_s for r in p1.folder],
        "ratio": ratio,
    }
    return Figure(
        "P1-S3",
        f"throughput into a bucket, N={config.n}, concurrency {config.concurrency}",
        f"bucket {bucket_wall:.1f} s vs folder {folder_wall:.1f} s = {ratio:.2f}x",
        f"<= {BUCKET_GOAL}x folder",
        "invalid" if broken else _verdict(ratio <= BUCKET_GOAL),
        details,
        runs=[r.run for r in [*p1.folder, *p1.bucket]],
    )


# -- P1-SLOPE, P1-FIRST: the cost of one more photo, and the first submit ------------------

SLOPE_SIZES = (200, 1000)
SLOPE_GOAL = 1.25  # the pipeline's CPU per additional photo over the baseline's (issue 32;
# 1.15x in issue 21)
INTERCEPT_GOAL_S = 1.5  # its fixed CPU (Prefect's import, the flow run) over the baseline's
FIRST_SUBMIT_GOAL_S = 1.0  # the first submission after the baseline's, at every size


def p1_slope(bench: Bench, p1: P1Runs) -> tuple[Figure, Figure]:
    """P1-SLOPE and P1-FIRST from baseline and pipeline runs at N=200 and at N=1000
    (P1's runs at its own N, as many pairs as ``--repeat`` at the other; medians).

    CPU(N) = intercept + slope * N on each side, from the two sizes: the pipeline's is its
    flow process and the Prefect server (during and right after the run), the baseline's
    its process. The first submit is read off each sandbox's log of submissions."""
    pipelines: dict[int, list[PipelineRun]] = {bench.config.n: p1.folder}
    baselines: dict[int, list[BaselineRun]] = {bench.config.n: p1.baselines}
    for size in SLOPE_SIZES:
        if size in pipelines and baselines.get(size):
            continue
        photos = ensure_photos(size)
        pipelines[size], baselines[size] = [], []
        for index in range(bench.config.repeat):  # pairs, like P1's, alternating order
            pair = ["baseline", "pipeline"] if index % 2 == 0 else ["pipeline", "baseline"]
            for what in pair:
                if what == "baseline":
                    baselines[size].append(
                        bench.run_baseline(photos, f"slope-baseline-{size}-{index}")
                    )
                else:
                    run = bench.run_pipeline([str(photos)], f"slope-pipeline-{size}-{index}")
                    run.sandbox.stop()
                    pipelines[size].append(run)
    small, large = SLOPE_SIZES
    pipeline_cpu = {n: _median([r.cpu_with_server_s for r in pipelines[n]]) for n in SLOPE_SIZES}
    baseline_cpu = {n: _median([b.run.cpu_s for b in baselines[n]]) for n in SLOPE_SIZES}
    pipeline_slope = (pipeline_cpu[large] - pipeline_cpu[small]) / (large - small)
    baseline_slope = (baseline_cpu[large] - baseline_cpu[small]) / (large - small)
    ratio = pipeline_slope / baseline_slope
    intercept = (pipeline_cpu[small] - small * pipeline_slope) - (
        baseline_cpu[small] - small * baseline_slope
    )
    runs = [
        *(r.run for n in SLOPE_SIZES for r in pipelines[n]),
        *(b.run for n in SLOPE_SIZES for b in baselines[n]),
    ]
    broken = [
        reason for n in SLOPE_SIZES for r in pipelines[n] if (reason := invalid(r, n)) is not None
    ]
    details = [
        f"N={n}: pipeline {pipeline_cpu[n]:.1f} s CPU (flow process + Prefect server), "
        f"baseline {baseline_cpu[n]:.1f} s"
        for n in SLOPE_SIZES
    ]
    details.append(
        f"per additional photo: pipeline {pipeline_slope * 1000:.1f} ms, baseline "
        f"{baseline_slope * 1000:.1f} ms; fixed: pipeline "
        f"{pipeline_cpu[small] - small * pipeline_slope:.2f} s, baseline "
        f"{baseline_cpu[small] - small * baseline_slope:.2f} s"
    )
    slope = Figure(
        "P1-SLOPE",
        f"CPU per photo apart from the fixed start (N={small} and {large})",
        f"{pipeline_slope * 1000:.1f} vs {baseline_slope * 1000:.1f} ms per photo = "
        f"{ratio:.2f}x; fixed cost +{intercept:.2f} s CPU",
        f"<= {SLOPE_GOAL}x; fixed <= +{INTERCEPT_GOAL_S} s",
        "invalid" if broken else _verdict(ratio <= SLOPE_GOAL and intercept <= INTERCEPT_GOAL_S),
        [*details, *broken],
        runs=runs,
    )
    firsts: dict[int, tuple[float | None, float | None]] = {
        n: (
            _median_or_none([r.first_submit_s for r in pipelines[n]]),
            _median_or_none([b.first_submit_s for b in baselines[n]]),
        )
        for n in SLOPE_SIZES
    }
    gaps = {n: (p - b) if p is not None and b is not None else None for n, (p, b) in firsts.items()}
    shown = ", ".join(
        f"N={n}: {p:.2f} s vs {b:.2f} s (+{gaps[n]:.2f} s)"
        if p is not None and b is not None and gaps[n] is not None
        else f"N={n}: not measured"
        for n, (p, b) in firsts.items()
    )
    first = Figure(
        "P1-FIRST",
        "first submit after the process starts, pipeline vs baseline",
        shown,
        f"<= baseline + {FIRST_SUBMIT_GOAL_S} s",
        "invalid"
        if broken or any(gap is None for gap in gaps.values())
        else _verdict(all(gap is not None and gap <= FIRST_SUBMIT_GOAL_S for gap in gaps.values())),
        ["from the spawn of each process to the first submission in its sandbox's log"],
        runs=runs,
    )
    bench.raw["P1-SLOPE"] = {
        "pipeline_cpu_s": pipeline_cpu,
        "baseline_cpu_s": baseline_cpu,
        "ratio": ratio,
        "intercept_s": intercept,
        "first_submit_s": firsts,
    }
    return slope, first


def _median_or_none(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return _median(known) if known else None


def p3_small_run(bench: Bench) -> PipelineRun:
    photos = ensure_photos(bench.config.n_small)
    result = bench.run_pipeline([str(photos)], "p3-small")
    result.sandbox.stop()
    bench.raw["P3_small"] = _pipeline_raw(result)
    return result


def p3_memory(bench: Bench, small: PipelineRun, large: PipelineRun) -> Figure:
    config = bench.config
    ratio = large.run.peak_rss_mib / small.run.peak_rss_mib
    server_ratio = large.server_peak_rss_mib / max(1.0, small.server_peak_rss_mib)
    broken = [
        reason
        for reason in (invalid(small, config.n_small), invalid(large, config.n))
        if reason is not None
    ]
    return Figure(
        "P3",
        f"peak RSS, N={config.n} vs N={config.n_small}",
        f"flow process {large.run.peak_rss_mib:.0f} MiB vs {small.run.peak_rss_mib:.0f} MiB "
        f"= {ratio:.2f}x; Prefect server {large.server_peak_rss_mib:.0f} vs "
        f"{small.server_peak_rss_mib:.0f} MiB = {server_ratio:.2f}x",
        "flow process <= 1.2x",
        "invalid" if broken else _verdict(ratio <= 1.2),
        [
            "flow process: ru_maxrss from wait4; server: VmHWM, reset before each run",
            f"the N={config.n} run is P1's pipeline run",
            *broken,
        ],
        runs=[small.run, large.run],
    )


@dataclass
class Rerun:
    result: PipelineRun
    task_runs: int  # task runs it created on the Prefect server


@dataclass
class P4Runs:
    folder_first: PipelineRun
    folder: list[Rerun]
    bucket_first: PipelineRun | None = None
    bucket: list[Rerun] = field(default_factory=list)


RERUN_ORDER = ("folder", "bucket", "bucket", "folder", "folder", "bucket")


def p4_reruns(bench: Bench, folder_first: PipelineRun, bucket_first: PipelineRun | None) -> P4Runs:
    """Rerun P1's last pipeline run (same --out, same sandbox); with a bucket run too,
    three reruns of each in the order of RERUN_ORDER (a rerun changes nothing, so each
    is the same measurement again)."""
    photos = [str(ensure_photos(bench.config.n))]
    runs = P4Runs(folder_first, [], bucket_first)

    def rerun(first: PipelineRun, what: str) -> Rerun:
        before = count_task_runs(bench.server.api_url)
        again = bench.run_pipeline(photos, what, sandbox=first.sandbox, out=first.out)
        return Rerun(again, count_task_runs(bench.server.api_url) - before)

    if bucket_first is None:
        runs.folder.append(rerun(folder_first, "p4-rerun"))
        return runs
    for index, kind in enumerate(RERUN_ORDER):
        if kind == "folder":
            runs.folder.append(rerun(folder_first, f"p4-rerun-{index}"))
        else:
            runs.bucket.append(rerun(bucket_first, f"p4-rerun-s3-{index}"))
    return runs


def _rerun_line(label: str, rerun: Rerun) -> str:
    again = rerun.result
    s3 = f", S3 server CPU {again.s3_cpu_s:.1f} s" if again.on_bucket else ""
    return (
        f"{label}: {again.run.wall_s:.1f} s wall, {again.submissions} submissions, "
        f"{rerun.task_runs} task runs created, {again.run.cpu_s:.1f} s CPU, "
        f"{again.run.peak_rss_mib:.0f} MiB peak{s3}, other processes "
        f"{again.run.other_cpu_s:.1f} s CPU, statuses {again.statuses}, "
        f"exit {again.run.returncode}"
    )


def p4_rerun(bench: Bench, runs: P4Runs) -> Figure:
    first = runs.folder_first
    walls = [r.result.run.wall_s for r in runs.folder]
    wall = min(walls)  # the same work each time: load only adds to it
    submissions = sum(r.result.submissions for r in runs.folder)
    share = wall / first.run.wall_s
    bench.raw["P4"] = {
        "reruns": [{**_pipeline_raw(r.result), "task_runs": r.task_runs} for r in runs.folder],
        "share": share,
    }
    ok = submissions == 0 and share <= 0.10
    broken = [reason for r in runs.folder if (reason := invalid(r.result, bench.config.n))]
    several = f" (best of {len(walls)} reruns)" if len(walls) > 1 else ""
    return Figure(
        "P4",
        f"rerun of the same N={bench.config.n} batch",
        f"{submissions} submissions, {wall:.1f} s{several} = {share:.1%} of the "
        f"first run's {first.run.wall_s:.1f} s",
        "0 submissions, <= 10%",
        "invalid" if broken else _verdict(ok),
        [*(_rerun_line(f"rerun #{i + 1}", r) for i, r in enumerate(runs.folder)), *broken],
        runs=[first.run, *(r.result.run for r in runs.folder)],
    )


def p4_bucket(bench: Bench, runs: P4Runs) -> Figure:
    """P4-S3: the rerun's wall time into a bucket against into a folder."""
    assert runs.bucket_first is not None
    n = bench.config.n
    folder_wall = min(r.result.run.wall_s for r in runs.folder)
    bucket_wall = min(r.result.run.wall_s for r in runs.bucket)
    ratio = bucket_wall / folder_wall
    submissions = sum(r.result.submissions for r in runs.bucket)
    broken = [reason for r in [*runs.folder, *runs.bucket] if (reason := invalid(r.result, n))]
    bench.raw["P4-S3"] = {
        "bucket": [{**_pipeline_raw(r.result), "task_runs": r.task_runs} for r in runs.bucket],
        "folder_walls_s": [r.result.run.wall_s for r in runs.folder],
        "ratio": ratio,
    }
    details = [
        *(_rerun_line(f"folder rerun #{i + 1}", r) for i, r in enumerate(runs.folder)),
        *(_rerun_line(f"bucket rerun #{i + 1}", r) for i, r in enumerate(runs.bucket)),
        _requests_line(runs.bucket[0].result, n),
        _cpu_line([r.result for r in runs.bucket], [r.result for r in runs.folder]),
        f"bucket rerun = {bucket_wall / runs.bucket_first.run.wall_s:.1%} of the bucket's "
        f"first run ({runs.bucket_first.run.wall_s:.1f} s); order {', '.join(RERUN_ORDER)}; "
        "best of each (a rerun does the same work each time: load only adds)",
        *broken,
    ]
    return Figure(
        "P4-S3",
        f"rerun of the same N={n} batch, in a bucket",
        f"bucket {bucket_wall:.1f} s vs folder {folder_wall:.1f} s = {ratio:.2f}x; "
        f"{submissions} submissions",
        f"<= {BUCKET_RERUN_GOAL}x folder, 0 submissions",
        "invalid" if broken else _verdict(ratio <= BUCKET_RERUN_GOAL and submissions == 0),
        details,
        runs=[r.result.run for r in [*runs.folder, *runs.bucket]],
    )


FIRST_RUN_REQUESTS_GOAL = 16.0  # per set: 4 images and 4 thumbnails are half of it
RERUN_REQUESTS_GOAL = 1.5  # per set, when nothing is left to do


def s3_requests(bench: Bench, first: list[PipelineRun], reruns: list[Rerun]) -> Figure:
    """S3-REQ: requests to the bucket per set, a first run and a rerun with nothing to do,
    counted from the S3 server's log (each a request that costs money and latency)."""
    n = bench.config.n
    first_per_set = _median([sum(r.requests.values()) / n for r in first])
    rerun_per_set = _median([sum(r.result.requests.values()) / n for r in reruns])
    return Figure(
        "S3-REQ",
        f"bucket requests per set, N={n}",
        f"first run {first_per_set:.1f}, rerun {rerun_per_set:.2f}",
        f"first run <= {FIRST_RUN_REQUESTS_GOAL:.0f}, rerun <= {RERUN_REQUESTS_GOAL}",
        _verdict(first_per_set <= FIRST_RUN_REQUESTS_GOAL and rerun_per_set <= RERUN_REQUESTS_GOAL),
        [
            *(_requests_line(r, n) for r in first),
            *(_requests_line(r.result, n) for r in reruns[:1]),
        ],
        runs=[r.run for r in first] + [r.result.run for r in reruns],
    )


def last_flow_run(api_url: str) -> str:
    """The latest flow run's name, state and message (why a failed run failed)."""
    try:
        with httpx.Client(trust_env=False, timeout=30) as client:
            answer = client.post(
                f"{api_url}/flow_runs/filter", json={"sort": "START_TIME_DESC", "limit": 1}
            )
            answer.raise_for_status()
            runs = answer.json()
    except (httpx.HTTPError, ValueError):
        return ""
    if not runs:
        return ""
    state = runs[0].get("state") or {}
    message = (state.get("message") or "").strip()
    return f"{runs[0].get('name')} {state.get('type')}: {message[:400]}"


def count_task_runs(api_url: str) -> int:
    try:
        with httpx.Client(trust_env=False, timeout=30) as client:
            answer = client.post(f"{api_url}/task_runs/count", json={})
            answer.raise_for_status()
            return int(answer.json())
    except (httpx.HTTPError, ValueError):
        return -1


# -- P5: fixed cost --------------------------------------------------------------------------


async def _one_round_trip(sandbox: Sandbox, photo: Path, out: Path) -> float:
    """Seconds the sandbox alone makes one photo take: catalogue, submit, polls, downloads."""
    from modelset.hidream import HiDreamClient
    from modelset.images import prepare_image
    from modelset.stages import download_image
    from modelset.storage import FolderStore

    upload = prepare_image(photo, out / "upload.jpg")
    store = FolderStore(out)
    async with (
        HiDreamClient(sandbox.token, base_url=sandbox.base_url) as client,
        httpx.AsyncClient(timeout=60) as http,
    ):
        started = time.perf_counter()
        await client.list_templates()
        receipt = await client.submit_variation(upload.path, OTHER_TEMPLATE)
        result = await client.wait_for_result(receipt.task_id)
        for index, url in enumerate(result.image_urls, start=1):
            await download_image(http, url, store, f"{index}.jpg")
        return time.perf_counter() - started


P5_GOAL_S = 1.5  # issue 21: what an upload event's one-photo run costs over the upstream


def p5_fixed_cost(bench: Bench) -> Figure:
    config = bench.config
    photos = photo_paths(ensure_photos(config.n))
    sandbox = bench.sandbox("p5")
    try:
        scratch = Path(tempfile.mkdtemp(dir=bench.work))
        references = [
            asyncio.run(_one_round_trip(sandbox, photos[-1 - i], scratch))
            for i in range(config.p5_repeat)
        ]
        reference = min(references)
        server_runs = [
            bench.run_pipeline([str(photos[i])], f"p5-server-{i}", sandbox=sandbox)
            for i in range(config.p5_repeat)
        ]
        ephemeral = bench.run_pipeline(
            [str(photos[config.p5_repeat])], "p5-ephemeral", sandbox=sandbox, ephemeral=True
        )
    finally:
        sandbox.stop()
    walls = [r.run.wall_s for r in server_runs]
    broken = [reason for r in [*server_runs, ephemeral] if (reason := invalid(r, 1)) is not None]
    fixed = _median(walls) - reference
    ephemeral_fixed = ephemeral.run.wall_s - reference
    env = clean_environment()
    env.update(pipeline_path(config))
    imports = time_import("modelset.flows.generate", env, bench.work) if not config.quick else None
    details = [
        f"sandbox-bound time of one photo (catalogue + submit + polls + 4 downloads, "
        f"in-process, same client): {reference:.2f} s (latency 200 ms, generation 2 s)",
        "fresh `modelset run` against the server: "
        + ", ".join(f"{w:.2f} s" for w in walls)
        + f" (median {_median(walls):.2f} s), exit "
        + ",".join(str(r.run.returncode) for r in server_runs),
        f"ephemeral: {ephemeral.run.wall_s:.2f} s wall, exit {ephemeral.run.returncode}, "
        f"PREFECT_HOME migrated beforehand (as make setup does)",
    ]
    details.extend(broken)
    if imports is not None:
        details.append(f"`import modelset.flows.generate` in a fresh interpreter: {imports:.2f} s")
    bench.raw["P5"] = {
        "reference_s": references,
        "server_walls_s": walls,
        "ephemeral_wall_s": ephemeral.run.wall_s,
        "import_s": imports,
        "server_runs": [_pipeline_raw(r) for r in server_runs],
        "ephemeral": _pipeline_raw(ephemeral),
    }
    return Figure(
        "P5",
        "fixed cost of one photo in a fresh process",
        f"{fixed:.2f} s on a running server (ephemeral mode {ephemeral_fixed:.2f} s, reported)",
        f"<= {P5_GOAL_S} s",
        "invalid" if broken else _verdict(fixed <= P5_GOAL_S),
        details,
        runs=[r.run for r in server_runs],
    )


# -- P6 ----------------------------------------------------------------------------------

P6_PHOTOS = 128
P6_CONCURRENCY = 32
P6_GENERATION_S = 20.0
P6_LATENCY_MS = 100


def p6_slot_use(bench: Bench) -> Figure:
    """How much of the paid concurrency holds a set that is generating or downloading.

    128 photos, concurrency 32, 100 ms per API call, 20 s of generation, one image per
    set, polling only. Slot use = the sum over sets of (generation time as the sandbox
    sets it + download time) over 32 x (first submit to last download). The download of
    a one-image set is taken as one API call's latency (the sandbox adds it to every
    request); a set that is ready but not yet noticed counts as idle.
    """
    photos = ensure_photos(P6_PHOTOS)
    sandbox = Sandbox(
        bench.logs,
        latency_ms=P6_LATENCY_MS,
        generation_s=P6_GENERATION_S,
        images_per_set=1,
        name=bench._name("sandbox-p6"),
    ).start()
    bench.started.append(sandbox)
    result = bench.run_pipeline([str(photos)], "p6", sandbox=sandbox, concurrency=P6_CONCURRENCY)
    submitted = [datetime.fromisoformat(s["time"]).timestamp() for s in sandbox.submissions()]
    folder = Path(result.out)
    finished = [path.stat().st_mtime for path in folder.glob("*/20/1.jpg")]
    details = [_run_line("pipeline", result)]
    if not submitted or len(finished) != P6_PHOTOS:
        details.append(f"INVALID: {len(submitted)} submits, {len(finished)} sets downloaded")
        return Figure("P6", "slot use", "invalid", "polling >= 0.90", "invalid", details)
    span = max(finished) - min(submitted)
    useful = len(finished) * (P6_GENERATION_S + P6_LATENCY_MS / 1000)
    use = useful / (P6_CONCURRENCY * span)
    details.append(
        f"{len(finished)} sets, first submit to last download {span:.1f} s; ideal "
        f"{useful / P6_CONCURRENCY:.1f} s (4 waves of 32 x 20.1 s); callbacks not measured "
        "(goal >= 0.97)"
    )
    bench.raw["P6"] = {"span_s": span, "useful_s": useful, "slot_use": use}
    return Figure(
        "P6",
        f"slot use, {P6_PHOTOS} photos, concurrency {P6_CONCURRENCY}, 20 s generation",
        f"{use:.2f} of the paid slots busy (polling)",
        "polling >= 0.90, callbacks >= 0.97",
        _verdict(use >= 0.90),
        details,
        runs=[result.run],
    )


# -- P7: scale ---------------------------------------------------------------------------

P7_PHOTOS = 5000
P7_CONCURRENCY = 64
P7_GENERATION_S = 1.0
P7_RERUN_SETTLE_S = 600.0  # the server may still be writing the first run's records


def p7_scale(bench: Bench, n1000_rss_mib: float | None) -> Figure:
    """5,000 small photos (600x800), one image per set, 1 s generation, concurrency 64, on
    the running server; then its rerun, once the server has finished writing."""
    photos = ensure_small_photos(P7_PHOTOS)
    sandbox = Sandbox(
        bench.logs,
        generation_s=P7_GENERATION_S,
        images_per_set=1,
        name=bench._name("sandbox-p7"),
    ).start()
    bench.started.append(sandbox)
    first = bench.run_pipeline(
        [str(photos)], "p7-first", sandbox=sandbox, concurrency=P7_CONCURRENCY
    )
    # The rerun is measured once the server is idle again (it writes task runs after a
    # flow returns), so it times the rerun and not the first run's tail.
    waited, tail_cpu = wait_until_idle(bench.server.pid, max_s=P7_RERUN_SETTLE_S)
    before = count_task_runs(bench.server.api_url)
    again = bench.run_pipeline(
        [str(photos)], "p7-rerun", sandbox=sandbox, out=first.out, concurrency=P7_CONCURRENCY
    )
    task_runs = count_task_runs(bench.server.api_url) - before
    sandbox.stop()
    server_per_set = (first.server_cpu_s + first.server_tail_cpu_s + tail_cpu) / P7_PHOTOS
    share = again.run.wall_s / first.run.wall_s
    rss = first.run.peak_rss_mib
    rss_ok = n1000_rss_mib is None or rss <= 1.2 * n1000_rss_mib
    broken = [
        reason
        for reason in (invalid(first, P7_PHOTOS, 1), invalid(again, P7_PHOTOS, 1))
        if reason is not None
    ]
    versus = (
        f" vs N=1000's {n1000_rss_mib:.0f} MiB = {rss / n1000_rss_mib:.2f}x"
        if n1000_rss_mib
        else " (N=1000 not run: no comparison)"
    )
    bench.raw["P7"] = {
        "first": _pipeline_raw(first),
        "rerun": {**_pipeline_raw(again), "task_runs": task_runs},
        "settled_s": waited,
        "settle_cpu_s": tail_cpu,
    }
    ok = rss_ok and again.submissions == 0 and share <= 0.10
    return Figure(
        "P7",
        f"scale: {P7_PHOTOS} photos of 600x800, 1 image per set, concurrency {P7_CONCURRENCY}",
        f"{first.run.wall_s:.0f} s; flow peak RSS {rss:.0f} MiB{versus}; server "
        f"{server_per_set * 1000:.0f} ms CPU per set; rerun {again.run.wall_s:.1f} s = "
        f"{share:.1%}, {again.submissions} submissions",
        "RSS <= 1.2x N=1000; rerun 0 submissions, <= 10%",
        "invalid" if broken else _verdict(ok),
        [
            _run_line("first run", first),
            f"the server finished writing the first run's records {waited:.0f} s after it "
            f"returned ({tail_cpu:.1f} s CPU more; counted in the CPU per set)",
            _rerun_line("rerun", Rerun(again, task_runs)),
            f"flow process CPU {first.run.cpu_s / P7_PHOTOS * 1000:.0f} ms per photo",
            *broken,
        ],
        runs=[first.run, again.run],
    )


# -- LOOKS: near-duplicate planning at catalogue scale -----------------------------------

LOOKS_RECORDED = 100_000
LOOKS_NEW = 10_000
LOOKS_REPEATS = 200  # new photos that are copies of recorded ones (a few bits changed)
LOOKS_GOAL_S = 2.0


def looks_planning(bench: Bench) -> Figure:
    """CPU to plan 10,000 new photos against 100,000 recorded looks (in process): the
    index built from a listing, then each new photo checked against it and against the
    run's earlier photos. Random looks are the index's worst case: no clusters to skip."""
    import random

    from modelset.images.likeness import LookIndex, NearDuplicates
    from modelset.images.looks import Look

    rng = random.Random(22)
    recorded = [Look(rng.getrandbits(64), rng.randbytes(36)) for _ in range(LOOKS_RECORDED)]
    new = [Look(rng.getrandbits(64), rng.randbytes(36)) for _ in range(LOOKS_NEW)]
    for position in range(LOOKS_REPEATS):
        original = recorded[position * 97]
        flips = sum(1 << bit for bit in rng.sample(range(64), rng.randint(0, 12)))
        new[position * 41] = Look(original.shape ^ flips, original.colours)
    times, found = [], 0
    for _ in range(3):
        started = time.process_time()
        index = LookIndex((look, position) for position, look in enumerate(recorded))
        matches = NearDuplicates(index).check([(look, -1) for look in new])
        times.append(time.process_time() - started)
        found = sum(1 for match in matches if match is not None)
    cpu = statistics.median(times)
    bench.raw["LOOKS"] = {"cpu_s": times, "found": found}
    details = [
        f"CPU per repeat: {', '.join(f'{t:.2f} s' for t in times)} (median of 3)",
        f"near-duplicates found: {found} of the {LOOKS_REPEATS} copies planted",
    ]
    return Figure(
        "LOOKS",
        f"near-duplicate planning, {LOOKS_NEW:,} new against {LOOKS_RECORDED:,} recorded",
        f"{cpu:.2f} s CPU",
        f"< {LOOKS_GOAL_S:.0f} s CPU, every copy found",
        _verdict(cpu < LOOKS_GOAL_S and found >= LOOKS_REPEATS),
        details,
    )
