"""Measuring processes from the outside: wall time, CPU, peak RSS, and the machine.

No psutil: everything comes from ``/proc`` and ``os.wait4``.

- A measured command runs as a child; ``os.wait4`` returns its own CPU time and peak RSS
  (``ru_maxrss``, which also covers any children it reaped).
- Long-lived processes (the Prefect server, the sandbox) are read from
  ``/proc/<pid>/stat`` (CPU, summed over the live process tree) and
  ``/proc/<pid>/status`` (``VmHWM``, the peak RSS, reset by writing 5 to ``clear_refs``).
- ``/proc/stat`` gives the whole machine's busy time, so what *other* processes used during a
  measurement can be shown as noise.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
NOISY_SHARE = 0.10
"""A run during which other processes used more than this share of the machine's CPU is
noisy: its figure is marked so and never counted as a pass (issue 13)."""


@dataclass
class Machine:
    cpu: str
    cores: int
    ram_gib: float
    python: str
    prefect: str
    kernel: str
    load: str

    def describe(self) -> str:
        return (
            f"{self.cpu}, {self.cores} cores, {self.ram_gib:.1f} GiB RAM; "
            f"Linux {self.kernel}; Python {self.python}; Prefect {self.prefect}; "
            f"load average at start {self.load}"
        )


def machine() -> Machine:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_kib = int(line.split()[1])
    try:
        prefect = metadata.version("prefect")
    except metadata.PackageNotFoundError:
        prefect = "not installed"
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return Machine(
        cpu=cpu,
        cores=os.cpu_count() or 1,
        ram_gib=ram_kib / 1024 / 1024,
        python=platform.python_version(),
        prefect=prefect,
        kernel=platform.release(),
        load=load,
    )


# -- /proc ---------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; everything after its ')' splits cleanly.
    return raw[raw.rindex(")") + 2 :].split()


def children_of(pid: int) -> list[int]:
    """Live descendants of ``pid`` (any depth)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                parents[int(entry.name)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, ppid in parents.items() if ppid == parent]
        found.extend(kids)
        frontier.extend(kids)
    return found


def tree(pid: int) -> list[int]:
    return [pid, *children_of(pid)]


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU of these processes, including children they have reaped."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
            total += sum(int(value) for value in fields[11:15])
    return total / TICKS


def peak_rss_mib(pids: Iterable[int]) -> float:
    """Sum of ``VmHWM`` (peak resident set) of these processes, in MiB."""
    total_kib = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kib += int(line.split()[1])
    return total_kib / 1024


def rss_mib(pids: Iterable[int]) -> float:
    total_kib = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
    return total_kib / 1024


def reset_peak_rss(pids: Iterable[int]) -> bool:
    """Restart ``VmHWM`` from the current RSS (Linux ``clear_refs`` 5); False if refused."""
    done = True
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            done = False
    return done


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent not idle since boot (all cores)."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    values = [int(v) for v in first[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    steal_guest = sum(values[7:]) if len(values) > 7 else 0  # steal, guest (counted in user)
    return (sum(values) - idle - steal_guest) / TICKS


# -- running a measured command ------------------------------------------------------------


@dataclass
class Run:
    """A finished child process, measured."""

    command: list[str]
    wall_s: float
    cpu_s: float  # user + system of the child (and whatever it reaped)
    peak_rss_mib: float
    returncode: int
    log: Path
    watched_cpu_s: dict[str, float] = field(default_factory=dict)
    other_cpu_s: float = 0.0  # CPU used during the run by processes not measured here
    busy_cpu_s: float = 0.0  # the whole machine's busy CPU during the run
    started_at: float = 0.0  # wall-clock time (time.time()) of the spawn

    @property
    def noise_share(self) -> float:
        """The share of the machine's CPU during the run that other processes used."""
        return self.other_cpu_s / self.busy_cpu_s if self.busy_cpu_s > 0 else 0.0

    @property
    def noisy(self) -> bool:
        return self.noise_share > NOISY_SHARE

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def run_measured(
    command: list[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log: Path,
    watch: Mapping[str, int] | None = None,
    timeout_s: float = 3600.0,
) -> Run:
    """Run ``command`` to its end; wall, CPU and peak RSS from ``wait4``.

    ``watch`` names long-lived processes (the Prefect server, the sandbox) whose CPU during
    the run is reported beside it; CPU that neither they nor the child used is ``other_cpu_s``.
    """
    watch = dict(watch or {})
    before = {name: cpu_seconds(tree(pid)) for name, pid in watch.items()}
    busy_before = machine_busy_seconds()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        started, started_at = time.perf_counter(), time.time()
        process = subprocess.Popen(
            command, env=dict(env), cwd=cwd, stdout=out, stderr=subprocess.STDOUT
        )
        deadline = started + timeout_s
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.01)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    watched = {name: cpu_seconds(tree(pid)) - before[name] for name, pid in watch.items()}
    cpu = usage.ru_utime + usage.ru_stime
    busy = machine_busy_seconds() - busy_before
    other = busy - cpu - sum(watched.values())
    return Run(
        command=list(command),
        wall_s=wall,
        cpu_s=cpu,
        peak_rss_mib=usage.ru_maxrss / 1024,
        returncode=process.returncode,
        log=log,
        watched_cpu_s=watched,
        other_cpu_s=max(0.0, other),
        busy_cpu_s=busy,
        started_at=started_at,
    )


def wait_until_idle(
    pid: int, *, max_s: float, quiet_fraction: float = 0.05, window_s: float = 0.5
) -> tuple[float, float]:
    """Wait until a process tree uses under ``quiet_fraction`` of a core for two windows.

    Returns (seconds waited, CPU it used meanwhile). The Prefect server keeps writing
    task-run records for a while after a flow returns (``docs/prefect-notes``).
    """
    started = time.perf_counter()
    first = last = cpu_seconds(tree(pid))
    quiet = 0
    while time.perf_counter() - started < max_s:
        time.sleep(window_s)
        now = cpu_seconds(tree(pid))
        quiet = quiet + 1 if now - last < quiet_fraction * window_s else 0
        last = now
        if quiet >= 2:
            break
    return time.perf_counter() - started, last - first


def time_import(module: str, env: Mapping[str, str], cwd: Path) -> float:
    """Seconds for a fresh interpreter to import ``module`` (median of three)."""
    samples = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", f"import {module}"],
            env=dict(env),
            cwd=cwd,
            check=True,
            capture_output=True,
        )
        samples.append(time.perf_counter() - started)
    return sorted(samples)[1]
