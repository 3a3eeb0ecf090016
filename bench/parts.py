"""What the pipeline adds to the hand-written script, each part measured by itself.

```sh
.venv/bin/python -m bench.parts            # on a quiet machine; about a minute
.venv/bin/python -m bench.parts --task-runs 400 --repeat 5
```

Whole-run CPU cannot resolve a few milliseconds per photo here: two runs of the same
commit at N=200 differed by 10 ms of CPU per photo (docs/performance.md). So each part
``modelset run`` adds over ``bench.baseline`` is measured alone, in a fresh process (the
median of ``--repeat``), against a Prefect server of its own:

- **imports**: what ``modelset run`` imports (the CLI, the flows, Prefect) against what the
  baseline imports;
- **a task run**: ``--task-runs`` async task runs shaped like ``submit`` (its name template,
  retries, NO_CACHE, a PreparedPhoto argument, a 10 ms await), 32 at a time in one flow
  run, inside a batch's ``recording_final_states``: the flow run's own CPU, and the CPU per
  task run as shipped (final state only, no routine completion line) and with
  ``HIDREAM_TASK_RUN_EVENTS=all``;
- **the summary's thumbnails**: ``picture_cells`` for 200 rows of four 768x1024 outputs
  drawn by the sandbox's renderer (what the markdown artifact shows of any run of 200 or
  more sets).

Prints one line per part, in ms, and the sum per photo at N=200 and N=1000 (1.2 and 1.19
task runs per photo: a submit per set, three stage task runs per 16 photos).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench.measure import machine
from bench.photos import ensure_photos
from bench.servers import BIN, PrefectServer, clean_environment

if TYPE_CHECKING:
    from modelset.report import ManifestRow

SUMMARY_ROWS = 200
IMAGES_PER_SET = 4
PIPELINE_IMPORTS = "import modelset.cli, modelset.flows.generate, modelset.flows.inbox"
BASELINE_IMPORTS = "import bench.baseline"


def _child(code: str, env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object last."""
    answer = subprocess.run(
        [str(BIN / "python"), "-c", code],
        env=env or clean_environment(),
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    found: dict[str, float] = json.loads(answer.stdout.strip().splitlines()[-1])
    return found


def import_cpu_s(statement: str) -> float:
    code = (
        "import time, json\nstarted = time.process_time()\n"
        f"{statement}\nprint(json.dumps({{'cpu_s': time.process_time() - started}}))"
    )
    return _child(code)["cpu_s"]


TASK_RUNS = """
import asyncio, json, sys, time
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote
from modelset.stages import PreparedPhoto
from modelset.tasks.events import final_state_only, recording_final_states

N, FINAL = int(sys.argv[1]), sys.argv[2] == "final"

@task(name="submit", task_run_name="submit {item}/{template_id}", cache_policy=NO_CACHE,
      retries=2, retry_delay_seconds=[1, 5])
async def submit(key: str, prepared: PreparedPhoto, item: str, template_id: int,
                 runtime: object) -> dict[str, str]:
    await asyncio.sleep(0.01)
    return {"item": item, "task_id": "t" * 32}

final_state_only(submit)
PHOTO = PreparedPhoto(source="/in/look.jpg", source_sha256="a" * 64, upload_sha256="b" * 64,
                      validated=True, upload_key=".modelset/uploads/b.jpg", thumbnail="t.jpg")

@flow(name="bench-task-runs", persist_result=False)
async def batch(n: int) -> float:
    with recording_final_states(FINAL):
        started = time.process_time()
        slots = asyncio.Semaphore(32)
        async def one(i: int) -> object:
            async with slots:
                photo = PHOTO.model_copy(update={"source": f"/in/look-{i}.jpg"})
                return await submit("k" * 64, photo, f"look-{i}", 20, quote(object()))
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.process_time() - started

started = time.process_time()
tasks_s = asyncio.run(batch(N))
print(json.dumps({"flow_s": time.process_time() - started - tasks_s, "tasks_s": tasks_s}))
"""


def task_run_cpu(api_url: str, n: int, events: str) -> dict[str, float]:
    env = clean_environment()
    env.update({"PREFECT_API_URL": api_url, "PREFECT_HOME": tempfile.mkdtemp(prefix="parts-")})
    code = f"import sys\nsys.argv = ['parts', '{n}', '{events}']\n" + TASK_RUNS
    return _child(code, env)


def summary_rows(folder: Path) -> list[ManifestRow]:
    """200 rows of four outputs each, as a finished run leaves them in a folder."""
    from modelset.images import THUMBNAIL_SIZE
    from modelset.report import ManifestRow, Status, input_thumbnail_key
    from modelset.sandbox.imagery import render_pose
    from modelset.stages import thumbnail_jpeg
    from modelset.storage import open_store

    store = open_store(folder)
    photos = sorted(ensure_photos(SUMMARY_ROWS).glob("*.jpg"))[:SUMMARY_ROWS]
    rows = []
    for index, photo in enumerate(photos):
        data = photo.read_bytes()
        digest = f"{index:064x}"
        store.write(input_thumbnail_key(digest), thumbnail_jpeg(photo, THUMBNAIL_SIZE))
        outputs = []
        for pose in range(1, IMAGES_PER_SET + 1):
            outputs.append(f"{photo.stem}/20/{pose}.jpg")
            store.write(outputs[-1], render_pose(data, 20, pose))
        rows.append(
            ManifestRow(
                source=str(photo),
                item=photo.stem,
                source_sha256=digest,
                template_id=20,
                status=Status.SUCCEEDED,
                outputs=outputs,
            )
        )
    return rows


def thumbnails_cpu_s(folder: Path, repeat: int) -> float:
    from modelset.storage import open_store
    from modelset.tasks.artifacts import MARKDOWN_THUMBNAIL, picture_cells

    rows = summary_rows(folder)
    store = open_store(folder)
    timings = []
    for _ in range(repeat):
        started = time.process_time()
        picture_cells(store, rows, MARKDOWN_THUMBNAIL)
        timings.append(time.process_time() - started)
    return statistics.median(timings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.parts", description=__doc__)
    parser.add_argument("--task-runs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"machine: {machine().describe()}", flush=True)
    median = statistics.median
    imports = median(import_cpu_s(PIPELINE_IMPORTS) for _ in range(args.repeat))
    baseline_imports = median(import_cpu_s(BASELINE_IMPORTS) for _ in range(args.repeat))
    print(
        f"imports: modelset run {imports * 1000:.0f} ms, baseline {baseline_imports * 1000:.0f} ms"
    )
    with tempfile.TemporaryDirectory(prefix="parts-") as work:
        server = PrefectServer(Path(work) / "logs").start()
        try:
            measured: dict[str, list[dict[str, float]]] = {"final": [], "all": []}
            for _ in range(args.repeat):
                for events in measured:
                    measured[events].append(task_run_cpu(server.api_url, args.task_runs, events))
        finally:
            server.stop()
        per_run = {
            events: median(m["tasks_s"] for m in runs) / args.task_runs
            for events, runs in measured.items()
        }
        flow_s = median(m["flow_s"] for m in measured["final"])
        print(
            f"a task run: {per_run['final'] * 1000:.2f} ms as shipped, "
            f"{per_run['all'] * 1000:.2f} ms with every state and line; "
            f"the flow run itself {flow_s * 1000:.0f} ms"
        )
        thumbs = thumbnails_cpu_s(Path(work) / "out", args.repeat)
    print(f"summary thumbnails ({SUMMARY_ROWS} rows x {IMAGES_PER_SET}): {thumbs * 1000:.0f} ms")
    fixed = imports - baseline_imports + flow_s + thumbs
    for n, runs_per_photo in ((200, 1.2), (1000, 1.19)):
        task_runs = runs_per_photo * per_run["final"]
        print(
            f"N={n}: these parts alone {(fixed / n + task_runs) * 1000:.1f} ms per photo "
            f"(fixed {fixed / n * 1000:.1f}, task runs {task_runs * 1000:.1f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
