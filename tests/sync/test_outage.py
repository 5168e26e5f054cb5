"""The vendor outage breaker on a real database, with an in-process connector and frozen time."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.connectors.base import (
    ContactPayload,
    Fail,
    Retry,
    RowResult,
    Transient,
    Unreachable,
)
from crmsync.enums import Crm
from crmsync.settings import Settings
from crmsync.sync import control
from crmsync.sync.worker import Hooks, Worker
from crmsync.tables import crm_control, crm_sync_state, sync_events
from tests.conftest import add_contacts
from tests.sync.fakes import FakeConnector, FrozenClock, all_ok
from tests.sync.test_engine import select_for, states

HUB = Crm.hubspot


def down(batch: Sequence[ContactPayload]) -> list[RowResult]:
    return [Retry("HubSpot answered 503: service unavailable", 503) for _ in batch]


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def pauses() -> list[tuple[Crm, control.PauseKind, str]]:
    return []


@pytest.fixture
def hooks(pauses: list[tuple[Crm, control.PauseKind, str]]) -> Hooks:
    async def on_pause(crm: Crm, kind: control.PauseKind, reason: str) -> None:
        pauses.append((crm, kind, reason))

    return Hooks(on_pause=[on_pause])


@pytest.fixture
def hub_settings(settings: Settings) -> Settings:
    settings.hubspot.sync_scheduler_batch_size = 2
    settings.hubspot.sync_retry_delay_seconds = 300
    settings.hubspot.sync_max_retries = 3
    return settings


def make_worker(
    engine: AsyncEngine, settings: Settings, clock: FrozenClock, hooks: Hooks | None = None
) -> tuple[Worker, FakeConnector]:
    fake = FakeConnector(HUB)
    worker = Worker(
        engine, settings, [HUB], connectors={HUB: fake}, clock=clock, hooks=hooks, rand=lambda: 0.5
    )
    return worker, fake


@pytest.fixture
async def pair(
    engine: AsyncEngine, hub_settings: Settings, clock: FrozenClock, hooks: Hooks
) -> AsyncIterator[tuple[Worker, FakeConnector]]:
    yield make_worker(engine, hub_settings, clock, hooks)


async def breaker(engine: AsyncEngine) -> control.Control:
    async with engine.connect() as conn:
        return (await control.load(conn))[HUB]


async def settle(worker: Worker) -> None:
    """Wait for the lanes (and probes) the runner started."""
    runner = worker.runners[HUB]
    while runner.lanes:
        await asyncio.gather(*runner.lanes)


async def cycle(worker: Worker) -> float:
    """One turn of the CRM's loop, and the batches it started, to the end."""
    runner = worker.runners[HUB]
    runner.gate.control_read = -10.0  # read the shared state afresh, as a second later
    wait = await runner._cycle()
    await settle(worker)
    return wait


async def test_five_failed_batches_in_a_row_open_the_breaker_and_stop_spending_attempts(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    pair: tuple[Worker, FakeConnector],
    clock: FrozenClock,
    pauses: list[tuple[Crm, control.PauseKind, str]],
) -> None:
    worker, fake = pair
    runner = worker.runners[HUB]
    ids = await add_contacts(client, 14)
    await select_for(client, ids)
    fake.script = down
    for _ in range(4):
        assert await runner.run_once() == 2
    assert (await breaker(engine)).outage_failures == 4 and not (await breaker(engine)).in_outage
    spent = {cid for cid, r in (await states(engine)).items() if r["attempts"] == 1}
    assert len(spent) == 8  # before the breaker opens, failures count as always

    assert await runner.run_once() == 2  # the fifth: the breaker opens
    ctl = await breaker(engine)
    assert ctl.in_outage and ctl.outage_since == clock.now
    assert ctl.next_probe_at == clock.later(30)
    assert ctl.outage_reason == "HubSpot answered 503: service unavailable"
    fifth = [
        cid for cid in ids if cid not in spent and (await states(engine))[cid]["attempts"] == 0
    ]
    held = [
        r for cid, r in (await states(engine)).items() if r["next_attempt_at"] == clock.later(30)
    ]
    assert len(held) == 2 and all(r["attempts"] == 0 for r in held)
    assert all(r["processing_error"].startswith("HubSpot answered 503") for r in held)
    assert len(fifth) == 6  # two held back by the outage, four never tried
    assert pauses == [(HUB, control.PauseKind.outage, "HubSpot answered 503: service unavailable")]

    # Paused: the loop claims nothing until the probe is due.
    pushes = len(fake.pushes)
    assert await cycle(worker) == pytest.approx(5.0)  # min(probe in 30 s, idle interval)
    assert len(fake.pushes) == pushes
    async with engine.connect() as conn:
        outcomes = [r.outcome for r in await conn.execute(select(sync_events.c.outcome))]
    assert outcomes.count("retry") == 8 and outcomes.count("unavailable") == 2


