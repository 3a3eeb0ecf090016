"""A budget across runs: HIDREAM_BUDGET_IMAGES per day or month, in the output location."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.objects import State

from modelset.budget import Period, PeriodBudget
from modelset.doctor import check_budget
from modelset.flows.generate import generate_model_sets
from modelset.ledger import LedgerRecord, SubmissionState, open_ledger
from modelset.options import RunOptions
from modelset.sandbox import SandboxServer
from modelset.settings import Settings
from modelset.storage import open_store
from tests.conftest import (
    EngineRun,
    EngineRunner,
    SandboxFactory,
    events_caught_up,
    hidream_env,
    make_photo,
)

RUNS = 8
PHOTOS_PER_RUN = 5
LIMIT = 100


def test_a_period_starts_at_midnight_where_the_user_is() -> None:
    moment = datetime(2026, 12, 7, 20, 30, tzinfo=UTC)  # 04:30 on the 8th in Shanghai
    utc = Period.containing(moment, "day", "UTC")
    shanghai = Period.containing(moment, "day", "Asia/Shanghai")
    assert utc.name == "day-2026-12-07"
    assert utc.resets_at() == "2026-12-08 00:00 UTC"
    assert shanghai.name == "day-2026-12-08"
    assert shanghai.resets_at() == "2026-12-09 00:00 CST"
    december = Period.containing(moment, "month", "UTC")
    assert (december.name, december.resets_at()) == ("month-2026-12", "2027-01-01 00:00 UTC")


async def test_reservations_spend_give_back_and_refund(tmp_path: Path) -> None:
    store = open_store(tmp_path / "out")
    ledger = open_ledger(store)
    budget = PeriodBudget(store, limit=10)
    async with contextlib.AsyncExitStack() as senders:  # reserved while sending, as a run does
        for key in ("a" * 64, "b" * 64, "c" * 64):
            await senders.enter_async_context(ledger.claim(key))
        first = await budget.reserve("a" * 64, "run-1", 4, ledger)
        second = await budget.reserve("b" * 64, "run-1", 4, ledger)
        assert not isinstance(first, str) and not isinstance(second, str)
        refused = await budget.reserve("c" * 64, "run-1", 4, ledger)
        resets = budget.period().resets_at()
        assert refused == f"budget of 10 images per day spent; resets {resets}"
        await budget.spend(first, 4)
        await budget.release(second)  # certainly not created
        assert budget.left().left == 6
        await budget.refund(first.period, 1)  # three of the four images were generated
        assert budget.left().left == 7
        await budget.spend(first, 4)  # settling twice changes nothing
        assert budget.left().left == 7


async def test_a_dead_runs_reservation_comes_back_only_once_the_ledger_shows_it_unsent(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path / "out")
    ledger = open_ledger(store)
    budget = PeriodBudget(store, limit=8)
    unsent, sent = "d" * 64, "e" * 64
    # Two runs died holding reservations: one before its intent was on record, one after
    # its send (its intent names it, its answer never came).
    assert not isinstance(await budget.reserve(unsent, "dead-1", 4, ledger), str)
    assert not isinstance(await budget.reserve(sent, "dead-2", 4, ledger), str)
    async with ledger.claim(sent) as claim:
        await claim.write(
            LedgerRecord(
                key=sent,
                state=SubmissionState.INTENT,
                request_id="r",
                template_id=20,
                source_sha256="s",
                claimed_by_run="dead-2",
            )
        )
    # A live sender of the unsent key holds its claim: its reservation stays.
    async with ledger.claim(unsent):
        assert isinstance(await budget.reserve("f" * 64, "live", 4, ledger), str)
    # Free now, and the ledger shows no send of it: its four images come back; the sent
    # one's stay spent.
    assert not isinstance(await budget.reserve("f" * 64, "live", 4, ledger), str)
    spending = json.loads(store.read(f".modelset/budget/{budget.period().name}.json").data)
    assert spending["spent"] == 4
    assert list(spending["open"]) == [f"{'f' * 64} live"]


def batch_of(folder: Path, run: int) -> Path:
    for index in range(PHOTOS_PER_RUN):
        colour = (run * 30 % 256, index * 50 % 256, (run * 7 + index * 13) % 256)
        make_photo(folder / f"r{run}-{index}.jpg", size=(96, 128), colour=colour)
    return folder


@pytest.mark.usefixtures("prefect_server")
def test_eight_runs_at_once_never_pay_past_the_budget(
    sandbox_factory: SandboxFactory,
    tmp_path: Path,
    out_location: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Eight runs started together, each with its own five photos (160 images wanted),
    against a budget of 100: 25 sets of four are paid, the rest say why not."""
    sandbox = sandbox_factory(generation_s=0.3, images_per_set=4)
    for key, value in hidream_env(sandbox, HIDREAM_BUDGET_IMAGES=str(LIMIT)).items():
        monkeypatch.setenv(key, value)
    folders = [batch_of(tmp_path / f"in{run}", run) for run in range(RUNS)]

    async def all_at_once() -> list[State[Any]]:
        return list(
            await asyncio.gather(
                *(
                    generate_model_sets(
                        [str(folder)], [20], RunOptions(out=out_location), return_state=True
                    )
                    for folder in folders
                )
            )
        )

    states = asyncio.run(all_at_once())

    paid = len(sandbox.submissions())
    assert paid * 4 <= LIMIT, f"{paid} sets of four paid against a budget of {LIMIT}"
    assert paid == LIMIT // 4, "a set that fitted was refused"
    store = open_store(out_location)
    rows = [json.loads(line) for line in store.read("manifest.jsonl").data.splitlines()]
    assert len(rows) == RUNS * PHOTOS_PER_RUN
    refused = [row for row in rows if row["status"] == "failed"]
    assert len(refused) == RUNS * PHOTOS_PER_RUN - paid
    resets = PeriodBudget(store, limit=LIMIT).period().resets_at()
    for row in refused:
        assert row["reason"] == (
            f"not submitted (budget of {LIMIT} images per day spent; resets {resets}); "
            "a rerun tries again"
        )
    assert sum(state.is_failed() for state in states) >= 1
    period = PeriodBudget(store, limit=LIMIT).period().name
    spending = json.loads(store.read(f".modelset/budget/{period}.json").data)
    assert (spending["spent"], spending["open"]) == (LIMIT, {})
    assert asyncio.run(exhausted_events(store.url)) == 1, "one event per period, not per run"


