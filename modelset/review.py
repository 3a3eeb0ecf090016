"""Review before publishing: a person's decision on each generated set, and publishing
the approved ones (no Prefect here; ``flows/review.py`` suspends runs for the decisions).

A set under review has one decision per ledger key and attempt, in the output location
(``.modelset/review/sets/<ledger key>/<attempt>.json``): ``pending`` when a review was
asked for, then ``approved`` or ``declined``, each change a compare-and-swap, so two
people deciding at once never both win. A new attempt of a set that was reviewed
(``--refresh``, ``--regenerate-declined``) starts pending again.

An approved set is copied to ``<out>/published/<item>/<template_id>/<n>.jpg`` (or under
the run's ``publish_to``), complete or not at all: on a folder it is assembled beside
its place and renamed into it; on a bucket the marker ``published.json`` is written
last, so a reader takes a set only once its marker is there. The decision records what
was published, so deciding again or rerunning publishes nothing twice.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field

from modelset import layout
from modelset.labels import Labelling, Reviewed
from modelset.ledger import request_id_for
from modelset.options import LabelPosition
from modelset.report import (
    ManifestRow,
    ReviewState,
    Status,
    read_manifest,
    update_report,
)
from modelset.storage import (
    AlreadyExists,
    PreconditionFailed,
    Store,
    locate,
    open_store,
    read_many,
    read_or_none,
)


class Review(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DECLINED = "declined"


class Decision(BaseModel):
    """What was decided about one attempt of one set, and what publishing it wrote."""

    set_key: str  # <item>/<template_id>: how people name the set
    item: str
    template_id: int
    source: str
    ledger_key: str
    attempt: int
    task_id: str
    outputs: list[str]  # the set's images in the output location
    review: Review = Review.PENDING
    note: str = ""
    reviewer: str = ""
    publish_to: str | None = None  # where approving publishes; None: <out>/published
    visible_label: str | None = None  # drawn on the published copies, when set
    visible_label_position: LabelPosition = "bottom-right"
    published: list[str] = Field(default_factory=list)  # where it was published, once done
    event_sent: bool = False
    created: str = ""
    decided: str = ""


def set_key(item: str, template_id: int) -> str:
    return f"{item}/{template_id}"


def decision_key(ledger_key: str, attempt: int) -> str:
    return f"{layout.REVIEW_SETS}/{ledger_key}/{attempt}.json"


def waiting_key(flow_run_id: str) -> str:
    return f"{layout.REVIEW_WAITING}/{flow_run_id}.json"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _attempts(store: Store) -> dict[str, list[int]]:
    """Every ledger key that has decisions, with their attempts (one listing)."""
    found: dict[str, list[int]] = {}
    for name in store.list(layout.REVIEW_SETS):
        ledger_key, _, file = name.removeprefix(f"{layout.REVIEW_SETS}/").partition("/")
        with contextlib.suppress(ValueError):
            found.setdefault(ledger_key, []).append(int(file.removesuffix(".json")))
    return found


def _read(store: Store, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], Decision]:
    names = {key: decision_key(*key) for key in keys}
    blobs = read_many(store, list(names.values()))
    return {
        key: Decision.model_validate_json(blob.data)
        for key, name in names.items()
        if (blob := blobs[name]) is not None
    }


def latest_decisions(store: Store) -> list[Decision]:
    """The decision on the latest reviewed attempt of every set in the location."""
    attempts = _attempts(store)
    return list(_read(store, [(key, max(found)) for key, found in attempts.items()]).values())


def reviewable(row: ManifestRow) -> bool:
    """Only a succeeded set that owns its images is reviewed (a duplicate row shows the
    decision on the set it points at)."""
    return (
        row.status is Status.SUCCEEDED
        and bool(row.outputs)
        and row.task_id is not None
        and row.ledger_key is not None
        and row.attempt is not None
    )


def mark_pending(
    store: Store,
    rows: list[ManifestRow],
    *,
    asked: bool,
    publish_to: str | None,
    visible_label: str | None = None,
    visible_label_position: LabelPosition = "bottom-right",
) -> list[Decision]:
    """Give every reviewable set of ``rows`` its decision for its current attempt, where
    it has none: pending when a review was ``asked`` for, or when an earlier attempt of
    the set was reviewed (a new attempt starts pending). Shows every decision in the
    rows' review fields; returns the pending ones."""
    attempts = _attempts(store)
    if not attempts and not asked:
        return []  # nothing in this location was ever reviewed: no reads at all
    sets = {
        (row.ledger_key, row.attempt): row
        for row in rows
        if reviewable(row) and row.ledger_key is not None and row.attempt is not None
    }
    present = {(key, attempt) for key, attempt in sets if attempt in attempts.get(key, [])}
    for (ledger_key, attempt), row in sets.items():
        if (ledger_key, attempt) in present or not (asked or ledger_key in attempts):
            continue
        item = _owner_item(row)
        decision = Decision(
            set_key=set_key(item, row.template_id),
            item=item,
            template_id=row.template_id,
            source=row.source,
            ledger_key=ledger_key,
            attempt=attempt,
            task_id=row.task_id or "",
            outputs=row.outputs,
            publish_to=publish_to,
            visible_label=visible_label,
            visible_label_position=visible_label_position,
            created=_now(),
        )
        with contextlib.suppress(AlreadyExists):  # another run marked it first
            store.create(decision_key(ledger_key, attempt), decision.model_dump_json().encode())
        present.add((ledger_key, attempt))
    decisions = _read(store, present).values()
    show(rows, decisions)
    pending = [decision for decision in decisions if decision.review is Review.PENDING]
    return sorted(pending, key=lambda decision: decision.set_key)


