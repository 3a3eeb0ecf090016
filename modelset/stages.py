"""The stages one photo travels through, as plain functions (no Prefect here).

``prepare_photo``: fetch + validate + prepare (one decode), cached by source hash and
policy. ``submit_once``: exactly once through the :class:`~modelset.ledger.Ledger`.
``collect_set``: wait for the set and download it. The Prefect tasks wrap these.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import tempfile
from collections import Counter
from collections.abc import Awaitable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Literal, TypeVar

import httpx
from PIL import Image
from pydantic import BaseModel, Field

from modelset.atomic import write_bytes
from modelset.budget import PeriodBudget, Reservation
from modelset.hidream import (
    AccountError,
    ConnectFailed,
    DeadlineExceeded,
    HiDreamClient,
    HiDreamError,
    OutcomeUnknown,
    RequestRejected,
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
    inspect_image,
    prepare_image,
)
from modelset.ledger import (
    ClaimLost,
    Ledger,
    LedgerClaim,
    LedgerRecord,
    RecordAppeared,
    SubmissionState,
    request_id_for,
    submission_key,
    upload_key,
)
from modelset.report import (
    STATE_DIR,
    ManifestRow,
    Status,
    input_thumbnail_key,
    output_thumbnail_key,
    store_set_thumbnails,
)
from modelset.settings import naming_request
from modelset.sources import FetchError, fetch
from modelset.storage import AlreadyExists, Store, off_loop, open_store, read_or_none

log = logging.getLogger("modelset.stages")

T = TypeVar("T")

TASK_MARKER = ".task_id"
UPLOADS_PREFIX = f"{STATE_DIR}/uploads"
OUTPUT_THUMBNAIL = (96, 128)


def not_collected(cause: str) -> str:
    """The reason of a send whose answer was lost: it may have been paid for."""
    return (
        f"paid, not collected: its answer was lost ({cause}); `modelset settle` collects "
        "it, `--resubmit-unknown` sends it again (may pay twice)"
    )


class Workspace:
    """An output location (folder or bucket) and this machine's scratch folder.

    Everything a later run or another worker reads back goes to ``store``: the sets, the
    report, the ledger, thumbnails and the prepared uploads. What only this run needs (a
    fetched copy of a remote source) goes to ``scratch``: on a folder that is
    ``.modelset/`` beside the report, on a bucket a temporary folder that
    :func:`open_workspace` removes at the end of the run.
    """

    def __init__(self, store: Store, scratch: Path) -> None:
        self.store = store
        self.scratch = scratch
        self.uploads = scratch / "uploads"
        self.fetched = scratch / "fetched"
        # On a bucket: copies of the thumbnails this run stored there, by key, so that the
        # report and the summary read them here instead of asking the bucket again.
        self.kept: Path | None = None if store.is_local else scratch / "kept"
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.fetched.mkdir(parents=True, exist_ok=True)
        # Fetched copies of remote sources by content hash, for the stages after fetch.
        self.fetched_files: dict[str, Path] = {}
        self.pictures = SetPictures()

    def file_for(self, key: str) -> Path:
        """Where ``key`` is a file on this machine: in a folder, the key's own file; from a
        bucket, its copy in the scratch folder (which may not exist yet)."""
        return self.store.local_path(key) or self.uploads / Path(key).name

    @property
    def out(self) -> str:
        """The location as a person names it (a path or ``s3://bucket/prefix``)."""
        return self.store.url


@contextlib.contextmanager
def open_workspace(location: str | Path) -> Iterator[Workspace]:
    """The workspace of an output location, its scratch folder removed afterwards."""
    store = open_store(location)
    local = store.local_path(STATE_DIR)
    if local is None:
        with tempfile.TemporaryDirectory(prefix="modelset-") as scratch:
            yield Workspace(store, Path(scratch))
        return
    workspace = Workspace(store, local)
    try:
        yield workspace
    finally:
        # Copies of remote sources whose preparation came from the cache.
        for path in workspace.fetched_files.values():
            path.unlink(missing_ok=True)


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
    """A photo on its way through fetch, validate and prepare, or the reason it stopped.

    It holds hashes and keys of the output location, never a path on one machine: the
    stages' results are cached by Prefect in the output location and read back by any
    worker.
    """

    source: str
    source_sha256: str | None = None
    validated: bool = False
    upload_key: str | None = None  # the prepared upload, a key of the output location
    upload_sha256: str | None = None
    thumbnail: str | None = None  # a key of the output location
    reason: str | None = None
    sendable_as_is: bool = False  # the source itself meets every rule of the API
    look: str | None = None  # what the prepared pixels look like (modelset.images.looks)
    # Of copies of one picture, which is the best source: see ``source_rank``.
    upload_pixels: int = 0
    source_bytes_per_pixel: float = 0.0

    @property
    def ready(self) -> bool:
        return self.upload_sha256 is not None and self.reason is None

    @property
    def source_rank(self) -> tuple[int, float]:
        """Higher for a better source of the same picture: more pixels after preparation,
        then fewer of its pixels lost to compression (more bytes a pixel, in any format)."""
        return (self.upload_pixels, self.source_bytes_per_pixel)

    def passes_url(self, options: PrepareOptions) -> bool:
        """Whether the submit sends the source's URL instead of an upload (--pass-urls)."""
        return (
            options.pass_urls
            and self.sendable_as_is
            and self.source.startswith(("http://", "https://"))
            and self.source_sha256 is not None
        )

    def sent_sha256(self, options: PrepareOptions) -> str:
        """The sha256 of what a submit of this photo carries."""
        sent = self.source_sha256 if self.passes_url(options) else self.upload_sha256
        assert sent is not None
        return sent

    def image_to_send(self, options: PrepareOptions, upload: Path | None) -> tuple[str | Path, str]:
        """What the submit carries, and its sha256: the source URL when it may pass."""
        if self.passes_url(options):
            return self.source, self.sent_sha256(options)
        assert upload is not None
        return upload, self.sent_sha256(options)


def upload_key_of(source_sha256: str, options: PrepareOptions) -> str:
    return f"{UPLOADS_PREFIX}/{source_sha256}-{options.name}-v{PREPARATION_VERSION}.jpg"


def is_local_file(source: str) -> bool:
    return "://" not in source and Path(source).is_file()


# -- fetch, validate, prepare ------------------------------------------------------------


def fetch_photo(
    source: str, workspace: Workspace, options: PrepareOptions, *, known_sha256: str | None = None
) -> PreparedPhoto:
    """Make the source's bytes available here and hash them; a failure is its reason.

    Local files are read in place (``known_sha256`` skips hashing them again); remote ones
    are copied into the scratch folder (transient network errors are retried with
    backoff by :func:`~modelset.sources.fetch`).
    """
    if known_sha256 is not None and is_local_file(source):
        return PreparedPhoto(source=source, source_sha256=known_sha256)
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
    if fetched.temporary:
        workspace.fetched_files[fetched.sha256] = fetched.path
    return PreparedPhoto(source=source, source_sha256=fetched.sha256)


def _source_file(photo: PreparedPhoto, workspace: Workspace, options: PrepareOptions) -> Path:
    """The bytes of a fetched photo on this machine (fetched again if only a cached fetch
    result came from another machine or run)."""
    assert photo.source_sha256 is not None
    if is_local_file(photo.source):
        return Path(photo.source)
    path = workspace.fetched_files.get(photo.source_sha256)
    if path is not None and path.exists():
        return path
    again = fetch_photo(photo.source, workspace, options)
    if again.reason is not None or again.source_sha256 != photo.source_sha256:
        raise ImageRejected(again.reason or "the source changed since it was fetched")
    return workspace.fetched_files[photo.source_sha256]


def validate_photo(
    photo: PreparedPhoto, workspace: Workspace, options: PrepareOptions
) -> PreparedPhoto:
    """Check a fetched photo from its header only: format, size, ratio, bombs."""
    if photo.reason is not None or photo.validated:
        return photo
    try:
        check = inspect_image(_source_file(photo, workspace, options))
    except ImageRejected as exc:
        return photo.model_copy(update={"reason": exc.reason})
    return photo.model_copy(update={"validated": True, "sendable_as_is": check.sendable_as_is})


def prepare_validated(
    photo: PreparedPhoto, workspace: Workspace, options: PrepareOptions
) -> PreparedPhoto:
    """The one decode: the upload (upright, 3:4, <=2048 px, no metadata) and a thumbnail,
    both stored in the output location."""
    if photo.reason is not None or photo.upload_sha256 is not None:
        return photo
    assert photo.source_sha256 is not None
    store = workspace.store
    key = upload_key_of(photo.source_sha256, options)
    upload = workspace.file_for(key)
    preview_key = input_thumbnail_key(photo.source_sha256)
    preview = workspace.file_for(preview_key)
    try:
        source = _source_file(photo, workspace, options)
        source_bytes = source.stat().st_size  # before a fetched copy is deleted
        prepared = prepare_image(
            source,
            upload,
            policy=options.policy,
            fit=options.fit,
            thumbnail=None if preview.exists() else preview,
        )
        _write_thumbnail(prepared.path, preview)
    except ImageRejected as exc:
        return photo.model_copy(update={"reason": exc.reason})
    finally:
        fetched = workspace.fetched_files.pop(photo.source_sha256, None)
        if fetched is not None:
            fetched.unlink(missing_ok=True)
    if workspace.kept is not None:
        store.write_file(key, upload)
        store.write_file(preview_key, preview)
        kept = workspace.kept / preview_key
        kept.parent.mkdir(parents=True, exist_ok=True)
        preview.replace(kept)
    return photo.model_copy(
        update={
            "upload_key": key,
            "upload_sha256": prepared.sha256,
            "thumbnail": preview_key,
            "sendable_as_is": prepared.check.sendable_as_is,
            "look": prepared.look,
            "upload_pixels": prepared.width * prepared.height,
            "source_bytes_per_pixel": source_bytes / (prepared.check.width * prepared.check.height),
        }
    )


def prepare_photo(source: str, workspace: Workspace, options: PrepareOptions) -> PreparedPhoto:
    """Fetch, validate and prepare one photo. Photo problems are returned, never raised."""
    fetched = fetch_photo(source, workspace, options)
    return prepare_validated(validate_photo(fetched, workspace, options), workspace, options)


def upload_on_disk(photo: PreparedPhoto, workspace: Workspace) -> Path | None:
    """The prepared upload where it already is on this machine's disk (one stat, cheap
    enough for the event loop), else None."""
    if photo.upload_key is None:
        return None
    local = workspace.file_for(photo.upload_key)
    return local if local.exists() else None


def upload_file(photo: PreparedPhoto, workspace: Workspace, options: PrepareOptions) -> Path | None:
    """The prepared upload as a file on this machine: from the output location (a bucket's
    copied into the scratch folder once), or prepared again if it is gone."""
    if photo.upload_key is None:
        return None
    if (found := upload_on_disk(photo, workspace)) is not None:
        return found
    if not workspace.store.is_local:  # a bucket's upload, copied here once
        blob = read_or_none(workspace.store, photo.upload_key)
        if blob is not None:
            local = workspace.file_for(photo.upload_key)
            write_bytes(local, blob.data, durable=False)
            return local
    again = prepare_validated(photo.model_copy(update={"upload_sha256": None}), workspace, options)
    if again.upload_sha256 != photo.upload_sha256:
        return None  # Pillow changed its bytes: this is no longer the upload paid for
    return upload_file(again, workspace, options) if again.upload_key else None


def _write_thumbnail(upload: Path, target: Path) -> None:
    """Make the preview from the upload if preparing did not."""
    if not target.exists():
        write_bytes(target, thumbnail_jpeg(upload, THUMBNAIL_SIZE))


def stored_preview(store: Store, source_sha256: str) -> Image.Image | None:
    """A prepared photo's preview (its input thumbnail) as stored, or None if it is gone."""
    blob = read_or_none(store, input_thumbnail_key(source_sha256))
    if blob is None:
        return None
    with Image.open(io.BytesIO(blob.data)) as preview:
        return preview.convert("RGB")


def small_image(image_file: Path | io.BytesIO, size: tuple[int, int]) -> Image.Image:
    """An image shrunk to fit ``size``, decoded at a reduced scale where the format allows
    (a JPEG at 1/8: the decode is most of the cost)."""
    with Image.open(image_file) as image:
        image.draft("RGB", size)
        image.thumbnail(size)
        return image.convert("RGB")


def jpeg_bytes(image: Image.Image) -> bytes:
    encoded = io.BytesIO()
    image.save(encoded, "JPEG", quality=80)
    return encoded.getvalue()


def thumbnail_jpeg(image_file: Path | io.BytesIO, size: tuple[int, int]) -> bytes:
    """A small JPEG of an image."""
    return jpeg_bytes(small_image(image_file, size))


# -- submit ----------------------------------------------------------------------------


class SubmitPolicy(BaseModel):
    run_id: str
    refresh: bool = False
    retry_failed: bool = False
    resubmit_unknown: bool = False
    allow_near_duplicates: bool = False  # pay for photos that look like one paid for
    # --regenerate-declined: ledger key -> the declined attempt, paid again once.
    regenerate: dict[str, int] = Field(default_factory=dict)
    # A send (every attempt of it) must fit in what is left of the claim's lease.
    send_window_s: float = 0.0


def key_for(base_url: str, template_id: int, source_sha256: str, options: PrepareOptions) -> str:
    return submission_key(
        base_url=base_url,
        template_id=template_id,
        source_sha256=source_sha256,
        policy=options.name,
        version=PREPARATION_VERSION,
    )


def upload_key_for(
    base_url: str, template_id: int, upload_sha256: str, options: PrepareOptions
) -> str:
    return upload_key(
        base_url=base_url,
        template_id=template_id,
        upload_sha256=upload_sha256,
        policy=options.name,
    )


def needs_submit(record: LedgerRecord | None, rules: SubmitPolicy) -> bool:
    """Whether a key must be (re)sent under these rules, judged from its record alone."""
    if record is None:
        return True
    if record.claimed_by_run == rules.run_id:
        # Its own sends: an interrupted one (a retried task) or one whose answer was lost
        # (looked up where proven, see _resolve_unknown); never one sent for certain.
        return record.state in (SubmissionState.INTENT, SubmissionState.UNKNOWN)
    if rules.refresh:
        return True
    if record.state is SubmissionState.FINISHED:
        if rules.regenerate.get(record.key) == record.attempt:
            return True  # declined in review; a later attempt is not declined (yet)
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
    upload: Path | None,
    notify_url: str | None = None,
    absent: bool = False,
    budget: PeriodBudget | None = None,
    images: int = 0,
) -> LedgerRecord:
    """Send one photo+template at most once; returns its ledger record.

    ``upload`` is the prepared upload on this machine (see :func:`upload_file`).
    ``absent``: the key had no record when the run was planned (see ``Ledger.claim``).
    ``budget``: the period budget, of which ``images`` are reserved under the claim before
    the send, and spent or given back by its outcome.

    The record returned has another key when the same upload was paid for under that
    key (the same picture with other bytes): the caller points at that set.
    Raises :class:`AccountError` (the batch must stop); every other outcome is recorded.
    """
    assert prepared.ready
    assert prepared.source_sha256
    image, image_sha256 = prepared.image_to_send(prepare, upload)
    async with ledger.claim(key, absent=absent) as claim:

        async def held() -> LedgerRecord:
            record = claim.record
            if not needs_submit(record, rules):
                assert record is not None
                return record
            if record is not None and record.state in (
                SubmissionState.INTENT,
                SubmissionState.UNKNOWN,
            ):
                # An earlier send may have created a task: adopt it rather than pay again,
                # whatever the rerun options say.
                resolved = await _resolve_unknown(client, claim, record, rules)
                if resolved is not None:
                    return resolved
                attempt = record.attempt
            else:
                attempt = 1 if record is None else record.attempt + 1
            if claim.time_left() < rules.send_window_s:
                return _not_sent(record, key, "the ledger lease is too short for a whole send")
            reservation: Reservation | None = None
            if budget is not None:
                reserved = await budget.reserve(key, rules.run_id, images, ledger)
                if isinstance(reserved, str):
                    return _not_sent(record, key, reserved)
                reservation = reserved
            try:
                outcome = await record_intent_and_send(claim, record, attempt, reservation)
            except (AccountError, RecordAppeared):
                # Nothing was created: the account was refused, or another run wrote the
                # record first and nothing was written or sent here.
                if reservation is not None:
                    await reservation.release()
                raise
            except BaseException:
                # Whether it was sent is not known here: it may have been paid for.
                if reservation is not None:
                    await reservation.spend(reservation.images)
                raise
            if reservation is not None:
                await _settle_reservation(reservation, outcome, key, rules.run_id)
            return outcome

        async def record_intent_and_send(
            claim: LedgerClaim,
            record: LedgerRecord | None,
            attempt: int,
            reservation: Reservation | None,
        ) -> LedgerRecord:
            sent = upload_key_for(client.base_url, template_id, image_sha256, prepare)
            intent = await claim.write(
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
                    look=prepared.look,
                    claimed_by_run=rules.run_id,
                    budget_period=reservation.period if reservation is not None else None,
                )
            )
            if record is None and not rules.refresh:
                # Claimed after the intent is on record, so a concurrent claimer of the same
                # upload always finds its owner's record and never takes the upload over.
                owner = await ledger.claim_upload(sent, key)
                if owner != key and (paid := await ledger.run(ledger.read, owner)) is not None:
                    await claim.forget()
                    return paid
            try:
                receipt = await _send_while_held(
                    claim,
                    client.submit_variation(
                        image,
                        template_id,
                        request_id=intent.request_id,
                        notify_url=naming_request(notify_url, intent.request_id),
                    ),
                )
            except ClaimLost:
                # The lease could not be renewed: stop sending. Whoever claims the key next
                # finds the intent and looks its request_id up.
                return intent.model_copy(
                    update={
                        "state": SubmissionState.UNKNOWN,
                        "reason": not_collected("the ledger lease was lost mid-send"),
                    }
                )
            except (AccountError, ConnectFailed, Throttled) as exc:
                # Certainly not created: the key goes back to what it was before this send.
                await _restore(claim, record)
                if record is None:
                    await ledger.release_upload(sent, key)
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
                return await claim.write(
                    intent.model_copy(
                        update={
                            "state": SubmissionState.FINISHED,
                            "outcome": Status.REJECTED.value,
                            "reason": f"refused by the service: {exc.message}",
                        }
                    )
                )
            except HiDreamError as exc:
                # It may have reached the service and been paid for: never sent again
                # blindly (see _resolve_unknown).
                reason = not_collected(
                    exc.cause if isinstance(exc, OutcomeUnknown) else exc.message
                )
                return await claim.write(
                    intent.model_copy(update={"state": SubmissionState.UNKNOWN, "reason": reason})
                )
            return await claim.write(submitted(intent, receipt.task_id, receipt.sub_task_ids))

        try:
            return await held()
        except RecordAppeared:
            # Planned as absent, written meanwhile by another run; nothing was written or
            # sent here: decide again from the record as it is.
            return await held()


