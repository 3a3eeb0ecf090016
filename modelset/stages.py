"""The stages one photo travels through, as plain functions (no Prefect here).

``prepare_photo``: fetch + validate + prepare (one decode), cached by source hash and
policy. ``submit_once``: exactly once through the :class:`~modelset.ledger.Ledger`.
``collect_set``: wait for the set and download it. The Prefect tasks wrap these.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from collections import Counter
from pathlib import Path
from typing import Literal

import httpx
from PIL import Image
from pydantic import BaseModel

from modelset.atomic import write_bytes, write_text
from modelset.hidream import (
    AccountError,
    ConnectFailed,
    DeadlineExceeded,
    HiDreamClient,
    HiDreamError,
    RequestRejected,
    TaskNotFound,
    TaskResult,
    TaskStatus,
    Throttled,
)
from modelset.images import (
    PREPARATION_VERSION,
    THUMBNAIL_SIZE,
    Fit,
    ImageRejected,
    Policy,
    prepare_image,
)
from modelset.ledger import Ledger, LedgerRecord, SubmissionState, request_id_for, submission_key
from modelset.report import STATE_DIR, ManifestRow, Status
from modelset.sources import FetchError, fetch

log = logging.getLogger("modelset.stages")

TASK_MARKER = ".task_id"
_HASH_CHUNK = 1024 * 1024


class Workspace(BaseModel):
    """The folders of one output directory."""

    out: Path

    @property
    def state(self) -> Path:
        return self.out / STATE_DIR

    @property
    def ledger_dir(self) -> Path:
        return self.state / "ledger"

    @property
    def uploads(self) -> Path:
        return self.state / "uploads"

    @property
    def fetched(self) -> Path:
        return self.state / "fetched"

    @property
    def thumbnails(self) -> Path:
        return self.state / "thumbs"

    @property
    def prepared(self) -> Path:
        return self.state / "prepared"

    def create(self) -> Workspace:
        for folder in (self.ledger_dir, self.uploads, self.fetched, self.thumbnails, self.prepared):
            folder.mkdir(parents=True, exist_ok=True)
        return self


class PrepareOptions(BaseModel):
    policy: Policy = Policy.FIX
    fit: Fit = Fit.CROP
    max_fetch_bytes: int = 30 * 1024 * 1024
    allow_private_urls: bool = False
    timeout: float = 30.0
    pass_urls: bool = False  # send a valid http(s) photo's URL instead of uploading it

    @property
    def name(self) -> str:
        """Names the preparation in the exactly-once key and the cache: what changes pixels."""
        return f"{self.policy.value}-{self.fit.value}"


class PreparedPhoto(BaseModel):
    """A photo ready to send, or the reason it cannot be."""

    source: str
    source_sha256: str | None = None
    upload_path: Path | None = None
    upload_sha256: str | None = None
    thumbnail: str | None = None  # relative to the output folder
    reason: str | None = None
    sendable_as_is: bool = False  # the source itself meets every rule of the API

    @property
    def ready(self) -> bool:
        return self.upload_path is not None and self.reason is None

    def image_to_send(self, options: PrepareOptions) -> tuple[str | Path, str]:
        """What the submit carries, and its sha256: the source URL when it may pass."""
        assert self.upload_path is not None and self.upload_sha256 is not None
        if (
            options.pass_urls
            and self.sendable_as_is
            and self.source.startswith(("http://", "https://"))
            and self.source_sha256 is not None
        ):
            return self.source, self.source_sha256
        return self.upload_path, self.upload_sha256


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _prepared_record(workspace: Workspace, source_sha256: str, options: PrepareOptions) -> Path:
    return workspace.prepared / f"{source_sha256}-{options.name}-v{PREPARATION_VERSION}.json"


def cached_preparation(
    workspace: Workspace, source: str, source_sha256: str, options: PrepareOptions
) -> PreparedPhoto | None:
    """A photo prepared by an earlier run (same bytes, same policy), if its upload remains."""
    path = _prepared_record(workspace, source_sha256, options)
    try:
        cached = PreparedPhoto.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    if cached.upload_path is not None and not cached.upload_path.exists():
        return None
    return cached.model_copy(update={"source": source})


def prepare_photo(source: str, workspace: Workspace, options: PrepareOptions) -> PreparedPhoto:
    """Fetch, validate and prepare one photo. Photo problems are returned, never raised."""
    try:
        fetched = fetch(
            source,
            workspace.fetched,
            max_bytes=options.max_fetch_bytes,
            timeout=options.timeout,
            allow_private=options.allow_private_urls,
        )
    except FetchError as exc:
        return PreparedPhoto(source=source, reason=f"fetch failed: {exc}")
    cached = cached_preparation(workspace, source, fetched.sha256, options)
    if cached is not None:
        return cached
    upload_path = workspace.uploads / f"{fetched.sha256}-{options.name}.upload"
    preview = workspace.thumbnails / f"{fetched.sha256}.jpg"
    try:
        prepared = prepare_image(
            fetched.path,
            upload_path,
            policy=options.policy,
            fit=options.fit,
            thumbnail=None if preview.exists() else preview,
        )
        thumbnail = _write_thumbnail(prepared.path, preview, workspace)
        result = PreparedPhoto(
            source=source,
            source_sha256=fetched.sha256,
            upload_path=prepared.path,
            upload_sha256=prepared.sha256,
            thumbnail=thumbnail,
            sendable_as_is=prepared.check.sendable_as_is,
        )
    except ImageRejected as exc:
        result = PreparedPhoto(source=source, source_sha256=fetched.sha256, reason=exc.reason)
    finally:
        if fetched.temporary:
            fetched.path.unlink(missing_ok=True)
    write_text(_prepared_record(workspace, fetched.sha256, options), result.model_dump_json())
    return result


def _write_thumbnail(upload: Path, target: Path, workspace: Workspace) -> str:
    """The preview's path in the report; made from the upload if preparing did not."""
    if not target.exists():
        with Image.open(upload) as image:
            image.draft("RGB", THUMBNAIL_SIZE)
            image.thumbnail(THUMBNAIL_SIZE)
            encoded = io.BytesIO()
            image.convert("RGB").save(encoded, "JPEG", quality=80)
        write_bytes(target, encoded.getvalue())
    return target.relative_to(workspace.out).as_posix()


