"""Review in a deployment run: suspend for a person's decision, then publish and announce.

A top-level deployment run with ``options.review`` records the sets it waits on in the
output location (``modelset review OUT`` finds it there), then suspends with
:class:`ReviewInput` as its Resume form: the process exits, no worker is held. On resume
Prefect runs the flow again from the top; the flow sees its own waiting record, skips
the batch (nothing is prepared, paid or downloaded again) and comes back here, where
the suspension hands over the decision instead of suspending again.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx
from prefect import get_run_logger
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.flow_runs import asuspend_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL
from prefect.states import Completed, Failed
from pydantic import Field

from modelset import layout
from modelset.labels import labelling_from_settings
from modelset.report import ManifestRow, Status, read_manifest
from modelset.review import (
    Decided,
    Decision,
    Review,
    Waiting,
    all_waiting,
    decide,
    decisions_of,
    forget_waiting,
    latest_decisions,
    mark_announced,
    publish,
    publish_target,
    read_waiting,
    record_in_report,
    record_waiting,
    undecidable,
)
from modelset.settings import Settings
from modelset.storage import Store, locate
from modelset.tasks.artifacts import _markdown_image, picture_cells, set_cell
from modelset.tasks.credentials import read_secret_block

PUBLISHED_EVENT = "modelset.set.published"
REVIEW_PAUSE_KEY = "modelset-review"
FORM_THUMBNAIL_ROWS = 24
"""Sets shown with thumbnails in the Resume form; the others are listed by key."""
FORM_THUMBNAIL = (42, 56)  # the form's text box is narrow: a set of four fits at this size


class ReviewInput(RunInput):
    """The Resume form of a run waiting for review. Keys are ``<item>/<template_id>``."""

    # The UI renders descriptions as markdown: no angle brackets in them.
    approve_all: bool = Field(
        default=False, description="Approve every pending set not named under reject."
    )
    approve: list[str] = Field(
        default_factory=list,
        description="Sets to approve and publish, each as item/template_id (e.g. sku-1/20).",
    )
    reject: list[str] = Field(
        default_factory=list,
        description="Sets to decline, never published, each as item/template_id.",
    )
    note: str = Field(default="", description="Kept with every decision of this round.")
    reviewer: str = Field(default="", description="Who decided: kept in the manifest and events.")


def can_wait_for_review() -> bool:
    """Whether this run can suspend: a deployment run that is nobody's subflow (Prefect
    cannot suspend a subflow; its parent waits instead)."""
    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    return run is not None and run.deployment_id is not None and run.parent_task_run_id is None


def pending_message(count: int, out: str) -> str:
    return f"{count} sets wait for review: decide them with `modelset review {out}`"


async def resume_review(store: Store, out: str) -> State[Any] | None:
    """Finish the review this run suspended for, if it did (it runs again after its
    resume); None for a run that never suspended."""
    run_id = flow_run.get_id()
    waiting = read_waiting(store, str(run_id)) if run_id else None
    if waiting is None:
        return None
    return await _wait_and_publish(store, out, waiting, description=None)


async def review_in_run(
    store: Store, out: str, pending: list[Decision], *, batch_message: str, batch_failed: bool
) -> State[Any]:
    """Suspend this run until a person decides ``pending`` (the process exits here; the
    resumed run finishes in :func:`resume_review`)."""
    run_id = str(flow_run.get_id())
    waiting = Waiting(
        flow_run_id=run_id,
        flow_run_name=flow_run.get_name() or "",
        api_url=PREFECT_API_URL.value(),
        sets=[(decision.ledger_key, decision.attempt) for decision in pending],
        set_keys=[decision.set_key for decision in pending],
        batch_message=batch_message,
        batch_failed=batch_failed,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    await anyio.to_thread.run_sync(record_waiting, store, waiting)
    get_run_logger().info(
        "%s; %d sets wait for review: decide them in this run's Resume form, or with "
        "`modelset review %s`",
        batch_message,
        len(pending),
        out,
    )
    description = await anyio.to_thread.run_sync(form_description, store, pending, out)
    return await _wait_and_publish(store, out, waiting, description=description)


async def _wait_and_publish(
    store: Store, out: str, waiting: Waiting, *, description: str | None
) -> State[Any]:
    log = get_run_logger()
    known = await anyio.to_thread.run_sync(decisions_of, store, waiting)
    pending = [decision for decision in known if decision.review is Review.PENDING]
    form = ReviewInput.with_initial_data(description=description)
    answer = await asuspend_flow_run(
        wait_for_input=form, timeout=Settings().review_timeout, key=REVIEW_PAUSE_KEY
    )
    # Only a resumed run gets here: the first call above exits the process.
    decided: Decided = await anyio.to_thread.run_sync(
        lambda: decide(
            store,
            pending,
            approve=answer.approve,
            reject=answer.reject,
            approve_all=answer.approve_all,
            note=answer.note,
            reviewer=answer.reviewer,
            known=known,
        )
    )
    decided.approved = await publish_approved(store, out, decided.approved)
    await anyio.to_thread.run_sync(record_in_report, store, decided.decided)
    await anyio.to_thread.run_sync(forget_waiting, store, waiting.flow_run_id)
    message = review_message(decided) + f"; report: {locate(store, layout.INDEX_HTML)}"
    if decided.problems:
        log.warning(message)
    else:
        log.info(message)
    if waiting.batch_failed:
        # The review does not hide what failed before it: the run fails as it would have.
        return Failed(message=f"{message}; before the review: {waiting.batch_message}")
    return Completed(message=message)


def review_message(decided: Decided) -> str:
    reviewer = next((d.reviewer for d in decided.decided if d.reviewer), "")
    published = sum(1 for decision in decided.approved if decision.published)
    parts = [
        f"review{f' by {reviewer}' if reviewer else ''}: {len(decided.approved)} approved "
        f"({published} published), {len(decided.declined)} declined, "
        f"{len(decided.still_pending)} still pending"
    ]
    if decided.problems:
        parts.append(
            "not decided: " + "; ".join(f"{key} ({why})" for key, why in decided.problems.items())
        )
    return "; ".join(parts)


async def publish_approved(
    store: Store, out: str, approved: list[Decision], *, publish_to: str | None = None
) -> list[Decision]:
    """Publish each approved set not published yet and announce it; returns the
    decisions as recorded now. A set published before is announced again only if its
    event was not sent (the event id is the same, so Prefect keeps one)."""
    if not approved:
        return []
    labelling = await labelling_from_settings(Settings(), read_secret_block)
    recorded = []
    for decision in approved:
        target = publish_target(store, decision, publish_to)
        decision, _ = await anyio.to_thread.run_sync(publish, store, decision, target, labelling)
        if not decision.event_sent and announce(decision, out):
            await anyio.to_thread.run_sync(mark_announced, store, decision)
        recorded.append(decision)
    return recorded


def published_event(decision: Decision, out: str) -> dict[str, Any]:
    """The ``modelset.set.published`` event of a set: one id per set and attempt."""
    return {
        "event": PUBLISHED_EVENT,
        "resource": {"prefect.resource.id": f"modelset.set.{decision.item}.{decision.template_id}"},
        "payload": {
            "item": decision.item,
            "template_id": decision.template_id,
            "out": out,
            "published": decision.published,
            "reviewer": decision.reviewer,
        },
        "id": uuid.uuid5(
            uuid.NAMESPACE_URL, f"modelset-published:{decision.ledger_key}:{decision.attempt}"
        ),
    }


def announce(decision: Decision, out: str) -> bool:
    """Emit the set's published event; False when there is no Prefect API to take it."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    if not PREFECT_API_URL.value():
        return False
    logging.getLogger(EventsWorker.__name__).setLevel(logging.ERROR)
    return emit_event(**published_event(decision, out)) is not None