def submitted(record: LedgerRecord, task_id: str, sub_task_ids: list[str]) -> LedgerRecord:
    """The record of a send the service is known to have made a task of."""
    return record.model_copy(
        update={
            "state": SubmissionState.SUBMITTED,
            "task_id": task_id,
            "sub_task_ids": sub_task_ids,
            "reason": None,
        }
    )


async def _settle_reservation(
    reservation: Reservation, outcome: LedgerRecord, key: str, run_id: str
) -> None:
    """Spend what a send may have cost (the set size the service declared, or the
    reservation where its answer was lost), or give it back when nothing was created."""
    sent_here = outcome.key == key and outcome.claimed_by_run == run_id
    if sent_here and outcome.state is SubmissionState.SUBMITTED:
        await reservation.spend(outcome.images_paid or reservation.images)
    elif sent_here and outcome.state in (SubmissionState.UNKNOWN, SubmissionState.INTENT):
        await reservation.spend(reservation.images)
    else:  # not sent, refused, or paid under another key
        await reservation.release()


async def _send_while_held(claim: LedgerClaim, send: Awaitable[T]) -> T:
    """Await ``send``, cancelling it if the claim's hold is lost first (ClaimLost)."""
    sending = asyncio.ensure_future(send)
    lost = asyncio.ensure_future(claim.hold.lost.wait())
    try:
        await asyncio.wait({sending, lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        lost.cancel()
    if not sending.done():
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sending
        raise ClaimLost("the ledger lease was lost")
    return sending.result()


def _not_sent(record: LedgerRecord | None, key: str, why: str) -> LedgerRecord:
    base = record or LedgerRecord(
        key=key, state=SubmissionState.FINISHED, request_id="", template_id=0, source_sha256=""
    )
    return base.model_copy(
        update={
            "state": SubmissionState.FINISHED,
            "outcome": Status.FAILED.value,
            "reason": f"not submitted ({why}); a rerun tries again",
        }
    )


async def _restore(claim: LedgerClaim, previous: LedgerRecord | None) -> None:
    if previous is None:
        await claim.forget()
    else:
        await claim.write(previous)


async def _resolve_unknown(
    client: HiDreamClient, claim: LedgerClaim, record: LedgerRecord, rules: SubmitPolicy
) -> LedgerRecord | None:
    """An earlier send whose answer was lost: its task if found, None if safe to resend.

    Looked up only where the service is proven to find tasks by request_id
    (``modelset.ledger.proof``); otherwise it stays unknown unless the rerun asked to
    resend unknown sends (``--resubmit-unknown``, which may pay twice).
    """
    if client.request_id_lookup_proven:
        try:
            receipt = await client.find_submission(
                record.request_id, cause="an earlier send's answer was lost"
            )
        except HiDreamError as exc:
            log.info("looking up %s failed: %s", record.request_id, exc.message)
        else:
            if receipt is None:
                return None
            return await claim.write(submitted(record, receipt.task_id, receipt.sub_task_ids))
    if rules.resubmit_unknown and record.claimed_by_run != rules.run_id:
        return None  # asked for, of an earlier run's send: it may be paid twice
    return await claim.write(
        record.model_copy(
            update={
                "state": SubmissionState.UNKNOWN,
                "reason": record.reason
                if record.state is SubmissionState.UNKNOWN and record.reason
                else not_collected("its run stopped mid-send"),
            }
        )
    )


async def adopt_task(
    client: HiDreamClient, ledger: Ledger, record: LedgerRecord, task_id: str
) -> LedgerRecord:
    """Attach to a send whose answer was lost the task it created, as a callback naming
    its request_id or a person (``modelset settle``) tells: the service must know the task
    (by its task_id, the documented lookup); under the key's claim, only a send still
    unknown, with that same request_id, is changed. Returns the record as it then is."""
    result = await client.get_result(task_id=task_id)
    async with ledger.claim(record.key) as claim:
        current = claim.record
        if (
            current is None
            or current.request_id != record.request_id
            or current.state not in (SubmissionState.UNKNOWN, SubmissionState.INTENT)
        ):
            return current or record
        log.info(
            "send %s created task %s (named by a callback or a person)", record.request_id, task_id
        )
        sub_task_ids = [sub.sub_task_id for sub in result.sub_task_results]
        return await claim.write(submitted(current, task_id, sub_task_ids))


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
    just_sent: bool = False,
    budget: PeriodBudget | None = None,
) -> LedgerRecord | None:
    """Collect a submitted set, one collector per set.

    A batch holds the set's collection lock while it waits; with ``wait_for_others``
    False (the callback collector), a set someone is already collecting is left to them
    and None is returned. ``wakeups`` gets an event per waited task, for callbacks to set.

    ``just_sent``: this process has just submitted the set, without a callback, so no
    callback collector will come for it and no other collector has seen it finished: no
    lock is taken and the record is not read again (on a bucket, three requests fewer).
    Another run collecting it too at worst downloads the same images.
    """
    assert record.task_id is not None
    async with (
        contextlib.nullcontext(True)
        if just_sent
        else ledger.collecting(record.key, wait=wait_for_others)
    ) as held:
        if not held:
            return None
        if not just_sent:
            current = await ledger.run(ledger.read, record.key) or record
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
                budget=budget,
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
    budget: PeriodBudget | None = None,
) -> LedgerRecord:
    """Wait for a submitted set and download it into ``<out>/<item>/<template_id>/``;
    the period ``budget`` it was spent under gets back what the service did not generate."""
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
    folder = f"{item}/{record.template_id}"
    outputs, problems = await _download_set(
        client, downloads, result, record.task_id, workspace, folder
    )
    outcome, reason = _judge(result, problems)
    update: dict[str, object] = {
        "outcome": outcome.value,
        "reason": reason,
        "outputs": outputs,
        # A set whose images could not all be downloaded stays open: the next run
        # downloads again instead of paying again.
        "state": SubmissionState.SUBMITTED if problems else SubmissionState.FINISHED,
    }
    if problems:
        update["reason"] = f"{reason}; a rerun downloads them again"
    finished = await ledger.finish(record.model_copy(update=update))
    finished_here = True  # only the collector that finishes the set refunds its budget
    if finished is None:
        async with ledger.claim(record.key) as claim:
            if claim.record is not None and claim.record.task_id != record.task_id:
                # A newer attempt (--refresh, --retry-failed) owns the key now.
                return record.model_copy(update=update)
            current = claim.record
            finished_here = current is None or current.state is not SubmissionState.FINISHED
            finished = await claim.write(record.model_copy(update=update))
    if budget is not None and record.budget_period and not problems and finished_here:
        await budget.refund(record.budget_period, record.images_paid - len(result.image_urls))
    return finished