# -- submit ----------------------------------------------------------------------------


class SubmitPolicy(BaseModel):
    run_id: str
    refresh: bool = False
    retry_failed: bool = False
    resubmit_unknown: bool = False


def key_for(base_url: str, template_id: int, source_sha256: str, options: PrepareOptions) -> str:
    return submission_key(
        base_url=base_url,
        template_id=template_id,
        source_sha256=source_sha256,
        policy=options.name,
        version=PREPARATION_VERSION,
    )


def needs_submit(record: LedgerRecord | None, rules: SubmitPolicy) -> bool:
    """Whether a key must be (re)sent under these rules, judged from its record alone."""
    if record is None:
        return True
    if record.claimed_by_run == rules.run_id:
        return record.state is SubmissionState.INTENT
    if rules.refresh:
        return True
    if record.state is SubmissionState.FINISHED:
        return rules.retry_failed and record.outcome == Status.FAILED
    return record.state in (SubmissionState.INTENT, SubmissionState.UNKNOWN)


async def submit_once(
    client: HiDreamClient,
    ledger: Ledger,
    *,
    key: str,
    prepared: PreparedPhoto,
    prepare: PrepareOptions,
    item: str,
    template_id: int,
    rules: SubmitPolicy,
    notify_url: str | None = None,
) -> LedgerRecord:
    """Send one photo+template at most once; returns its ledger record.

    Raises :class:`AccountError` (the batch must stop); every other outcome is recorded.
    """
    assert prepared.ready
    assert prepared.source_sha256
    image, image_sha256 = prepared.image_to_send(prepare)
    async with ledger.claim(key) as record:
        if not needs_submit(record, rules):
            assert record is not None
            return record
        if record is not None and record.state in (
            SubmissionState.INTENT,
            SubmissionState.UNKNOWN,
        ):
            # An earlier send may have created a task: adopt it rather than pay again,
            # whatever the rerun options say.
            resolved = await _resolve_unknown(client, ledger, record, rules)
            if resolved is not None:
                return resolved
            attempt = record.attempt
        else:
            attempt = 1 if record is None else record.attempt + 1
        intent = ledger.write(
            LedgerRecord(
                key=key,
                attempt=attempt,
                state=SubmissionState.INTENT,
                request_id=request_id_for(key, attempt),
                template_id=template_id,
                source=prepared.source,
                item=item,
                source_sha256=prepared.source_sha256,
                upload_sha256=image_sha256,
                claimed_by_run=rules.run_id,
            )
        )
        try:
            receipt = await client.submit_variation(
                image,
                template_id,
                request_id=intent.request_id,
                notify_url=notify_url,
            )
        except (AccountError, ConnectFailed, Throttled) as exc:
            # Certainly not created: the key goes back to what it was before this send.
            _restore(ledger, key, record)
            if isinstance(exc, AccountError):
                raise
            return intent.model_copy(
                update={
                    "state": SubmissionState.FINISHED,
                    "outcome": Status.FAILED.value,
                    "reason": f"not submitted ({exc.message}); a rerun tries again",
                }
            )
        except RequestRejected as exc:
            return ledger.write(
                intent.model_copy(
                    update={
                        "state": SubmissionState.FINISHED,
                        "outcome": Status.REJECTED.value,
                        "reason": f"refused by the service: {exc.message}",
                    }
                )
            )
        except HiDreamError as exc:
            # It may have reached the service (a lookup just now can miss a request still
            # being processed): the next run looks it up again before any resend.
            reason = f"{exc.message}; a rerun looks its request_id up before sending again"
            return ledger.write(
                intent.model_copy(update={"state": SubmissionState.UNKNOWN, "reason": reason})
            )
        return ledger.write(
            intent.model_copy(
                update={
                    "state": SubmissionState.SUBMITTED,
                    "task_id": receipt.task_id,
                    "sub_task_ids": receipt.sub_task_ids,
                }
            )
        )


