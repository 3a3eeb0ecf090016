"""``scan_inbox``: the scheduled flow that processes only what is new in a folder or bucket.

A photo counts as processed once its outcome is final (succeeded, rejected, or a set
that was paid for and failed); those are remembered per source and never reported or
retried again, so a night with nothing new ends Completed. Anything else (skipped by
the budget, outcome unknown, never sent) comes up again the next night.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.states import Completed, Failed

from modelset import layout
from modelset.flows.generate import (
    UNATTENDED_NEEDS_CAP,
    WORKING_DIRECTORY_SET,
    generate_model_sets,
    output_location,
    runs_in_throwaway_folder,
    started_unattended,
)
from modelset.flows.review import can_wait_for_review, resume_review, review_in_run
from modelset.ledger import Ledger, SubmissionState, open_ledger
from modelset.options import RunOptions
from modelset.report import ManifestRow, Status, read_manifest
from modelset.review import pending_among
from modelset.settings import Settings
from modelset.sources import NoImagesFound, SourceItem, discover
from modelset.storage import (
    Store,
    bucket_scheme,
    is_relative_location,
    is_remote,
    locate,
    open_store,
    read_or_none,
    update,
)


@flow(name="scan-inbox", persist_result=False, log_prints=False)
async def scan_inbox(
    inbox: str, template_ids: list[int], options: RunOptions | None = None
) -> State[Any]:
    """Generate sets for the photos in ``inbox`` that were not processed before.

    Args:
        inbox: a folder, glob or bucket prefix (s3://..., gs://...).
        template_ids: the templates every new photo gets.
        options: as for generate-model-sets; max_images (or HIDREAM_MAX_IMAGES) is
            required when a schedule starts the run.
    """
    options = options or RunOptions()
    settings = Settings()
    log = get_run_logger()
    if started_unattended() and options.max_images is None and settings.max_images is None:
        return Failed(message=UNATTENDED_NEEDS_CAP)
    location = output_location(
        options.out or settings.output_dir, setting="options.out (or HIDREAM_OUTPUT_DIR)"
    )
    if is_relative_location(inbox) and runs_in_throwaway_folder():
        return Failed(
            message=f"inbox is the relative folder {inbox!r}: a worker runs this deployment in "
            "a temporary folder. Set an absolute folder or a bucket prefix, or name a working "
            f"directory for deployment runs ({WORKING_DIRECTORY_SET}=/absolute/folder)"
        )
    store = open_store(location)
    if options.review and can_wait_for_review():
        resumed = await resume_review(store, store.url)
        if resumed is not None:
            return resumed
    seen_blob = read_or_none(store, layout.INBOX_SEEN)
    seen: dict[str, str] = json.loads(seen_blob.data) if seen_blob else {}
    if bucket_scheme(inbox) is None and not Path(inbox).expanduser().exists():
        return Failed(
            message=f"the inbox {inbox} does not exist (the inbox parameter): create the "
            "folder or point the parameter at the folder or bucket prefix photos arrive in"
        )
    sources = [item.source for item in _photos_in(inbox)]
    new = [source for source in sources if seen.get(source) != _fingerprint(source)]
    if not new:
        report = locate(store, layout.INDEX_HTML)
        return Completed(
            message=f"nothing new in {inbox} ({len(sources)} photos seen before); report: {report}"
        )
    log.info("%d new photos of %d in %s", len(new), len(sources), inbox)
    state: State[Any] = await generate_model_sets(
        new,
        template_ids,
        options.model_copy(update={"out": location}),
        return_state=True,
    )
    new_rows = _remember_final(store, new, template_ids)
    message = state.message or ""
    if options.review and can_wait_for_review():
        pending = pending_among(store, [row.task_id for row in new_rows if row.task_id])
        if pending:
            return await review_in_run(
                store,
                store.url,
                pending,
                batch_message=message,
                batch_failed=not state.is_completed(),
            )
    # A new state, not the subflow's: returning that would become "1/1 states failed".
    if state.is_completed():
        return Completed(message=message)
    return Failed(message=message)


def _remember_final(store: Store, new: list[str], template_ids: list[int]) -> list[ManifestRow]:
    """Remember the new photos whose outcome is final for every template, for later scans
    to skip; returns the manifest's rows of the new photos."""
    ledger = open_ledger(store)
    outcomes: dict[str, dict[int, bool]] = {source: {} for source in new}
    new_rows = [row for row in read_manifest(store) if row.source in outcomes]
    for row in new_rows:
        if row.template_id in template_ids:
            outcomes[row.source][row.template_id] = _final(row, ledger)
    finished = {
        source: _fingerprint(source)
        for source, finals in outcomes.items()
        if len(finals) == len(set(template_ids)) and all(finals.values())
    }

    def remember(current: bytes | None) -> tuple[bytes, None]:
        # Merged, not overwritten: two scans of one inbox keep both their memories.
        merged = {**(json.loads(current) if current else {}), **finished}
        return json.dumps(merged, indent=0).encode(), None

    update(store, layout.INBOX_SEEN, remember)
    return new_rows


def _photos_in(inbox: str) -> list[SourceItem]:
    """The photos in the inbox; none (not an error) for an empty folder or prefix."""
    try:
        return discover([inbox], allow_file_urls=False)
    except NoImagesFound:
        return []


def _fingerprint(source: str) -> str:
    """What must change for a source to count as new: its size and time, where known."""
    if is_remote(source):
        return "remote"
    stat = Path(source).stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _final(row: ManifestRow, ledger: Ledger) -> bool:
    if row.status in (Status.SUCCEEDED, Status.REJECTED):
        return True
    if row.status is not Status.FAILED or row.task_id is None:
        return False
    record = ledger.find_by_task(row.task_id)
    return record is not None and record.state is SubmissionState.FINISHED