async def _download_set(
    client: HiDreamClient,
    downloads: httpx.AsyncClient,
    result: TaskResult,
    task_id: str,
    workspace: Workspace,
    folder: str,
) -> tuple[list[str], list[str]]:
    """Download a set's images into ``folder``; returns their keys and the problems."""
    store, pictures = workspace.store, workspace.pictures
    present = await off_loop(store, _claim_folder, store, folder, task_id)
    kept = workspace.kept
    thumbnails: dict[str, bytes] | None = None if store.is_local else {}
    outputs: list[str] = []
    problems: list[str] = []
    for index, sub in enumerate(result.sub_task_results, start=1):
        if not sub.succeeded:
            continue
        target = f"{folder}/{index}.jpg"
        if target in present:
            outputs.append(target)
            continue
        problem = await download_image(
            downloads, sub.image, store, target, pictures, kept, thumbnails
        )
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
            if url:
                problem = await download_image(
                    downloads, url, store, target, pictures, kept, thumbnails
                )
        if problem is None:
            outputs.append(target)
        else:
            problems.append(f"image {index}: {problem}")
    if thumbnails:
        await off_loop(
            store,
            partial(store_set_thumbnails, store, folder, thumbnails, merge=bool(present)),
        )
    return outputs, problems


def _claim_folder(store: Store, folder: str, task_id: str) -> set[str]:
    """The images already in a set's folder that came from this very task; a refreshed or
    retried set's folder is emptied of an older task's images and marked as this one's."""
    marker_key = f"{folder}/{TASK_MARKER}"
    try:
        store.create(marker_key, task_id.encode())
        return set()  # the first set here: every image is written after its marker
    except AlreadyExists:
        pass
    marker = read_or_none(store, marker_key)
    present = set(store.list(folder))
    if marker is not None and marker.data.decode().strip() == task_id:
        return present
    for stale in sorted(present):
        if stale.endswith(".jpg"):
            store.delete(stale)
    store.write(f"{folder}/{TASK_MARKER}", task_id.encode())
    return set()