def form_description(store: Store, pending: list[Decision], out: str) -> str:
    """The Resume form's text: each set to decide with its input and outputs, small."""
    rows = {row.task_id: row for row in read_manifest(store) if row.task_id}
    shown: list[ManifestRow] = []
    for decision in pending[:FORM_THUMBNAIL_ROWS]:
        row = rows.get(decision.task_id) or ManifestRow(
            source=decision.source,
            item=decision.item,
            template_id=decision.template_id,
            status=Status.SUCCEEDED,
        )
        shown.append(row.model_copy(update={"outputs": decision.outputs}))
    cells = picture_cells(store, shown, FORM_THUMBNAIL)
    lines = [
        f"**{len(pending)} sets to decide** in `{out}`. Name sets under approve or reject "
        "(reject wins), or turn on approve_all. Approved sets are published; declined ones "
        "can be paid again with `--regenerate-declined`.",
        "",
        "| set | input | generated |",
        "|---|---|---|",
    ]
    for decision, row in zip(pending, shown, strict=False):
        inputs = _markdown_image("input", cells.get(row.thumbnail or ""))
        outputs = _markdown_image(f"{len(decision.outputs)} generated", cells.get(set_cell(row)))
        lines.append(f"| `{decision.set_key}` | {inputs} | {outputs} |")
    rest = pending[FORM_THUMBNAIL_ROWS:]
    if rest:
        lines.append("\nAlso pending (thumbnails in the report): ")
        lines.append(", ".join(f"`{decision.set_key}`" for decision in rest))
    return "\n".join(lines)