def _restore(ledger: Ledger, key: str, previous: LedgerRecord | None) -> None:
    if previous is None:
        ledger.forget(key)
    else:
        ledger.write(previous)


async def _resolve_unknown(
    client: HiDreamClient, ledger: Ledger, record: LedgerRecord, rules: SubmitPolicy
) -> LedgerRecord | None:
    """An earlier send whose answer was lost: its task if found, None if safe to resend."""
    if client.lookup_by_request_id:
        try:
            result = await client.get_result(request_id=record.request_id)
        except TaskNotFound:
            return None
        except HiDreamError as exc:
            log.info("looking up %s failed: %s", record.request_id, exc.message)
        else:
            if result.task_id is not None:
                return ledger.write(
                    record.model_copy(
                        update={
                            "state": SubmissionState.SUBMITTED,
                            "task_id": result.task_id,
                            "sub_task_ids": [s.sub_task_id for s in result.sub_task_results],
                            "reason": None,
                        }
                    )
                )
    if rules.resubmit_unknown:
        return None
    return ledger.write(
        record.model_copy(
            update={
                "state": SubmissionState.UNKNOWN,
                "reason": "a send may have reached the service and cannot be looked up; "
                "rerun with --resubmit-unknown to send it again (it may be paid twice)",
            }
        )
    )


# -- collect ---------------------------------------------------------------------------


async def collect_once(
    client: HiDreamClient,
    downloads: httpx.AsyncClient,
    ledger: Ledger,
    record: LedgerRecord,
    *,
    workspace: Workspace,
    item: str,
    deadline_s: float | None = None,
    wakeups: dict[str, asyncio.Event] | None = None,
    wait_for_others: bool = True,
) -> LedgerRecord | None:
    """Collect a submitted set, one collector per set.

    A batch holds the set's collection lock while it waits; with ``wait_for_others``
    False (the callback collector), a set someone is already collecting is left to them
    and None is returned. ``wakeups`` gets an event per waited task, for callbacks to set.
    """
    assert record.task_id is not None
    async with ledger.collecting(record.key, wait=wait_for_others) as held:
        if not held:
            return None
        current = ledger.read(record.key) or record
        if current.state is SubmissionState.FINISHED and current.task_id == record.task_id:
            return current  # another collector finished it meanwhile
        waiting = wakeups if wakeups is not None else {}
        wake = waiting.setdefault(record.task_id, asyncio.Event())
        try:
            return await collect_set(
                client,
                downloads,
                ledger,
                record,
                workspace=workspace,
                item=item,
                deadline_s=deadline_s,
                wake=wake,
            )
        finally:
            waiting.pop(record.task_id, None)


async def collect_set(
    client: HiDreamClient,
    downloads: httpx.AsyncClient,
    ledger: Ledger,
    record: LedgerRecord,
    *,
    workspace: Workspace,
    item: str,
    deadline_s: float | None = None,
    wake: asyncio.Event | None = None,
) -> LedgerRecord:
    """Wait for a submitted set and download it into ``<out>/<item>/<template_id>/``."""
    assert record.task_id is not None
    try:
        result = await client.wait_for_result(record.task_id, deadline_s, wake=wake)
    except DeadlineExceeded as exc:
        return record.model_copy(
            update={"reason": f"{exc.message}; a rerun resumes waiting (nothing is resent)"}
        )
    except HiDreamError as exc:
        return record.model_copy(
            update={"reason": f"could not learn the result ({exc.message}); a rerun resumes"}
        )
    folder = workspace.out / item / str(record.template_id)
    outputs, problems = await _download_set(client, downloads, result, record.task_id, folder)
    outcome, reason = _judge(result, problems)
    update: dict[str, object] = {
        "outcome": outcome.value,
        "reason": reason,
        "outputs": [path.relative_to(workspace.out).as_posix() for path in outputs],
        # A set whose images could not all be downloaded stays open: the next run
        # downloads again instead of paying again.
        "state": SubmissionState.SUBMITTED if problems else SubmissionState.FINISHED,
    }
    if problems:
        update["reason"] = f"{reason}; a rerun downloads them again"
    async with ledger.claim(record.key) as current:
        if current is not None and current.task_id != record.task_id:
            # A newer attempt (--refresh, --retry-failed) owns the key now.
            return record.model_copy(update=update)
        return ledger.write(record.model_copy(update=update))