async def download_image(
    downloads: httpx.AsyncClient,
    url: str,
    store: Store,
    target: str,
    pictures: SetPictures | None = None,
    kept: Path | None = None,
    thumbnails: dict[str, bytes] | None = None,
) -> str | None:
    """Download one image, verified to decode; the problem, or None when it is stored.

    On a bucket a small thumbnail of it goes to ``thumbnails``, which the caller stores
    with the rest of its set's (``report.store_set_thumbnails``), for the report to embed:
    a private bucket's images do not load in a browser; a copy goes to ``kept`` (see
    ``Workspace.kept``). The same thumbnail goes to ``pictures`` when it wants this image.
    """
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
    await off_loop(store, _store_image, store, target, response.content, pictures, kept, thumbnails)
    return None


class SetPictures:
    """Small JPEGs of the images of the sets a run's summary will show, made as each image
    arrives, from the bytes in hand, by the worker thread that stores it.

    The summary then has nothing to read back or decode at the end of the run, where that
    work (about 6 ms per set of four) would hold up the run's last moment. Bounded by the
    sets asked for (at most the summary's 200 rows, a few KB each).
    """

    def __init__(self) -> None:
        self._folders: set[str] = set()
        self.made: dict[str, bytes] = {}  # output key -> JPEG of OUTPUT_THUMBNAIL size

    def want(self, folders: Iterable[str]) -> None:
        """Sets by their folder (``<item>/<template_id>``) to make pictures of."""
        self._folders.update(folders)

    def wants(self, output: str) -> bool:
        return output.rpartition("/")[0] in self._folders


def _store_image(
    store: Store,
    target: str,
    data: bytes,
    pictures: SetPictures | None,
    kept: Path | None,
    thumbnails: dict[str, bytes] | None,
) -> None:
    keeping = pictures if pictures is not None and pictures.wants(target) else None
    if thumbnails is not None or keeping is not None:
        thumbnail = thumbnail_jpeg(io.BytesIO(data), OUTPUT_THUMBNAIL)
        if thumbnails is not None:
            thumbnails[target] = thumbnail
        if kept is not None:
            copy = kept / output_thumbnail_key(target)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(thumbnail)
        if keeping is not None:
            keeping.made[target] = thumbnail
    store.write(target, data)


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
        "ledger_key": record.key,
        "attempt": record.attempt,
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