@dataclass
class ShellReview:
    """What ``modelset review OUT --approve ...`` did."""

    decided: Decided = field(default_factory=Decided)
    resumed: dict[str, list[str]] = field(default_factory=dict)  # run name -> keys it decides
    events_sent: bool = True


async def review_from_shell(
    store: Store,
    *,
    approve: list[str],
    reject: list[str],
    approve_all: bool,
    note: str,
    reviewer: str,
    publish_to: str | None,
) -> ShellReview:
    """Decide pending sets from the shell. Sets a suspended deployment run waits on are
    handed to it (it is resumed with the same decision and publishes them); the others
    are decided and published here."""
    out = store.url
    known = await anyio.to_thread.run_sync(latest_decisions, store)
    pending = [decision for decision in known if decision.review is Review.PENDING]
    pending_keys = {decision.set_key for decision in pending}
    result = ShellReview()
    # Named keys that cannot be decided are refused before anything is handed on.
    refused = undecidable(approve, reject, pending_keys, known)
    approve = [key for key in approve if key not in refused]
    reject = [key for key in reject if key not in refused]
    handed: set[str] = set()
    for waiting in await anyio.to_thread.run_sync(all_waiting, store):
        keys = set(waiting.set_keys) & pending_keys
        named = keys & set(approve + reject)
        if not keys or not (named or approve_all):
            continue
        run_input = {
            "approve_all": approve_all,
            "approve": sorted(keys & set(approve)),
            "reject": sorted(keys & set(reject)),
            "note": note,
            "reviewer": reviewer,
        }
        if await _resume(waiting, run_input):
            result.resumed[waiting.flow_run_name or waiting.flow_run_id] = sorted(
                keys if approve_all else named
            )
            handed |= keys
        else:  # the run ended (timed out, cancelled): the sets are decided here
            await anyio.to_thread.run_sync(forget_waiting, store, waiting.flow_run_id)
    here = [decision for decision in pending if decision.set_key not in handed]
    decided = await anyio.to_thread.run_sync(
        lambda: decide(
            store,
            here,
            approve=[key for key in approve if key not in handed],
            reject=[key for key in reject if key not in handed],
            approve_all=approve_all,
            note=note,
            reviewer=reviewer,
            known=known,
        )
    )
    decided.problems = {**refused, **decided.problems}
    decided.approved = await publish_approved(store, out, decided.approved, publish_to=publish_to)
    result.decided = decided
    result.events_sent = bool(PREFECT_API_URL.value())
    await anyio.to_thread.run_sync(record_in_report, store, decided.decided)
    return result


async def _resume(waiting: Waiting, run_input: dict[str, Any]) -> bool:
    """Resume a suspended run with this input; False when it no longer waits."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import temporary_settings

    api_url = PREFECT_API_URL.value() or waiting.api_url
    if not api_url:
        return False
    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            try:
                run = await client.read_flow_run(uuid.UUID(waiting.flow_run_id))
            except (ObjectNotFound, httpx.HTTPError):
                return False
            if run.state is None or not run.state.is_paused():
                return False
            answer = await client.resume_flow_run(run.id, run_input=run_input)
            return answer.status is SetStateStatus.ACCEPT
