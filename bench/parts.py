"""What the pipeline adds to the hand-written script, each part measured by itself.

```sh
.venv/bin/python -m bench.parts                              # on a quiet machine; a few minutes
.venv/bin/python -m bench.parts --task-runs 50 --photos 20 --repeat 1   # a smoke run
```

Whole-run CPU cannot resolve a few milliseconds per photo here: two runs of the same
commit at N=200 differed by 10 ms of CPU per photo (docs/performance.md). So each part
``modelset run`` adds over ``bench.baseline`` is measured alone (the median of
``--repeat``) and priced per photo at N=200 and N=1000. What both do is no part: the
preparation (``prepare_photo``: hash, decode, upload, input thumbnail, look), the HTTP
calls, the downloads.

- **imports**: what ``modelset run`` imports (the CLI, the flows, Prefect) against what the
  baseline imports, each in a fresh interpreter (fixed: a run pays it once);
- **ledger**: a first run's ledger work over ``--photos`` sets in a folder: the batch's
  records read at planning, and per set its upload's owner (looked up once its photo is
  prepared), the claim, the intent, the upload's claim and the submitted record
  (``submit_once`` against a client that answers at once) and the finished record; the
  ledger's digest at the end;
- **thumbnails and report**: what a run's summary and report cost beyond storing the
  images: the pictures made as images arrive (four a set, for the first 200 sets), the
  summary's cells from them (``picture_cells``), the summary's markdown and the results
  table, and ``update_report`` (manifest, CSV, contact sheet), over ``--photos`` rows of
  four 768x1024 images drawn by the sandbox's renderer;
- **looks (near-duplicate planning)**: each photo checked as it is prepared
  (``LookChecks.repeats``, one at a time, as ``when_prepared`` does) against an empty
  ledger and the run's earlier photos, random looks;
- **task engine**: task runs as a run makes them, against a Prefect server of their own,
  every state event sent as Prefect ships: per chunk ``PrefectOrchestration.stage`` for
  fetch, validate and prepare (the real tasks, their cache keys and result storage in
  the output location; 32 photos each) and ``.submit`` of a chunk of sets (the real
  ``submit`` task, retries and all), each task's own work a 10 ms await. ``--task-runs``
  of them in one flow run, and then 4 in another: the flow process's CPU per task run,
  the flow run's own CPU, and the server's CPU per task run and per flow run (from the
  difference between the two). Task runs per photo: four per chunk
  (``modelset.batch.chunk_bounds``), one template; ``modelset run`` fetches the template
  catalogue before its flow run, so it makes no ``template-catalogue`` task run (a
  deployment run makes one, cached for an hour).

Prints one line per part, then the table: what each part costs per photo at N=200 and
N=1000, their sum in the flow process, and the Prefect server's CPU per set beside its
goal (P1-CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.measure import cpu_seconds, machine, tree, wait_until_idle
from bench.photos import ensure_photos
from bench.servers import BIN, PrefectServer, clean_environment

if TYPE_CHECKING:
    from modelset.batch import BatchRuntime
    from modelset.report import ManifestRow

SIZES = (200, 1000)  # the batch sizes the table prices each part at
SUMMARY_ROWS = 200  # the sets a summary pictures (modelset.batch.summary.THUMBNAIL_ROWS)
IMAGES_PER_SET = 4
CHUNK = 32  # photos (or sets) per chunk in the task-run measurement: most chunks of a run
TEMPLATE = 20
BASE_URL = "http://127.0.0.1:9/api"  # in keys only: nothing is sent
PIPELINE_IMPORTS = "import modelset.cli, modelset.flows.generate, modelset.flows.inbox"
BASELINE_IMPORTS = "import bench.baseline"


def _child(code: str, env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object last."""
    answer = subprocess.run(
        [str(BIN / "python"), "-c", code],
        env=env or clean_environment(),
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    if answer.returncode != 0:
        raise RuntimeError(f"the measurement failed:\n{answer.stderr[-3000:]}")
    found: dict[str, float] = json.loads(answer.stdout.strip().splitlines()[-1])
    return found


def import_cpu_s(statement: str) -> float:
    code = (
        "import time, json\nstarted = time.process_time()\n"
        f"{statement}\nprint(json.dumps({{'cpu_s': time.process_time() - started}}))"
    )
    return _child(code)["cpu_s"]


# -- the task engine -----------------------------------------------------------------------

TASK_RUNS = """
import asyncio, json, sys, time, uuid

import httpx
from prefect import flow

import modelset.tasks.photos as stage_tasks
from modelset import layout
from modelset.batch import BatchRuntime
from modelset.batch.preparing import PREPARING_CHUNKS
from modelset.batch.chunks import FetchItem
from modelset.labels import Labelling
from modelset.ledger import open_ledger
from modelset.stages import PreparedPhoto, PrepareOptions, SubmitPolicy, open_workspace
from modelset.tasks.orchestration import PrefectOrchestration

CHUNKS, SIZE, OUT = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
SALT = uuid.uuid4().hex[:8]  # no chunk is in the cache: a first run's task runs
LOOK = "0123456789abcdef" + "7f" * 36


# Each stage's work is a 10 ms await; what it returns is what the stage returns.
async def fetched(items, runtime):
    await asyncio.sleep(0.01)
    return [PreparedPhoto(source="", source_sha256=item.sha256) for item in items]


async def validated(photos, runtime):
    await asyncio.sleep(0.01)
    return [photo.model_copy(update={"validated": True}) for photo in photos]


async def prepared(photos, runtime):
    await asyncio.sleep(0.01)
    return [
        photo.model_copy(
            update={
                "upload_key": f"{layout.UPLOADS}/{photo.source_sha256}-fix-crop-v3.jpg",
                "upload_sha256": photo.source_sha256[::-1],
                "thumbnail": f"{layout.THUMBS}/{photo.source_sha256}.jpg",
                "look": LOOK,
                "upload_pixels": 1536 * 2048,
                "source_bytes_per_pixel": 0.31,
            }
        )
        for photo in photos
    ]


stage_tasks.fetch_chunk = fetched
stage_tasks.validate_chunk = validated
stage_tasks.prepare_chunk = prepared


class Sets:
    # A chunk of sets as the engine hands it over (SetChunk): sending them is not Prefect's.
    async def run(self):
        await asyncio.sleep(0.01)


@flow(name="bench-task-runs", persist_result=False)
async def batch() -> float:
    orchestration = PrefectOrchestration()
    await orchestration.open(OUT)
    with open_workspace(OUT) as workspace:
        async with httpx.AsyncClient() as downloads:
            runtime = BatchRuntime(
                client=None,
                downloads=downloads,
                ledger=open_ledger(workspace.store),
                workspace=workspace,
                prepare=PrepareOptions(),
                rules=SubmitPolicy(run_id=orchestration.run_id()),
                orchestrator=orchestration,
                labelling=Labelling("bench"),
            )
            total = CHUNKS * SIZE
            in_order = asyncio.Semaphore(PREPARING_CHUNKS)

            async def chunk(index):
                start, end = index * SIZE, (index + 1) * SIZE
                label = f"{start + 1}-{end} of {total}"
                items = [
                    FetchItem(source=f"/in/look-{i}.jpg", sha256=f"{SALT}{i:056x}")
                    for i in range(start, end)
                ]
                async with in_order:
                    photos = await orchestration.stage("fetch", items, runtime, label)
                    photos = await orchestration.stage("validate", photos, runtime, label)
                    await orchestration.stage("prepare", photos, runtime, label)
                await orchestration.submit(Sets(), label)

            started = time.process_time()
            await asyncio.gather(*(chunk(index) for index in range(CHUNKS)))
            return time.process_time() - started


started = time.process_time()
tasks_s = asyncio.run(batch())
print(json.dumps({"flow_s": time.process_time() - started - tasks_s, "tasks_s": tasks_s}))
"""


@dataclass
class TaskEngine:
    """What a task run costs, and a flow run besides, in the flow process and the server."""

    per_task_run_s: float  # the flow process's CPU per task run
    flow_run_s: float  # the flow process's CPU for the flow run itself
    server_per_task_run_s: float
    server_per_flow_run_s: float  # the server's CPU for a flow run with no task run


def task_runs_once(
    server: PrefectServer, chunks: int, work: Path
) -> tuple[dict[str, float], float]:
    """One flow run of ``chunks`` chunks (four task runs each) in a fresh process: its CPU,
    and the server's, counted until the server has finished writing."""
    env = clean_environment()
    home = tempfile.mkdtemp(prefix="parts-home-", dir=work)
    env.update({"PREFECT_API_URL": server.api_url, "PREFECT_HOME": home})
    out = tempfile.mkdtemp(prefix="parts-out-", dir=work)
    code = f"import sys\nsys.argv = ['parts', '{chunks}', '{CHUNK}', {out!r}]\n" + TASK_RUNS
    wait_until_idle(server.pid, max_s=60)
    before = cpu_seconds(tree(server.pid))
    measured = _child(code, env)
    wait_until_idle(server.pid, max_s=120)
    return measured, cpu_seconds(tree(server.pid)) - before


def task_engine(server: PrefectServer, task_runs: int, repeat: int, work: Path) -> TaskEngine:
    """Per task run from a flow run of ``task_runs`` task runs; the flow run's own and the
    server's split between task runs and flow run by a second flow run of one chunk."""
    chunks = max(2, task_runs // 4)
    many, one = [], []
    for _ in range(repeat):
        many.append(task_runs_once(server, chunks, work))
        one.append(task_runs_once(server, 1, work))
    median = statistics.median
    per_task_run = median(m["tasks_s"] for m, _ in many) / (4 * chunks)
    flow_run = median(m["flow_s"] for m, _ in many)
    server_many, server_one = median(s for _, s in many), median(s for _, s in one)
    server_per_task_run = max(0.0, (server_many - server_one) / (4 * (chunks - 1)))
    return TaskEngine(
        per_task_run_s=per_task_run,
        flow_run_s=flow_run,
        server_per_task_run_s=server_per_task_run,
        server_per_flow_run_s=max(0.0, server_one - 4 * server_per_task_run),
    )


def task_runs_of(photos: int) -> int:
    """A first run's task runs for ``photos`` photos and one template: fetch, validate,
    prepare and submit per chunk."""
    from modelset.batch import chunk_bounds

    return 4 * len(chunk_bounds(photos))


# -- the ledger and the looks --------------------------------------------------------------


class InstantClient:
    """What ``submit_once`` asks of the API client, answered at once."""

    base_url = BASE_URL
    request_id_lookup_proven = False

    async def submit_variation(
        self, image: object, template_id: int, *, request_id: str, notify_url: str | None = None
    ) -> Any:
        from modelset.hidream.models import Receipt

        task_id = uuid.uuid4().hex
        sub_tasks = [f"{task_id}-{pose}" for pose in range(IMAGES_PER_SET)]
        return Receipt(task_id=task_id, sub_task_ids=sub_tasks, request_id=request_id)


@contextlib.asynccontextmanager
async def folder_runtime(folder: Path) -> AsyncIterator[BatchRuntime]:
    """What a run's sets share, on a fresh folder, without an API client."""
    import httpx

    from modelset.batch import BatchRuntime, InProcess
    from modelset.labels import Labelling
    from modelset.ledger import open_ledger
    from modelset.stages import PrepareOptions, SubmitPolicy, open_workspace

    with open_workspace(folder) as workspace:
        async with httpx.AsyncClient() as downloads:
            yield BatchRuntime(
                client=None,
                downloads=downloads,
                ledger=open_ledger(workspace.store),
                workspace=workspace,
                prepare=PrepareOptions(),
                rules=SubmitPolicy(run_id=str(uuid.uuid4())),
                orchestrator=InProcess(),
                labelling=Labelling("bench"),
            )


def random_look(rng: random.Random) -> str:
    from modelset.images.looks import COLOUR_BYTES, Look

    return str(Look(rng.getrandbits(64), rng.randbytes(COLOUR_BYTES)))


async def ledger_cpu_s(folder: Path, sets: int) -> float:
    """A first run's ledger work over ``sets`` sets (see the module's docstring)."""
    from modelset import layout
    from modelset.ledger import SubmissionState
    from modelset.report import Status
    from modelset.stages import PreparedPhoto, key_for, submit_once, upload_key_for

    rng = random.Random(32)
    async with folder_runtime(folder) as runtime:
        ledger, prepare = runtime.ledger, runtime.prepare
        photos = [
            PreparedPhoto(
                source=f"/in/look-{i}.jpg",
                source_sha256=f"{i:064x}",
                validated=True,
                upload_key=f"{layout.UPLOADS}/{i:064x}.jpg",
                upload_sha256=f"{sets + i:064x}",
                thumbnail=f"{layout.THUMBS}/{i:064x}.jpg",
                look=random_look(rng),
            )
            for i in range(sets)
        ]
        keys = [key_for(BASE_URL, TEMPLATE, f"{i:064x}", prepare) for i in range(sets)]
        client: Any = InstantClient()
        upload = folder / "upload.jpg"  # never read: the client sends nothing
        slots = asyncio.Semaphore(32)

        async def one(index: int, photo: PreparedPhoto, key: str) -> None:
            async with slots:
                assert photo.upload_sha256 is not None
                upload_claim = upload_key_for(BASE_URL, TEMPLATE, photo.upload_sha256, prepare)
                await ledger.run(ledger.upload_owners, [upload_claim], runtime.listing)
                record = await submit_once(
                    client,
                    ledger,
                    key=key,
                    prepared=photo,
                    prepare=prepare,
                    item=f"look-{index}",
                    template_id=TEMPLATE,
                    rules=runtime.rules,
                    upload=upload,
                    absent=True,
                )
                outputs = [f"look-{index}/{TEMPLATE}/{n}.jpg" for n in range(1, 5)]
                update = {
                    "state": SubmissionState.FINISHED,
                    "outcome": Status.SUCCEEDED.value,
                    "outputs": outputs,
                }
                await ledger.finish(record.model_copy(update=update))

        started = time.process_time()
        listed = await runtime.ledger_listing(sets)
        await ledger.run(ledger.read_many, keys, listed)
        sending = enumerate(zip(photos, keys, strict=True))
        await asyncio.gather(*(one(index, photo, key) for index, (photo, key) in sending))
        await ledger.run(ledger.remember, listed)
        return time.process_time() - started


async def looks_cpu_s(folder: Path, photos: int) -> float:
    """Each photo's near-duplicate check as it is prepared, one at a time."""
    import modelset.images.likeness  # noqa: F401 (numpy: a run's preparation imported it)
    from modelset.batch.jobs import SetJob
    from modelset.batch.looks import LookChecks
    from modelset.batch.photos import Photo
    from modelset.stages import PreparedPhoto

    rng = random.Random(22)
    async with folder_runtime(folder) as runtime:
        jobs = []
        for i in range(photos):
            photo = Photo(f"/in/look-{i}.jpg", f"look-{i}", [TEMPLATE])
            photo.prepared = PreparedPhoto(
                source=photo.source,
                source_sha256=f"{i:064x}",
                validated=True,
                upload_sha256=f"{photos + i:064x}",
                look=random_look(rng),
            )
            jobs.append(SetJob(photo, TEMPLATE, f"key-{i}", sending=True, fresh=True))
        checks = LookChecks(runtime)
        started = time.process_time()
        for job in jobs:
            async with checks.turn:
                await checks.repeats(TEMPLATE, [job])
        return time.process_time() - started


# -- the summary's pictures and the report -------------------------------------------------


def summary_rows(folder: Path, count: int) -> tuple[list[ManifestRow], dict[str, bytes]]:
    """``count`` rows of four outputs each, as a finished run leaves them in a folder, and
    the outputs' bytes (as they arrived)."""
    from modelset.images import THUMBNAIL_SIZE
    from modelset.report import ManifestRow, Status, input_thumbnail_key
    from modelset.sandbox.imagery import render_pose
    from modelset.stages import thumbnail_jpeg
    from modelset.storage import open_store

    store = open_store(folder)
    photos = sorted(ensure_photos(count).glob("*.jpg"))[:count]
    rows, arrived = [], {}
    for index, photo in enumerate(photos):
        data = photo.read_bytes()
        digest = f"{index:064x}"
        store.write(input_thumbnail_key(digest), thumbnail_jpeg(photo, THUMBNAIL_SIZE))
        outputs = []
        for pose in range(1, IMAGES_PER_SET + 1):
            outputs.append(f"{photo.stem}/{TEMPLATE}/{pose}.jpg")
            arrived[outputs[-1]] = render_pose(data, TEMPLATE, pose)
            store.write(outputs[-1], arrived[outputs[-1]])
        rows.append(
            ManifestRow(
                source=str(photo),
                item=photo.stem,
                source_sha256=digest,
                template_id=TEMPLATE,
                status=Status.SUCCEEDED,
                outputs=outputs,
            )
        )
    return rows, arrived


@dataclass
class Reporting:
    pictures_s: float  # pictures made on arrival and the summary's cells, for these rows
    report_s: float  # the summary's text, the results table and update_report
    rows: int


def reporting(folder: Path, rows_wanted: int, repeat: int) -> Reporting:
    from modelset import layout
    from modelset.report import update_report
    from modelset.stages import OUTPUT_THUMBNAIL, thumbnail_jpeg
    from modelset.storage import open_store
    from modelset.tasks.artifacts import (
        MARKDOWN_THUMBNAIL,
        picture_cells,
        results_table,
        summary_markdown,
    )

    rows, arrived = summary_rows(folder, rows_wanted)
    store = open_store(folder)
    pictured = {output for row in rows[:SUMMARY_ROWS] for output in row.outputs}
    pictures, reports = [], []
    for _ in range(repeat):
        for written in (
            layout.SUMMARY_THUMBNAILS,
            layout.MANIFEST_JSONL,
            layout.MANIFEST_CSV,
            layout.INDEX_HTML,
            layout.REPORT_VIEWS,
        ):
            store.delete(written)  # each repeat writes them as a first run does
        shown = [row.model_copy() for row in rows]
        started = time.process_time()
        made = {
            output: thumbnail_jpeg(io.BytesIO(data), OUTPUT_THUMBNAIL)
            for output, data in arrived.items()
            if output in pictured
        }
        cells = picture_cells(store, shown[:SUMMARY_ROWS], MARKDOWN_THUMBNAIL, made)
        pictures.append(time.process_time() - started)
        started = time.process_time()
        table = results_table(shown)
        sheet = update_report(store, shown)
        summary_markdown(shown, cells, out=str(folder), sheet=sheet, tabled=len(table))
        reports.append(time.process_time() - started)
    median = statistics.median
    return Reporting(median(pictures), median(reports), len(rows))


# -- the table -----------------------------------------------------------------------------


@dataclass
class Parts:
    imports_s: float  # over the baseline's
    ledger_per_set_s: float
    reporting: Reporting
    looks_per_photo_s: float
    engine: TaskEngine

    def per_photo_ms(self, n: int) -> dict[str, float]:
        """Each part's CPU per photo in a first run of ``n`` photos, one template, ms."""
        reporting = self.reporting
        pictured = min(n, SUMMARY_ROWS)
        engine = self.engine
        return {
            "imports": self.imports_s / n * 1000,
            "ledger": self.ledger_per_set_s * 1000,
            "thumbnails and report": (
                reporting.pictures_s / min(reporting.rows, SUMMARY_ROWS) * pictured / n
                + reporting.report_s / reporting.rows
            )
            * 1000,
            "looks (near-duplicate planning)": self.looks_per_photo_s * 1000,
            "task engine": (task_runs_of(n) / n * engine.per_task_run_s + engine.flow_run_s / n)
            * 1000,
        }

    def server_per_set_ms(self, n: int) -> float:
        engine = self.engine
        return (
            task_runs_of(n) / n * engine.server_per_task_run_s + engine.server_per_flow_run_s / n
        ) * 1000


def print_table(parts: Parts) -> None:
    from bench.figures import SERVER_GOAL_MS

    engine, reporting = parts.engine, parts.reporting
    explained = {
        "imports": f"{parts.imports_s:.2f} s once",
        "ledger": f"{parts.ledger_per_set_s * 1000:.2f} ms a set",
        "thumbnails and report": (
            f"pictures {reporting.pictures_s / min(reporting.rows, SUMMARY_ROWS) * 1000:.1f} "
            f"ms a row (first {SUMMARY_ROWS}), report "
            f"{reporting.report_s / reporting.rows * 1000:.2f} ms a row"
        ),
        "looks (near-duplicate planning)": f"{parts.looks_per_photo_s * 1000:.2f} ms a photo",
        "task engine": (
            "task runs a photo x "
            f"{engine.per_task_run_s * 1000:.2f} ms, + the flow run's "
            f"{engine.flow_run_s:.2f} s"
        ),
    }
    priced = {n: parts.per_photo_ms(n) for n in SIZES}
    header = f"{'CPU per photo over the script, ms':<36}" + "".join(f"{f'N={n}':>9}" for n in SIZES)
    print()
    print(header)
    print("-" * len(header))
    for part, how in explained.items():
        print(f"{part:<36}" + "".join(f"{priced[n][part]:>9.2f}" for n in SIZES) + f"   {how}")
    print(
        f"{'  task runs a photo':<36}"
        + "".join(f"{task_runs_of(n) / n:>9.3f}" for n in SIZES)
        + "   fetch, validate, prepare, submit per chunk (modelset.batch.chunk_bounds)"
    )
    print("-" * len(header))
    print(
        f"{'sum (the flow process)':<36}"
        + "".join(f"{sum(priced[n].values()):>9.2f}" for n in SIZES)
    )
    print(
        f"{'Prefect server, per set':<36}"
        + "".join(f"{parts.server_per_set_ms(n):>9.2f}" for n in SIZES)
        + f"   task runs a photo x {engine.server_per_task_run_s * 1000:.2f} ms, + "
        f"{engine.server_per_flow_run_s:.2f} s a flow run; goal <= {SERVER_GOAL_MS:.0f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.parts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--task-runs", type=int, default=200, help="in the flow run measured (default 200)"
    )
    parser.add_argument(
        "--photos",
        type=int,
        default=SUMMARY_ROWS,
        help="sets the ledger, looks and report are measured over (default 200)",
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    repeat = max(1, args.repeat)
    print(f"machine: {machine().describe()}", flush=True)
    median = statistics.median
    imports = median(import_cpu_s(PIPELINE_IMPORTS) for _ in range(repeat))
    baseline_imports = median(import_cpu_s(BASELINE_IMPORTS) for _ in range(repeat))
    print(
        f"imports: modelset run {imports * 1000:.0f} ms, baseline {baseline_imports * 1000:.0f} ms",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="parts-") as scratch:
        work = Path(scratch)
        ledger = median(
            asyncio.run(ledger_cpu_s(Path(tempfile.mkdtemp(dir=work)), args.photos))
            for _ in range(repeat)
        )
        print(f"ledger: {ledger * 1000:.0f} ms for {args.photos} sets", flush=True)
        looks = median(
            asyncio.run(looks_cpu_s(Path(tempfile.mkdtemp(dir=work)), args.photos))
            for _ in range(repeat)
        )
        print(f"looks: {looks * 1000:.0f} ms for {args.photos} photos", flush=True)
        report = reporting(work / "report", args.photos, repeat)
        print(
            f"thumbnails and report ({report.rows} rows x {IMAGES_PER_SET}): pictures "
            f"{report.pictures_s * 1000:.0f} ms, report {report.report_s * 1000:.0f} ms",
            flush=True,
        )
        server = PrefectServer(work / "logs").start()
        try:
            engine = task_engine(server, args.task_runs, repeat, work)
        finally:
            server.stop()
    print(
        f"a task run: {engine.per_task_run_s * 1000:.2f} ms in the flow process, "
        f"{engine.server_per_task_run_s * 1000:.2f} ms in the server; the flow run itself "
        f"{engine.flow_run_s * 1000:.0f} ms, and {engine.server_per_flow_run_s * 1000:.0f} ms "
        "in the server"
    )
    print_table(
        Parts(
            imports_s=imports - baseline_imports,
            ledger_per_set_s=ledger / args.photos,
            reporting=report,
            looks_per_photo_s=looks / args.photos,
            engine=engine,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