def _owner_item(row: ManifestRow) -> str:
    """The item whose folder holds the set (a duplicate row names another item)."""
    return row.outputs[0].split("/", 1)[0] if row.outputs else row.item


def show(rows: Iterable[ManifestRow], decisions: Iterable[Decision]) -> list[ManifestRow]:
    """Fill the rows' review fields from the decisions on their sets; returns the rows
    that changed."""
    by_task = {decision.task_id: decision for decision in decisions}
    changed = []
    for row in rows:
        decision = by_task.get(row.task_id or "")
        if decision is None:
            continue
        review: ReviewState = decision.review.value
        values = (review, decision.note, decision.reviewer, decision.published)
        if (row.review, row.review_note, row.reviewer, row.published) != values:
            row.review, row.review_note, row.reviewer, row.published = values
            changed.append(row)
    return changed


def pending_among(store: Store, task_ids: Iterable[str]) -> list[Decision]:
    """The pending decisions on these tasks' sets, in a stable order."""
    wanted = set(task_ids)
    found = [
        decision
        for decision in latest_decisions(store)
        if decision.task_id in wanted and decision.review is Review.PENDING
    ]
    return sorted(found, key=lambda decision: decision.set_key)


@dataclass
class Decided:
    """What one round of decisions did."""

    approved: list[Decision] = field(default_factory=list)
    declined: list[Decision] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)  # key named -> why undecided
    still_pending: list[Decision] = field(default_factory=list)

    @property
    def decided(self) -> list[Decision]:
        return self.approved + self.declined


def decide(
    store: Store,
    pending: list[Decision],
    *,
    approve: Iterable[str] = (),
    reject: Iterable[str] = (),
    approve_all: bool = False,
    note: str = "",
    reviewer: str = "",
    known: Iterable[Decision] = (),
) -> Decided:
    """Record decisions on ``pending`` sets, named ``<item>/<template_id>``.

    ``approve_all`` approves every pending set not in ``reject``. A key in both lists,
    or one that is not pending (``known`` tells an already decided set from an unknown
    key), is named in ``problems`` and stays as it was.
    """
    approve, reject = list(dict.fromkeys(approve)), list(dict.fromkeys(reject))
    by_key = {decision.set_key: decision for decision in pending}
    result = Decided(problems=undecidable(approve, reject, set(by_key), known))
    wanted: dict[str, Review] = {}
    for key in by_key:
        if key in result.problems:
            continue
        if key in reject:
            wanted[key] = Review.DECLINED
        elif key in approve or approve_all:
            wanted[key] = Review.APPROVED
    for key, review in wanted.items():
        decision = by_key[key]
        updated = _swap(
            store,
            decision,
            {"review": review, "note": note, "reviewer": reviewer, "decided": _now()},
            only_if_pending=True,
        )
        if updated is None:
            result.problems[key] = "decided by someone else meanwhile"
            continue
        (result.approved if review is Review.APPROVED else result.declined).append(updated)
    result.still_pending = [
        d for key, d in by_key.items() if key not in wanted or key in result.problems
    ]
    return result


