"""The budget cap: a run never submits a task that could take its images past the cap.

A task counts as the template's set size once a submit answer has shown it (the length
of ``sub_task_ids``), and as ``HIDREAM_IMAGES_PER_SET`` until then. Room is reserved
before each submit and settled with the real count after it, so racing submits cannot
overshoot. The child runs of a sharded batch share one budget through an object in the
output location, changed only by compare-and-swap, so the cap holds for the batch as a
whole on a folder or a bucket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from functools import partial
from typing import Literal, TypeVar
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field

from modelset import layout
from modelset.ledger import Ledger, LedgerRecord, SubmissionState
from modelset.settings import Settings
from modelset.storage import Store, off_loop, read_or_none, update

T = TypeVar("T")

_PROBE_WAIT_S = 0.05


class _Tally(BaseModel):
    spent: int = 0
    reserved: int = 0
    set_sizes: dict[int, int] = Field(default_factory=dict)
    probing: dict[int, int] = Field(default_factory=dict)  # unknown-size submits in flight


class Budget:
    def __init__(
        self, cap: int | None, default_set_size: int, shared: tuple[Store, str] | None = None
    ):
        self.cap = cap
        self.default_set_size = default_set_size
        self._shared = shared
        self._tally = _Tally()

    def set_size(self, template_id: int) -> int:
        return self._transact(lambda tally: tally.set_sizes.get(template_id, self.default_set_size))

    async def reserve(self, template_id: int) -> int | None:
        """Room for one task of this template (the images reserved), or None past the cap.

        Under a cap, while a template's set size is unknown only one of its submits is in
        flight, so a set larger than assumed can overshoot by one set at most.
        """

        def attempt(tally: _Tally) -> int | bool | None:
            known = template_id in tally.set_sizes
            if not (known or self.cap is None or not tally.probing.get(template_id)):
                return False  # wait for the probing submit to settle
            size = tally.set_sizes.get(template_id, self.default_set_size)
            if self.cap is not None and tally.spent + tally.reserved + size > self.cap:
                return None
            tally.reserved += size
            if not known:
                tally.probing[template_id] = tally.probing.get(template_id, 0) + 1
            return size

        while True:
            room = await self._run(attempt)
            if room is not False:
                return None if room is None else int(room)
            await asyncio.sleep(_PROBE_WAIT_S)

    async def settle(
        self, template_id: int, reserved: int, record: LedgerRecord | None, run_id: str
    ) -> None:
        """Replace a reservation by what this run actually paid for (None: nothing)."""

        def apply(tally: _Tally) -> None:
            tally.reserved -= reserved
            if tally.probing.get(template_id):
                tally.probing[template_id] -= 1
            if record is None:
                return
            ours = record.claimed_by_run == run_id
            if record.task_id is not None and record.sub_task_ids:
                tally.set_sizes[template_id] = len(record.sub_task_ids)
                tally.spent += len(record.sub_task_ids) if ours else 0
            elif ours and record.state is SubmissionState.UNKNOWN:
                tally.spent += reserved  # its answer was lost: it may have been paid

        await self._run(apply)

    def refusal(self) -> str:
        return (
            f"budget: the cap of {self.cap} images is reached; "
            "rerun with a larger --max-images to continue"
        )

    async def _run(self, change: Callable[[_Tally], T]) -> T:
        if self._shared is None:
            return self._transact(change)
        return await off_loop(self._shared[0], self._transact, change)

    def _transact(self, change: Callable[[_Tally], T]) -> T:
        """Apply ``change`` to the tally: in memory, or to the shared one on the store
        with a compare-and-swap (retried when another run changed it first)."""
        if self._shared is None:
            return change(self._tally)
        store, key = self._shared

        def apply(data: bytes | None) -> tuple[bytes, T]:
            tally = _Tally.model_validate_json(data) if data else _Tally()
            value = change(tally)
            return tally.model_dump_json().encode(), value

        return update(store, key, apply)


BudgetPeriod = Literal["day", "month"]


@dataclass(frozen=True)
class Period:
    """One day or month of the budget, in the user's time zone."""

    kind: BudgetPeriod
    starts: datetime
    resets: datetime

    @classmethod
    def containing(cls, moment: datetime, kind: BudgetPeriod, zone: str) -> Period:
        tz = ZoneInfo(zone)
        local = moment.astimezone(tz)
        if kind == "day":
            first = local.date()
            following = first + timedelta(days=1)
        else:
            first = local.date().replace(day=1)
            following = (first + timedelta(days=32)).replace(day=1)
        return cls(
            kind,
            datetime.combine(first, time(), tzinfo=tz),
            datetime.combine(following, time(), tzinfo=tz),
        )

    @property
    def name(self) -> str:
        """``day-2026-12-07`` or ``month-2026-12``: its object in the output location."""
        day = self.starts.date().isoformat()
        return f"day-{day}" if self.kind == "day" else f"month-{day[:7]}"

    def resets_at(self) -> str:
        return self.resets.strftime("%Y-%m-%d %H:%M %Z")


class _Spending(BaseModel):
    """What one period's budget object holds: images spent, and sends reserved."""

    limit: int
    spent: int = 0
    # "<ledger key> <run id>" -> images reserved for a send not yet settled.
    open: dict[str, int] = Field(default_factory=dict)
    announced: bool = False  # modelset.budget.exhausted was emitted for this period

    @property
    def taken(self) -> int:
        return self.spent + sum(self.open.values())


@dataclass(frozen=True)
class Reservation:
    """Room held in a period's budget for one send, settled by its outcome."""

    budget: PeriodBudget = field(repr=False, compare=False)
    period: str
    entry: str
    images: int

    async def spend(self, images: int) -> None:
        await self.budget.spend(self, images)

    async def release(self) -> None:
        await self.budget.release(self)


