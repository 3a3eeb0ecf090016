"""The script a competent user would write instead of the pipeline: asyncio + httpx, no Prefect.

```sh
.venv/bin/python -m bench.baseline --base-url http://127.0.0.1:8765 --token sandbox-token \\
    --concurrency 32 -t 20 --out /tmp/baseline PHOTOS_DIR
```

What it shares with ``modelset run``, so that the difference is the orchestration:

- preparation: ``modelset.stages.prepare_photo`` (fetch + hash, header check, one decode,
  upright 3:4 <= 2048 px, JPEG, thumbnail), in a thread pool of one thread per core, like
  the pipeline's fetch, validate and prepare stages (``modelset.batch.chunks``);
- the HTTP calls: ``modelset.hidream.HiDreamClient`` for the submit (same JSON body with a
  base64 image and a request_id) and for polling (same schedule: 1 s, growing by half up to
  15 s), then a plain ``httpx.AsyncClient`` GET of each image, verified with Pillow and
  written atomically (``modelset.stages.download_image`` into the folder's store), one
  after the other, as the pipeline does into a folder.

It writes into a local folder only, as a script would: ``--out`` is a path.

What it leaves out, as a hand-written script would: Prefect, the exactly-once ledger (and
its fsyncs), the template-catalogue check, the report and the artifacts. One
``asyncio.Semaphore(concurrency)`` is held for each photo's whole life (prepare, submit,
poll, download). It prints one JSON line with its counts and timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from modelset.hidream import HiDreamClient, HiDreamError
from modelset.images import Fit, Policy
from modelset.stages import (
    PreparedPhoto,
    PrepareOptions,
    Workspace,
    download_image,
    open_workspace,
    prepare_photo,
)
from modelset.storage import is_remote

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass
class Outcome:
    source: str
    status: str
    reason: str = ""
    task_id: str | None = None
    outputs: list[str] = field(default_factory=list)


@dataclass
class Timings:
    prepare_s: float = 0.0
    submit_s: float = 0.0
    wait_s: float = 0.0
    download_s: float = 0.0


def discover(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(path)
    return found


class Baseline:
    def __init__(
        self,
        *,
        base_url: str,
        token: str,
        template_id: int,
        concurrency: int,
        workspace: Workspace,
    ) -> None:
        self.template_id = template_id
        self.workspace = workspace
        self.store = workspace.store
        self.options = PrepareOptions(policy=Policy.FIX, fit=Fit.CROP, allow_private_urls=True)
        self.client = HiDreamClient(token, base_url=base_url, max_connections=2 * concurrency)
        self.http = httpx.AsyncClient(
            timeout=60.0,
            limits=httpx.Limits(
                max_connections=2 * concurrency, max_keepalive_connections=2 * concurrency
            ),
        )
        self.slots = asyncio.Semaphore(concurrency)
        self.pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
        self.timings = Timings()

    async def close(self) -> None:
        await self.client.aclose()
        await self.http.aclose()
        self.pool.shutdown()

    async def prepare(self, source: Path) -> PreparedPhoto:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.pool, prepare_photo, str(source), self.workspace, self.options
        )

    async def one(self, source: Path) -> Outcome:
        async with self.slots:
            started = time.perf_counter()
            prepared = await self.prepare(source)
            self.timings.prepare_s += time.perf_counter() - started
            # A folder's store: the prepared upload is a file below --out.
            upload = self.store.local_path(prepared.upload_key) if prepared.upload_key else None
            if not prepared.ready or upload is None:
                return Outcome(str(source), "rejected", prepared.reason or "")
            try:
                started = time.perf_counter()
                receipt = await self.client.submit_variation(
                    upload, self.template_id, request_id=str(uuid.uuid4())
                )
                self.timings.submit_s += time.perf_counter() - started
                started = time.perf_counter()
                result = await self.client.wait_for_result(receipt.task_id)
                self.timings.wait_s += time.perf_counter() - started
            except HiDreamError as exc:
                return Outcome(str(source), "failed", exc.message)
            started = time.perf_counter()
            folder = f"{source.stem}/{self.template_id}"
            outputs: list[str] = []
            problems: list[str] = []
            for index, sub in enumerate(result.sub_task_results, start=1):
                if not sub.succeeded:
                    problems.append(f"image {index}: {sub.description}")
                    continue
                target = f"{folder}/{index}.jpg"
                # One more try, as the pipeline does (with fresh URLs): a keep-alive
                # connection the server just closed fails a request now and then.
                problem = await download_image(self.http, sub.image, self.store, target)
                if problem is not None:
                    problem = await download_image(self.http, sub.image, self.store, target)
                if problem is None:
                    outputs.append(target)
                else:
                    problems.append(f"image {index}: {problem}")
            self.timings.download_s += time.perf_counter() - started
            status = "failed" if problems else "succeeded"
            return Outcome(str(source), status, "; ".join(problems), receipt.task_id, outputs)

    async def run(self, sources: list[Path]) -> list[Outcome]:
        try:
            return await asyncio.gather(*(self.one(source) for source in sources))
        finally:
            await self.close()


async def run_baseline(
    sources: list[Path],
    *,
    base_url: str,
    token: str,
    template_id: int,
    concurrency: int,
    out: Path,
) -> dict[str, object]:
    started = time.perf_counter()
    with open_workspace(out) as workspace:  # a folder: its store and .modelset/ scratch
        baseline = Baseline(
            base_url=base_url,
            token=token,
            template_id=template_id,
            concurrency=concurrency,
            workspace=workspace,
        )
        outcomes = await baseline.run(sources)
    with (out / "baseline.jsonl").open("w", encoding="utf-8") as handle:
        for outcome in outcomes:
            handle.write(json.dumps(outcome.__dict__) + "\n")
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return {
        "photos": len(sources),
        "counts": counts,
        "images": sum(len(outcome.outputs) for outcome in outcomes),
        "in_process_wall_s": round(time.perf_counter() - started, 3),
        "cpu_s": round(time.process_time(), 3),
        "summed_stage_s": {k: round(v, 2) for k, v in baseline.timings.__dict__.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.baseline",
        description="The hand-written asyncio + httpx script the pipeline is compared with.",
    )
    parser.add_argument("sources", nargs="+", help="photo files or folders")
    parser.add_argument("--base-url", default=os.environ.get("HIDREAM_BASE_URL"))
    parser.add_argument("--token", default=os.environ.get("HIDREAM_API_TOKEN"))
    parser.add_argument("-t", "--template", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", required=True, help="a local folder")
    args = parser.parse_args(argv)
    if not args.base_url or not args.token:
        parser.error("--base-url and --token (or HIDREAM_BASE_URL, HIDREAM_API_TOKEN) are needed")
    if is_remote(args.out):
        parser.error("--out: a local folder (the baseline is a plain script: no buckets)")
    sources = discover(args.sources)
    summary = asyncio.run(
        run_baseline(
            sources,
            base_url=args.base_url,
            token=args.token,
            template_id=args.template,
            concurrency=args.concurrency,
            out=Path(args.out),
        )
    )
    print(json.dumps(summary), flush=True)
    counts = summary["counts"]
    assert isinstance(counts, dict)
    return 0 if set(counts) <= {"succeeded"} else 1


if __name__ == "__main__":
    sys.exit(main())