def undecidable(
    approve: Iterable[str], reject: Iterable[str], pending: set[str], known: Iterable[Decision]
) -> dict[str, str]:
    """The named keys that cannot be decided, each with why: named to approve and to
    reject, or not among the ``pending`` keys (``known`` tells a decided set from an
    unknown key)."""
    approve, reject = list(dict.fromkeys(approve)), list(dict.fromkeys(reject))
    decided_before = {d.set_key: d for d in known if d.review is not Review.PENDING}
    problems = {}
    for key in [*approve, *[k for k in reject if k not in approve]]:
        if key in approve and key in reject:
            problems[key] = "named to approve and to reject"
        elif key not in pending:
            earlier = decided_before.get(key)
            problems[key] = (
                f"not pending: already {earlier.review.value}"
                if earlier is not None
                else "not a pending set of this review"
            )
    return problems


def _swap(
    store: Store, decision: Decision, changes: dict[str, object], *, only_if_pending: bool = False
) -> Decision | None:
    """Change a decision by compare-and-swap; None when it is no longer pending (asked
    with ``only_if_pending``) or kept changing."""
    name = decision_key(decision.ledger_key, decision.attempt)
    for _ in range(5):
        blob = read_or_none(store, name)
        if blob is None:
            return None
        current = Decision.model_validate_json(blob.data)
        if only_if_pending and current.review is not Review.PENDING:
            return None
        updated = current.model_copy(update=changes)
        try:
            store.swap(name, updated.model_dump_json().encode(), blob.etag)
        except PreconditionFailed:
            continue
        return updated
    return None


def publish_target(store: Store, decision: Decision, publish_to: str | None = None) -> Store:
    """Where an approved set is published: ``publish_to``, the run's, or <out>/published."""
    location = publish_to or decision.publish_to
    if location:
        return open_store(location)
    return open_store(locate(store, layout.PUBLISHED))


def publish(
    store: Store, decision: Decision, target: Store, labelling: Labelling
) -> tuple[Decision, bool]:
    """Copy an approved set under ``target``, complete or not at all, each image labelled
    by ``labelling`` (with the run's visible label, if it asked for one); returns the
    decision as recorded and whether this call published it (False: done before)."""
    assert decision.review is Review.APPROVED
    if decision.published:
        return decision, False
    copy = _Copier(decision, labelling)
    folder = set_key(decision.item, decision.template_id)
    names = [f"{folder}/{Path(output).name}" for output in decision.outputs]
    marker = json.dumps(
        {
            "item": decision.item,
            "template_id": decision.template_id,
            "source": decision.source,
            "task_id": decision.task_id,
            "images": [Path(name).name for name in names],
            "reviewer": decision.reviewer,
            "note": decision.note,
            "published": _now(),
        },
        indent=1,
    ).encode()
    if target.local_path(folder) is not None:
        _publish_into_folder(store, decision.outputs, target, folder, marker, copy)
    else:
        _publish_into_bucket(store, decision.outputs, target, folder, marker, copy)
    published = [locate(target, name) for name in names]
    updated = _swap(store, decision, {"published": published})
    if updated is None:
        raise PreconditionFailed(f"the decision on {decision.set_key} kept changing")
    return updated, True