@dataclass(frozen=True)
class BudgetLeft:
    limit: int
    left: int
    period: Period

    def describe(self) -> str:
        return (
            f"{self.left} of {self.limit} images left this {self.period.kind} "
            f"(resets {self.period.resets_at()})"
        )


class PeriodBudget:
    """``HIDREAM_BUDGET_IMAGES`` per day or month, across every run sharing the output location.

    One object per period, ``.modelset/budget/<period>.json``, changed only by
    compare-and-swap through the storage seam, so concurrent runs, workers and
    deployments never reserve more than the limit together. A send reserves what it may
    cost while it holds the ledger's claim on its key, before it is sent; it is then
    spent at the set size the service declared (or at the reservation, when the answer
    was lost: it may have been paid), or given back when the send certainly created
    nothing; collecting the set refunds what the service did not generate.

    A reservation left by a run that died is given back only once the ledger shows its
    set unsent (the key's claim is free and its record holds no send of that run), and
    spent when it shows it sent: never on a guess.
    """

    def __init__(
        self,
        store: Store,
        *,
        limit: int,
        kind: BudgetPeriod = "day",
        zone: str = "UTC",
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.limit = limit
        self.kind: BudgetPeriod = kind
        self.zone = zone
        self._now = now
        self.exhausted: Callable[[BudgetLeft], Awaitable[None]] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, store: Store) -> PeriodBudget | None:
        """The budget across runs ``HIDREAM_BUDGET_*`` ask for, if any."""
        if settings.budget_images is None:
            return None
        return cls(
            store,
            limit=settings.budget_images,
            kind=settings.budget_period,
            zone=settings.budget_timezone,
        )

    def period(self) -> Period:
        return Period.containing(self._now(), self.kind, self.zone)

    def refusal(self, period: Period) -> str:
        return f"budget of {self.limit} images per {self.kind} spent; resets {period.resets_at()}"

    def left(self) -> BudgetLeft:
        period = self.period()
        blob = read_or_none(self.store, self._key(period.name))
        taken = _Spending.model_validate_json(blob.data).taken if blob is not None else 0
        return BudgetLeft(self.limit, max(0, self.limit - taken), period)

    async def reserve(
        self, key: str, run_id: str, images: int, ledger: Ledger
    ) -> Reservation | str:
        """Room for one send of ``key`` by ``run_id`` (held under the key's claim), or the
        reason it does not fit. A refusal first gives back what dead runs left reserved."""
        period = self.period()
        entry = f"{key} {run_id}"
        reserved = await self._reserve(period, entry, images)
        if reserved is None:
            await self._give_back_abandoned(period, ledger, exclude=entry)
            reserved = await self._reserve(period, entry, images)
        if reserved is None:
            if await self._change(period.name, _announce) and self.exhausted is not None:
                await self.exhausted(BudgetLeft(self.limit, 0, period))
            return self.refusal(period)
        return reserved

    async def spend(self, reservation: Reservation, images: int) -> None:
        """The send may have been paid for: ``images`` are spent."""
        await self._change(reservation.period, partial(_settle, reservation.entry, images))

    async def release(self, reservation: Reservation) -> None:
        """The send certainly created nothing: its reservation is given back."""
        await self._change(reservation.period, partial(_settle, reservation.entry, 0))

    async def refund(self, period: str, images: int) -> None:
        """A collected set generated ``images`` fewer than were spent for it."""
        if images > 0:
            await self._change(period, partial(_refund, images))

    async def _reserve(self, period: Period, entry: str, images: int) -> Reservation | None:
        def add(spending: _Spending) -> bool:
            if entry in spending.open:
                return True
            if spending.taken + images > spending.limit:
                return False
            spending.open[entry] = images
            return True

        fits = await self._change(period.name, add)
        return Reservation(self, period.name, entry, images) if fits else None

    async def _give_back_abandoned(self, period: Period, ledger: Ledger, *, exclude: str) -> None:
        blob = await off_loop(self.store, read_or_none, self.store, self._key(period.name))
        if blob is None:
            return
        for entry, images in _Spending.model_validate_json(blob.data).open.items():
            if entry == exclude:
                continue
            key, _, run_id = entry.partition(" ")
            async with ledger.locks.hold(key, wait=False) as hold:
                if hold is None:
                    continue  # its sender holds the key: the reservation is live
                record = await ledger.run(ledger.read, key)
                sent = record is not None and record.claimed_by_run == run_id
                paid = (record.images_paid or images) if record is not None and sent else 0
                await self._change(period.name, partial(_settle, entry, paid))

    async def _change(self, period: str, change: Callable[[_Spending], T]) -> T:
        def apply(data: bytes | None) -> tuple[bytes, T]:
            spending = _Spending.model_validate_json(data) if data else _Spending(limit=self.limit)
            spending.limit = self.limit  # the setting in force decides what fits
            value = change(spending)
            return spending.model_dump_json().encode(), value

        return await off_loop(self.store, update, self.store, self._key(period), apply)

    @staticmethod
    def _key(period: str) -> str:
        return f"{layout.BUDGET}/{period}.json"


def _settle(entry: str, images: int, spending: _Spending) -> None:
    if spending.open.pop(entry, None) is not None:
        spending.spent += images


def _refund(images: int, spending: _Spending) -> None:
    spending.spent = max(0, spending.spent - images)


def _announce(spending: _Spending) -> bool:
    """Whether this refusal is the period's first (its event is emitted once)."""
    first = not spending.announced
    spending.announced = True
    return first