async def exhausted_events(out: str) -> int:
    """How many modelset.budget.exhausted events the Prefect server holds for ``out``,
    once it has stored every event this process (its runs) emitted."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.events.schemas.events import ResourceSpecification

    wanted = EventFilter(
        event=EventNameFilter(name=["modelset.budget.exhausted"]),
        resource=EventResourceFilter(labels=ResourceSpecification({"modelset.out": out})),
    )
    await events_caught_up()
    async with get_client() as client:
        return len((await client.read_events(filter=wanted, limit=50)).events)


def test_a_set_refused_today_is_paid_after_the_reset(
    sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: EngineRunner
) -> None:
    for key, value in hidream_env(sandbox, HIDREAM_BUDGET_IMAGES="4").items():
        monkeypatch.setenv(key, value)
    folder = batch_of(tmp_path / "in", 0)
    out = tmp_path / "out"

    def run(**options: Any) -> EngineRun:
        return engine([str(folder)], [20], out=str(out), **options)

    resets = Period.containing(datetime.now(UTC), "day", "UTC").resets_at()
    planned = run(dry_run=True)
    assert "4 of 4 images left this day" in (planned.message or ""), planned.message
    assert not run().completed
    assert len(sandbox.submissions()) == 1
    # The next day: runs read the new day's object, and today's becomes yesterday's.
    today = next((out / ".modelset" / "budget").glob("day-*.json"))
    today.rename(today.with_name("day-2000-01-01.json"))
    assert not run().completed
    assert len(sandbox.submissions()) == 2, "one more set, and nothing paid twice"
    line = check_budget(Settings(), open_store(out))
    assert (line.ok, line.detail) == (False, f"0 of 4 images left this day (resets {resets})")