async def test_a_bad_batch_among_good_ones_counts_as_today(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    pair: tuple[Worker, FakeConnector],
) -> None:
    worker, fake = pair
    runner = worker.runners[HUB]
    ids = await add_contacts(client, 24)
    await select_for(client, ids)
    for n in range(12):
        fake.script = down if n % 3 else all_ok  # two bad batches, one good, four times
        runner.gate.control_read = -10.0
        assert await runner.run_once() == 2
    ctl = await breaker(engine)
    assert not ctl.in_outage and ctl.outage_failures == 2
    rows = (await states(engine)).values()
    assert sum(1 for r in rows if r["sync_status"] == "Complete") == 8
    assert sum(1 for r in rows if r["attempts"] == 1 and r["sync_status"] == "Queued") == 16


async def test_answers_of_the_vendor_reset_the_count(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    pair: tuple[Worker, FakeConnector],
) -> None:
    """A batch the vendor refused row by row (a 4xx) is an answer: the vendor is up."""
    worker, fake = pair
    runner = worker.runners[HUB]
    ids = await add_contacts(client, 20)
    await select_for(client, ids)
    for n in range(10):
        if n % 4 == 3:
            fake.script = lambda b: [Fail("invalid email", 400) for _ in b]
        else:
            fake.script = down
        runner.gate.control_read = -10.0
        await runner.run_once()
    assert not (await breaker(engine)).in_outage


async def test_probes_double_their_interval_and_one_success_ends_the_outage(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    pair: tuple[Worker, FakeConnector],
    clock: FrozenClock,
    pauses: list[tuple[Crm, control.PauseKind, str]],
) -> None:
    worker, fake = pair
    runner = worker.runners[HUB]
    ids = await add_contacts(client, 10)
    await select_for(client, ids)
    fake.error = Transient("HubSpot request failed: ReadTimeout")
    for _ in range(5):
        await runner.run_once()
    opened = clock.now
    assert (await breaker(engine)).next_probe_at == opened + dt.timedelta(seconds=30)

    clock.advance(30)
    for expected in (60, 120, 240, 480, 600, 600, 600):
        before = len(fake.pushes)
        await cycle(worker)
        assert len(fake.pushes) == before + 1  # one probe...
        assert len(fake.pushes[-1]) == 1  # ...of one contact
        ctl = await breaker(engine)
        wait = (ctl.next_probe_at - clock.now).total_seconds()
        assert wait == expected
        clock.advance(wait - 1)
        await cycle(worker)  # nothing goes out before the next probe is due
        assert len(fake.pushes) == before + 1
        clock.advance(1)
    assert (await breaker(engine)).outage_probes == 7

    rows = (await states(engine)).values()
    assert all(r["sync_status"] != "Error" for r in rows)
    # Only the four batches before the breaker opened spent an attempt (two rows each).
    assert sum(r["attempts"] for r in rows) == 8

    fake.error = None
    await cycle(worker)  # the probe goes through: the outage is over
    ctl = await breaker(engine)
    assert not ctl.in_outage and ctl.outage_failures == 0 and ctl.next_probe_at is None
    while await runner.run_once():
        pass
    rows = (await states(engine)).values()
    due_later = [r for r in rows if r["sync_status"] == "Queued"]
    # Only the rows that spent an attempt before the outage wait for their backoff.
    assert all(r["attempts"] == 1 for r in due_later)
    assert sum(1 for r in rows if r["sync_status"] == "Complete") == 10 - len(due_later)
    assert [kind for _, kind, _ in pauses] == [control.PauseKind.outage]