class _Copier:
    """Copies one output of a set to where it is published, labelled on the way."""

    def __init__(self, decision: Decision, labelling: Labelling) -> None:
        self.labelling = labelling
        self.reviewed = Reviewed(
            task_id=decision.task_id,
            request_id=request_id_for(decision.ledger_key, decision.attempt),
            template_id=decision.template_id,
            decision=decision.review.value,
            reviewer=decision.reviewer,
            note=decision.note,
        )
        self.visible = (
            labelling.visible(decision.visible_label, decision.visible_label_position)
            if decision.visible_label
            else None
        )

    def __call__(self, store: Store, output: str, target: Store, name: str) -> None:
        path = store.local_path(output)
        stored = path.read_bytes() if path is not None else store.read(output).data
        target.write(name, self.labelling.published(stored, self.reviewed, self.visible))


_Copy = Callable[[Store, str, Store, str], None]


def _publish_into_folder(
    store: Store, outputs: list[str], target: Store, folder: str, marker: bytes, copy: _Copy
) -> None:
    """Assemble the set beside its place, then rename it in: a reader sees the old set
    or the whole new one, never part of it."""
    final = target.local_path(folder)
    assert final is not None
    staging_key = f"{folder}.{secrets.token_hex(4)}.partial"
    staging = target.local_path(staging_key)
    assert staging is not None
    try:
        for output in outputs:
            copy(store, output, target, f"{staging_key}/{Path(output).name}")
        target.write(f"{staging_key}/{layout.PUBLISHED_MARKER}", marker)
        replaced = final.with_name(f".{final.name}.{secrets.token_hex(4)}.old")
        if final.exists():
            final.rename(replaced)
        staging.rename(final)
        shutil.rmtree(replaced, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish_into_bucket(
    store: Store, outputs: list[str], target: Store, folder: str, marker: bytes, copy: _Copy
) -> None:
    """Images first, the marker last; an earlier publication's marker goes first."""
    target.delete(f"{folder}/{layout.PUBLISHED_MARKER}")
    keep = {f"{folder}/{Path(output).name}" for output in outputs}
    for output in outputs:
        copy(store, output, target, f"{folder}/{Path(output).name}")
    for stale in target.list(folder):
        if stale not in keep:
            target.delete(stale)
    target.write(f"{folder}/{layout.PUBLISHED_MARKER}", marker)


def mark_announced(store: Store, decision: Decision) -> None:
    _swap(store, decision, {"event_sent": True})


def record_in_report(store: Store, decisions: Iterable[Decision]) -> str | None:
    """Show decisions in the manifest and the sheet; returns the sheet, None if unchanged."""
    rows = read_manifest(store)
    changed = show(rows, decisions)
    if not changed:
        return None
    return update_report(store, changed)


class Waiting(BaseModel):
    """A suspended deployment run waiting for decisions on sets of this location."""

    flow_run_id: str
    flow_run_name: str = ""
    api_url: str | None = None
    sets: list[tuple[str, int]]  # (ledger key, attempt) of the sets it waits on
    set_keys: list[str]
    batch_message: str = ""  # how the batch before the review ended
    batch_failed: bool = False  # ... and whether that fails the run, review or not
    created: str = ""


def record_waiting(store: Store, waiting: Waiting) -> None:
    store.write(waiting_key(waiting.flow_run_id), waiting.model_dump_json().encode())


def read_waiting(store: Store, flow_run_id: str) -> Waiting | None:
    blob = read_or_none(store, waiting_key(flow_run_id))
    return None if blob is None else Waiting.model_validate_json(blob.data)


def all_waiting(store: Store) -> list[Waiting]:
    names = store.list(layout.REVIEW_WAITING)
    blobs = read_many(store, names)
    return [Waiting.model_validate_json(b.data) for b in blobs.values() if b is not None]


def forget_waiting(store: Store, flow_run_id: str) -> None:
    store.delete(waiting_key(flow_run_id))


def decisions_of(store: Store, waiting: Waiting) -> list[Decision]:
    """The current decisions on the sets a run waits on."""
    found = _read(store, waiting.sets)
    return sorted(found.values(), key=lambda decision: decision.set_key)


def declined_attempts(store: Store) -> dict[str, int]:
    """The ledger keys whose latest reviewed attempt was declined, with that attempt."""
    return {
        decision.ledger_key: decision.attempt
        for decision in latest_decisions(store)
        if decision.review is Review.DECLINED
    }