async def _download_set(
    client: HiDreamClient,
    downloads: httpx.AsyncClient,
    result: TaskResult,
    task_id: str,
    folder: Path,
) -> tuple[list[Path], list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    # Files already there are kept only if they came from this very task: a refreshed
    # or retried set replaces an older task's images.
    marker = folder / TASK_MARKER
    same_task = marker.exists() and marker.read_text(encoding="utf-8").strip() == task_id
    if not same_task:
        for stale in folder.glob("*.jpg"):
            stale.unlink()
        write_text(marker, task_id)
    outputs: list[Path] = []
    problems: list[str] = []
    for index, sub in enumerate(result.sub_task_results, start=1):
        if not sub.succeeded:
            continue
        target = folder / f"{index}.jpg"
        if same_task and target.exists() and target.stat().st_size > 0:
            outputs.append(target)
            continue
        problem = await download_image(downloads, sub.image, target)
        if problem is not None:
            # Result URLs expire: ask for fresh ones once before giving up.
            try:
                fresh = await client.get_result(task_id=task_id)
            except HiDreamError as exc:
                problems.append(f"image {index}: {problem}; fresh URLs unavailable ({exc.message})")
                continue
            url = next(
                (s.image for s in fresh.sub_task_results if s.sub_task_id == sub.sub_task_id),
                "",
            )
            problem = await download_image(downloads, url, target) if url else problem
        if problem is None:
            outputs.append(target)
        else:
            problems.append(f"image {index}: {problem}")
    return outputs, problems


async def download_image(downloads: httpx.AsyncClient, url: str, target: Path) -> str | None:
    """Download one image, verified to decode; the problem, or None when it is on disk."""
    try:
        response = await downloads.get(url)
    except httpx.HTTPError as exc:
        return f"download failed ({type(exc).__name__})"
    if response.status_code != 200:
        return f"download failed (HTTP {response.status_code})"
    try:
        with Image.open(io.BytesIO(response.content)) as image:
            image.verify()
    except Exception:  # Pillow raises many types for a broken file
        return "downloaded file is not a valid image"
    write_bytes(target, response.content)
    return None


def _judge(result: TaskResult, problems: list[str]) -> tuple[Status, str | None]:
    statuses = [sub.task_status for sub in result.sub_task_results]
    counted = Counter(result.failure_reasons() + problems)
    if not counted:
        return Status.SUCCEEDED, None
    reasons = "; ".join(
        reason if count == 1 else f"{reason} (x{count})" for reason, count in counted.items()
    )
    if statuses and all(status is TaskStatus.REJECTED for status in statuses):
        return Status.REJECTED, reasons
    done = len(result.image_urls) - len(problems)
    return Status.FAILED, f"{done} of {len(statuses)} images generated ({reasons})"


def row_for(
    *,
    source: str,
    item: str,
    template_id: int,
    prepared: PreparedPhoto,
    record: LedgerRecord | None,
    status_if_open: Literal["planned", "skipped"] | None = None,
    reason: str | None = None,
) -> ManifestRow:
    """The manifest row of one photo and template from what is known of it."""
    base = ManifestRow(
        source=source,
        item=item,
        source_sha256=prepared.source_sha256,
        upload_sha256=prepared.upload_sha256,
        template_id=template_id,
        status=Status.REJECTED,
        reason=prepared.reason,
        thumbnail=prepared.thumbnail,
    )
    if not prepared.ready:
        return base
    if record is None:
        return base.model_copy(
            update={"status": Status(status_if_open or "skipped"), "reason": reason}
        )
    update: dict[str, object] = {
        "upload_sha256": record.upload_sha256 or prepared.upload_sha256,
        "request_id": record.request_id,
        "task_id": record.task_id,
        "reason": record.reason,
        "outputs": record.outputs,
    }
    if record.state is SubmissionState.FINISHED and record.outcome:
        update["status"] = Status(record.outcome)
    elif record.state in (SubmissionState.UNKNOWN, SubmissionState.INTENT):
        update["status"] = Status.OUTCOME_UNKNOWN
        update["reason"] = record.reason or "the send was interrupted; a rerun resolves it"
    else:
        update["status"] = Status.FAILED
        update["reason"] = record.reason or "not finished; a rerun resumes waiting"
    return base.model_copy(update=update)