async def test_only_one_of_several_workers_sends_the_probe(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    hub_settings: Settings,
    clock: FrozenClock,
) -> None:
    workers = [make_worker(engine, hub_settings, clock) for _ in range(4)]
    ids = await add_contacts(client, 20)
    await select_for(client, ids)
    for _, fake in workers:
        fake.script = down
    for worker, _ in workers[:3]:
        await worker.runners[HUB].run_once()
    for worker, _ in workers[:2]:
        await worker.runners[HUB].run_once()
    assert (await breaker(engine)).in_outage
    before = sum(len(fake.pushes) for _, fake in workers)
    for _round in range(3):
        clock.advance(3600)  # every probe due; all four race for it at once
        for worker, _ in workers:
            worker.runners[HUB].gate.control_read = -10.0
        await asyncio.gather(*(worker.runners[HUB]._cycle() for worker, _ in workers))
        await asyncio.gather(*(settle(worker) for worker, _ in workers))
        sent = sum(len(fake.pushes) for _, fake in workers)
        assert sent == before + 1
        before = sent


async def test_a_request_never_sent_spends_no_attempt(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    pair: tuple[Worker, FakeConnector],
    clock: FrozenClock,
) -> None:
    worker, fake = pair
    runner = worker.runners[HUB]
    ids = await add_contacts(client, 2)
    await select_for(client, ids)
    async with engine.begin() as conn:  # on its last attempt: one spent would be Error
        await conn.execute(update(crm_sync_state).values(attempts=3))
    fake.error = Unreachable("HubSpot request failed: ConnectError: [Errno 111] refused")
    await runner.run_once()
    for row in (await states(engine)).values():
        assert row["sync_status"] == "Queued" and row["attempts"] == 3
        assert row["next_attempt_at"] == clock.later(30)  # back soon, as nothing was sent
        assert "refused" in row["processing_error"]
    assert (await breaker(engine)).outage_failures == 1  # still counts towards an outage


async def test_a_probe_with_nothing_due_gives_the_probe_back(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    pair: tuple[Worker, FakeConnector],
    clock: FrozenClock,
) -> None:
    worker, fake = pair
    ids = await add_contacts(client, 10)
    await select_for(client, ids)
    fake.script = down
    for _ in range(5):
        await worker.runners[HUB].run_once()
    async with engine.begin() as conn:  # an operator reset the rows meanwhile
        await conn.execute(update(crm_sync_state).values(sync_status="New", next_attempt_at=None))
    clock.advance(30)
    pushes = len(fake.pushes)
    await cycle(worker)
    assert len(fake.pushes) == pushes
    ctl = await breaker(engine)
    assert ctl.in_outage and ctl.probe_owner is None and ctl.next_probe_at == clock.now


async def test_the_outage_is_kept_in_the_shared_control_row(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    pair: tuple[Worker, FakeConnector],
    clock: FrozenClock,
) -> None:
    worker, fake = pair
    ids = await add_contacts(client, 10)
    await select_for(client, ids)
    fake.script = down
    for _ in range(5):
        await worker.runners[HUB].run_once()
    async with engine.connect() as conn:
        row = (await conn.execute(select(crm_control))).one()
    assert row.crm == "hubspot" and row.outage_since == clock.now
    assert row.outage_failures == 5 and row.outage_probes == 0
    # A fresh worker (another process, another host) sees it and claims nothing.
    other, other_fake = make_worker(engine, worker.settings, clock)
    assert await other.runners[HUB].gate.pause_left(clock.now) == pytest.approx(5.0)
    await cycle(other)
    assert other_fake.pushes == []
