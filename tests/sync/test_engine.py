"""The sync engine against a real database (SQLite and PostgreSQL) and an in-process connector."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.connectors.base import (
    AuthFailed,
    ContactPayload,
    Fail,
    Misconfigured,
    Ok,
    RateLimited,
    Retry,
    RowResult,
    Transient,
)
from crmsync.enums import Crm
from crmsync.ops import repository as ops_repository
from crmsync.settings import Settings
from crmsync.sync import queue
from crmsync.sync.lease import _renewal
from crmsync.sync.state import Outcome, RowUpdate
from crmsync.sync.tuning import process_tuning
from crmsync.sync.worker import Worker
from crmsync.tables import crm_control, crm_sync_state, sync_events
from tests.conftest import add_contacts
from tests.sync.fakes import FakeConnector, FrozenClock, idle, until

SELECT = "/api/v3/contacts/crm/select"
HUB = Crm.hubspot


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def fake() -> FakeConnector:
    return FakeConnector()


@pytest.fixture
async def worker(
    engine: AsyncEngine, settings: Settings, fake: FakeConnector, clock: FrozenClock
) -> AsyncIterator[Worker]:
    settings.hubspot.sync_retry_delay_seconds = 60
    settings.hubspot.sync_max_retries = 3
    yield Worker(engine, settings, [HUB], connectors={HUB: fake}, clock=clock, rand=lambda: 0.5)


async def select_for(client: httpx.AsyncClient, ids: list[str], **extra: object) -> None:
    r = await client.put(SELECT, json={"contact_ids": ids, "crms": ["hubspot"], **extra})
    assert r.status_code == 200, r.text


async def states(engine: AsyncEngine) -> dict[str, dict[str, object]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(crm_sync_state).where(crm_sync_state.c.crm == "hubspot"))
        return {str(r.contact_id): dict(r._mapping) for r in rows}


async def event_rows(engine: AsyncEngine) -> list[dict[str, object]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(sync_events).order_by(sync_events.c.id))
        return [dict(r._mapping) for r in rows]


async def test_claim_leases_disjoint_batches_and_skips_rows_not_due(
    client: httpx.AsyncClient, engine: AsyncEngine, clock: FrozenClock
) -> None:
    ids = await add_contacts(client, 5)
    async with engine.begin() as conn:  # selections are stamped with wall-clock time
        await conn.execute(update(crm_sync_state).values(next_attempt_at=clock.now))
    await select_for(client, ids)
    async with engine.begin() as conn:
        await conn.execute(update(crm_sync_state).values(next_attempt_at=clock.now))
        # One row waits for a retry in the future; it must not be claimed.
        await conn.execute(
            update(crm_sync_state)
            .where(crm_sync_state.c.contact_id == uuid.UUID(ids[4]))
            .values(sync_status="Queued", next_attempt_at=clock.now + dt.timedelta(minutes=5))
        )
    lease = clock.now + dt.timedelta(seconds=30)
    a = await queue.claim(engine, HUB, 2, "w1", "tok-a", clock.now, lease)
    b = await queue.claim(engine, HUB, 10, "w2", "tok-b", clock.now, lease)
    c = await queue.claim(engine, HUB, 10, "w3", "tok-c", clock.now, lease)
    assert len(a) == 2 and len(b) == 2 and c == []
    assert {r.contact_id for r in a}.isdisjoint({r.contact_id for r in b})
    rows = await states(engine)
    held = [r for r in rows.values() if r["sync_status"] == "Processing"]
    assert len(held) == 4
    assert {r["lease_token"] for r in held} == {"tok-a", "tok-b"}
    assert all(r["lease_expires_at"] == lease and r["next_attempt_at"] == lease for r in held)
    assert rows[ids[4]]["sync_status"] == "Queued"
    assert a[0].payload.email.endswith("@example.com")


async def test_the_due_count_holds_what_a_claim_would_take(
    client: httpx.AsyncClient, engine: AsyncEngine, clock: FrozenClock
) -> None:
    """Health's due count: waiting rows due now and leases that ran out, read through different
    indexes (ops/repository.py), never rows in flight under a live lease or retries to come."""
    ids = await add_contacts(client, 4)
    await select_for(client, ids)
    start = clock.now - dt.timedelta(minutes=1)
    async with engine.begin() as conn:
        await conn.execute(update(crm_sync_state).values(next_attempt_at=start))
        await conn.execute(
            update(crm_sync_state)
            .where(crm_sync_state.c.contact_id == uuid.UUID(ids[3]))
            .values(sync_status="Queued", next_attempt_at=clock.now + dt.timedelta(hours=1))
        )
    lease = clock.now + dt.timedelta(seconds=30)
    held = await queue.claim(engine, HUB, 2, "w1", "tok-a", clock.now, lease)
    assert len(held) == 2

    async def due(at: dt.datetime) -> ops_repository.Due:
        async with engine.connect() as conn:
            return (await ops_repository.due(conn, at))[HUB.value]

    assert await due(clock.now) == ops_repository.Due(1, start)  # the lease is live
    after = lease + dt.timedelta(seconds=1)
    assert await due(after) == ops_repository.Due(3, start)  # the worker died
    async with engine.begin() as conn:
        await conn.execute(
            update(crm_sync_state)
            .where(crm_sync_state.c.sync_status == "Selected")
            .values(sync_status="Complete")
        )
    assert await due(after) == ops_repository.Due(2, lease)


async def test_expired_lease_is_reclaimed_and_the_stale_write_refused(
    client: httpx.AsyncClient, engine: AsyncEngine, clock: FrozenClock
) -> None:
    ids = await add_contacts(client, 3)
    await select_for(client, ids)
    now = clock.now + dt.timedelta(minutes=1)
    first = await queue.claim(engine, HUB, 10, "dead", "tok-1", now, now + dt.timedelta(seconds=5))
    assert len(first) == 3
    # The first worker is killed here, between claim and record. Before its lease ends, nobody
    # else may take the rows; after it, another worker does.
    assert await queue.claim(engine, HUB, 10, "w2", "tok-2", now, now) == []
    later = now + dt.timedelta(seconds=6)
    second = await queue.claim(engine, HUB, 10, "w2", "tok-2", later, later + dt.timedelta(60))
    assert {r.state_id for r in second} == {r.state_id for r in first}

    def ok(token_rows: list[queue.Claimed]) -> list[RowUpdate]:
        return [
            RowUpdate(r.state_id, r.contact_id, Outcome.ok, 0, external_id="x") for r in token_rows
        ]

    timing = queue.Timing("w", later, 1)
    done = await queue.record(engine, HUB, "tok-2", ok(second), later, timing)
    assert done.applied == 3 and done.lost == []
    # The resurrected first worker reports late: nothing of it is applied.
    stale = await queue.record(engine, HUB, "tok-1", ok(first), later, timing)
    assert stale.applied == 0 and len(stale.lost) == 3
    assert all(r["sync_status"] == "Complete" for r in (await states(engine)).values())
    messages = [e["message"] for e in await event_rows(engine)]
    assert sum(1 for m in messages if m and m.startswith(queue.NOT_APPLIED)) == 3


async def test_renew_extends_only_the_leases_named_and_reads_no_whole_table(
    client: httpx.AsyncClient, engine: AsyncEngine, clock: FrozenClock
) -> None:
    ids = await add_contacts(client, 4)
    await select_for(client, ids)
    now = clock.now + dt.timedelta(minutes=1)
    lease = now + dt.timedelta(seconds=30)
    kept = await queue.claim(engine, HUB, 2, "w1", "tok-a", now, lease)
    other = await queue.claim(engine, HUB, 2, "w2", "tok-b", now, lease)
    later = lease + dt.timedelta(minutes=5)
    assert await queue.renew(engine, {HUB: ["tok-a"], Crm.brevo: []}, later) == 2
    assert await queue.renew(engine, {HUB: []}, later) == 0
    rows = {r["id"]: r for r in (await states(engine)).values()}
    assert all(rows[r.state_id]["lease_expires_at"] == later for r in kept)
    assert all(rows[r.state_id]["next_attempt_at"] == later for r in kept)
    assert all(rows[r.state_id]["lease_expires_at"] == lease for r in other)
    if engine.dialect.name == "sqlite":
        # Renewals run every few seconds while the write lock is held: through an index.
        async with engine.connect() as conn:

            def plan(sync_conn: Connection) -> list[str]:
                stmt = _renewal("sqlite", ["hubspot"], ["tok-a"], later)
                compiled = stmt.compile(sync_conn, compile_kwargs={"literal_binds": True})
                found = sync_conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}").all()
                return [str(row[-1]) for row in found]

            steps = await conn.run_sync(plan)
        assert steps and not any(step.startswith("SCAN") for step in steps), steps


async def test_a_claim_takes_expired_leases_first_then_waiting_rows(
    client: httpx.AsyncClient, engine: AsyncEngine, clock: FrozenClock
) -> None:
    ids = await add_contacts(client, 5)
    await select_for(client, ids[:2])
    now = clock.now + dt.timedelta(minutes=1)
    dead = await queue.claim(engine, HUB, 10, "dead", "tok-1", now, now + dt.timedelta(seconds=5))
    assert len(dead) == 2
    await select_for(client, ids[2:])  # three more wait, selected after the dead worker's claim
    later = now + dt.timedelta(seconds=6)
    until = later + dt.timedelta(seconds=60)
    first = await queue.claim(engine, HUB, 3, "w2", "tok-2", later, until)
    # Both expired leases, then the oldest waiting row, up to the limit.
    assert {r.state_id for r in dead} <= {r.state_id for r in first} and len(first) == 3
    rest = await queue.claim(engine, HUB, 10, "w2", "tok-3", later, until)
    assert len(rest) == 2
    assert {str(r.contact_id) for r in first + rest} == set(ids)
    assert await queue.claim(engine, HUB, 10, "w2", "tok-4", later, until) == []


async def test_a_claim_marks_exactly_its_rows_processing_under_its_lease(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    clock: FrozenClock,
) -> None:
    ids = await add_contacts(client, 5)
    await select_for(client, ids)
    until = clock.later(60)
    claimed = await queue.claim(engine, HUB, 3, "w1", "tok-1", clock.now, until)
    held = {str(r.contact_id) for r in claimed}
    assert len(held) == 3
    rows = await states(engine)
    for contact_id in held:
        row = rows[contact_id]
        assert (row["sync_status"], row["processing_status"]) == ("Processing", "Processing")
        assert (row["lease_owner"], row["lease_token"]) == ("w1", "tok-1")
        assert row["lease_expires_at"] == row["next_attempt_at"] == until
        assert row["last_attempt_at"] == row["updated_at"] == clock.now
    for contact_id in set(ids) - held:
        assert rows[contact_id]["sync_status"] == "Selected"
        assert rows[contact_id]["lease_token"] is None


async def test_every_outcome_kind_is_written_behind_the_lease(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    clock: FrozenClock,
) -> None:
    # On SQLite a batch's outcomes go in one statement over json_each, or (older SQLite, and
    # PostgreSQL) one parameter set per row: both must write the same thing.
    ids = await add_contacts(client, 4)
    await select_for(client, ids)
    claimed = await queue.claim(engine, HUB, 10, "w", "tok", clock.now, clock.later(60))
    by_contact = {str(r.contact_id): r for r in claimed}
    retry_at = clock.later(300)
    updates = [
        RowUpdate(by_contact[ids[0]].state_id, by_contact[ids[0]].contact_id, Outcome.ok, 0,
                  http_status=200, external_id="ext-0", synced_hash="h" * 32),
        RowUpdate(by_contact[ids[1]].state_id, by_contact[ids[1]].contact_id, Outcome.error, 1,
                  "Invalid email", 400),
        RowUpdate(by_contact[ids[2]].state_id, by_contact[ids[2]].contact_id, Outcome.retry, 2,
                  "HubSpot answered 502", 502, next_attempt_at=retry_at),
        RowUpdate(by_contact[ids[3]].state_id, by_contact[ids[3]].contact_id, Outcome.unchanged,
                  0),
    ]  # fmt: skip
    timing = queue.Timing("w", clock.now, 7)
    recorded = await queue.record(engine, HUB, "tok", updates, clock.now, timing)
    assert recorded.applied == 4 and recorded.lost == []
    rows = await states(engine)
    assert [rows[i]["sync_status"] for i in ids] == ["Complete", "Error", "Queued", "Complete"]
    assert rows[ids[0]]["external_id"] == "ext-0" and rows[ids[0]]["synced_hash"] == "h" * 32
    assert rows[ids[0]]["synced_at"] == clock.now
    assert rows[ids[1]]["processing_error"] == "Invalid email" and rows[ids[1]]["attempts"] == 1
    assert rows[ids[2]]["next_attempt_at"] == retry_at and rows[ids[2]]["attempts"] == 2
    assert all(rows[i]["lease_token"] is None for i in ids)
    history = {str(e["contact_id"]): e for e in await event_rows(engine)}
    assert history[ids[1]]["outcome"] == "error" and history[ids[1]]["http_status"] == 400
    assert history[ids[2]]["attempt"] == 2 and history[ids[2]]["message"] == "HubSpot answered 502"
    assert all(e["crm"] == "hubspot" and e["duration_ms"] == 7 for e in history.values())
    assert all(e["worker"] == "w" and e["created_at"] == clock.now for e in history.values())
    # A second report under the same token changes nothing: the lease is gone.
    again = await queue.record(engine, HUB, "tok", updates, clock.now, timing)
    assert again.applied == 0 and len(again.lost) == 4


async def test_a_claim_carries_every_field_as_stored(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    clock: FrozenClock,
) -> None:
    # SQLite reads a claimed batch as one JSON array (or, older SQLite, row by row): text with
    # quotes and non-ASCII, booleans, nulls and UUIDs must come through either way unchanged.
    domain, page, job = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    full = {
        "name": 'Zoë "Z" O\'Brien \\ 日本', "phone_number": "+44 20 7946 0958",
        "email_type": "CORPORATE", "context": "line one\nline two\t\u2028", "source_url":
        "https://example.com/a?b=1&c=%22", "domain_id": str(domain), "page_id": str(page),
        "source_job_id": str(job),
    }  # fmt: skip
    expected: dict[str, dict[str, object]] = {}
    for has_gmail in (True, False, None):
        for cid in await add_contacts(client, 1, has_gmail=has_gmail, **full):
            expected[cid] = {**full, "has_gmail": has_gmail}
    for cid in await add_contacts(client, 1):  # every optional field left empty
        expected[cid] = {key: None for key in (*full, "has_gmail")}
    ids = list(expected)
    await select_for(client, ids)
    async with engine.begin() as conn:
        await conn.execute(
            update(crm_sync_state)
            .where(crm_sync_state.c.contact_id == uuid.UUID(ids[0]))
            .values(external_id="ext-9", attempts=2, synced_hash="s" * 32)
        )
    claimed = await queue.claim(engine, HUB, 10, "w", "tok", clock.now, clock.later(60))
    assert sorted(str(c.contact_id) for c in claimed) == sorted(ids)
    for row in claimed:
        cid, got = str(row.contact_id), row.payload
        want = expected[cid]
        assert got.contact_id == uuid.UUID(cid) and got.email.endswith("@example.com")
        assert (got.name, got.phone_number, got.email_type) == (
            want["name"], want["phone_number"], want["email_type"]
        )  # fmt: skip
        assert (got.context, got.source_url) == (want["context"], want["source_url"])
        assert got.has_gmail is want["has_gmail"]
        for key in ("domain_id", "page_id", "source_job_id"):
            value = getattr(got, key)
            assert value is None if want[key] is None else value == uuid.UUID(str(want[key]))
            assert value is None or isinstance(value, uuid.UUID)
        first = cid == ids[0]
        assert got.external_id == ("ext-9" if first else None)
        assert (row.attempts, row.synced_hash) == ((2, "s" * 32) if first else (0, None))


async def test_success_stores_the_vendor_id_and_resets_attempts(
    client: httpx.AsyncClient, engine: AsyncEngine, worker: Worker, fake: FakeConnector
) -> None:
    ids = await add_contacts(client, 3)
    await select_for(client, ids)
    async with engine.begin() as conn:
        await conn.execute(update(crm_sync_state).values(attempts=2))
    assert await worker.runners[HUB].run_once() == 3
    rows = await states(engine)
    for cid in ids:
        row = rows[cid]
        assert row["sync_status"] == "Complete" and row["processing_status"] == "Complete"
        assert row["attempts"] == 0 and row["lease_token"] is None
        assert str(row["external_id"]).startswith("ext-") and row["synced_hash"]
    contact = (await client.get(f"/api/v3/contacts/{ids[0]}")).json()
    assert contact["hubspot_contact_id"].startswith("ext-")
    assert contact["sync"]["hubspot"]["synced_at"] is not None
    history = (await client.get(f"/api/v3/contacts/{ids[0]}/sync-history")).json()
    assert [h["outcome"] for h in history] == ["ok"] and history[0]["crm"] == "hubspot"


async def test_backoff_then_max_retries_error(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    worker: Worker,
    fake: FakeConnector,
    clock: FrozenClock,
) -> None:
    ids = await add_contacts(client, 1)
    await select_for(client, ids)
    clock.advance(3600)  # past the selection's wall-clock time
    fake.script = lambda batch: [Retry("HTTP 503 from HubSpot", 503) for _ in batch]
    runner = worker.runners[HUB]
    expected_delays = [60, 120, 240]  # base·2^n, jitter fixed at 0 by rand() = 0.5
    for attempt, delay in enumerate(expected_delays, start=1):
        assert await runner.run_once() == 1
        row = (await states(engine))[ids[0]]
        assert row["sync_status"] == "Queued" and row["processing_status"] == "Queued"
        assert row["attempts"] == attempt
        assert row["next_attempt_at"] == clock.now + dt.timedelta(seconds=delay)
        assert row["processing_error"] == "HTTP 503 from HubSpot"
        assert await runner.run_once() == 0  # not due yet
        clock.advance(delay)
    assert await runner.run_once() == 1
    row = (await states(engine))[ids[0]]
    assert row["sync_status"] == "Error" and row["processing_status"] == "Error"
    assert row["processing_error"] == "Max retries exceeded. Last error: HTTP 503 from HubSpot"
    assert row["attempts"] == 4
    clock.advance(10**6)
    assert await runner.run_once() == 0  # an Error row is never picked up again by itself
    contact = (await client.get(f"/api/v3/contacts/{ids[0]}")).json()
    assert contact["retry_count"] == 4 and contact["last_failed_crm"] == "hubspot"


async def test_linear_backoff_with_jitter_bounds(settings: Settings) -> None:
    from crmsync.sync.backoff import Backoff

    linear = Backoff(300, exponential=False, random=lambda: 0.5)
    assert [linear.delay(n).total_seconds() for n in (1, 2, 3)] == [300, 600, 900]
    low = Backoff(100, random=lambda: 0.0).delay(1).total_seconds()
    high = Backoff(100, random=lambda: 1.0).delay(1).total_seconds()
    assert (low, high) == (80, 120)  # ±20%
    assert Backoff(3600).delay(40) == dt.timedelta(hours=24)  # capped


async def test_permanent_failure_is_error_at_once(
    client: httpx.AsyncClient, engine: AsyncEngine, worker: Worker, fake: FakeConnector
) -> None:
    ids = await add_contacts(client, 2)
    await select_for(client, ids)
    bad = (await client.get(f"/api/v3/contacts/{ids[0]}")).json()["email"]
    fake.script = lambda batch: [
        Fail("Email address is invalid", 400) if c.email == bad else Ok("1", 200) for c in batch
    ]
    await worker.runners[HUB].run_once()
    rows = await states(engine)
    assert rows[ids[0]]["sync_status"] == "Error" and rows[ids[0]]["attempts"] == 1
    assert rows[ids[0]]["processing_error"] == "Email address is invalid"
    assert rows[ids[1]]["sync_status"] == "Complete"
    failed = await client.get("/api/v3/contacts", params={"hubspot_sync_status": "Error"})
    assert [c["id"] for c in failed.json()] == [ids[0]]


async def test_transient_batch_failure_backs_off(
    client: httpx.AsyncClient, engine: AsyncEngine, worker: Worker, fake: FakeConnector
) -> None:
    ids = await add_contacts(client, 2)
    await select_for(client, ids)
    fake.error = Transient("timed out after 30 s")
    await worker.runners[HUB].run_once()
    for row in (await states(engine)).values():
        assert row["sync_status"] == "Queued" and row["attempts"] == 1
        assert row["processing_error"] == "timed out after 30 s"


async def test_rate_limit_spends_no_attempt_and_pauses_the_crm(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    worker: Worker,
    fake: FakeConnector,
    clock: FrozenClock,
) -> None:
    ids = await add_contacts(client, 3)
    await select_for(client, ids)
    clock.advance(3600)
    first = (await client.get(f"/api/v3/contacts/{ids[0]}")).json()["email"]
    fake.error = RateLimited(10, "HubSpot rate limit reached")
    runner = worker.runners[HUB]
    await runner.run_once()
    rows = await states(engine)
    assert all(r["sync_status"] == "Queued" and r["attempts"] == 0 for r in rows.values())
    assert all(r["next_attempt_at"] == clock.now + dt.timedelta(seconds=10) for r in rows.values())
    assert all(r["processing_error"] is None for r in rows.values())
    async with engine.connect() as conn:
        ctl = (await conn.execute(select(crm_control))).one()
    assert ctl.crm == "hubspot" and ctl.pause_kind == "rate_limit"
    assert ctl.paused_until == clock.now + dt.timedelta(seconds=10)
    assert await runner.gate.pause_left(clock.now) == pytest.approx(5.0)  # min(left, interval)

    # A later 429 after some rows were answered: those are recorded, the rest released.
    clock.advance(11)

    def answered_then_limited(batch: Sequence[ContactPayload]) -> list[RowResult]:
        answered: list[RowResult | None] = [
            Ok("42", 200) if c.email == first else None for c in batch
        ]
        raise RateLimited(3, "limit again", partial=answered)

    fake.error = None
    fake.script = answered_then_limited
    await runner.run_once()
    rows = await states(engine)
    assert rows[ids[0]]["sync_status"] == "Complete" and rows[ids[0]]["external_id"] == "42"
    assert rows[ids[1]]["sync_status"] == "Queued" and rows[ids[1]]["attempts"] == 0


@pytest.mark.parametrize(
    "error",
    [AuthFailed("Authentication credentials not found"), Misconfigured("webhook not registered")],
)
async def test_auth_or_config_failure_pauses_without_spending_attempts(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    worker: Worker,
    fake: FakeConnector,
    clock: FrozenClock,
    settings: Settings,
    error: Exception,
) -> None:
    ids = await add_contacts(client, 2)
    await select_for(client, ids)
    clock.advance(3600)
    fake.error = error
    runner = worker.runners[HUB]
    await runner.run_once()
    wait = settings.hubspot.auth_retry_seconds
    for row in (await states(engine)).values():
        assert row["sync_status"] == "Queued" and row["attempts"] == 0
        assert row["processing_error"] == str(error)
        assert row["next_attempt_at"] == clock.now + dt.timedelta(seconds=wait)
    async with engine.connect() as conn:
        ctl = (await conn.execute(select(crm_control))).one()
    assert ctl.pause_kind == ("auth" if isinstance(error, AuthFailed) else "configuration")
    assert ctl.pause_reason == str(error)
    assert await runner.gate.pause_left(clock.now) is not None
    # Credentials fixed: after the pause the rows go through.
    fake.error = None
    clock.advance(wait + 1)
    assert await runner.gate.pause_left(clock.now + dt.timedelta(seconds=2)) is None
    assert await runner.run_once() == 2
    assert all(r["sync_status"] == "Complete" for r in (await states(engine)).values())


async def test_reselecting_an_unchanged_contact_makes_no_vendor_call(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    worker: Worker,
    fake: FakeConnector,
    clock: FrozenClock,
) -> None:
    ids = await add_contacts(client, 2)
    await select_for(client, ids)
    runner = worker.runners[HUB]
    clock.advance(3600)
    await runner.run_once()
    assert len(fake.pushed_emails) == 2
    await select_for(client, ids)
    clock.advance(3600)
    assert await runner.run_once() == 2
    assert len(fake.pushed_emails) == 2  # no new call
    rows = await states(engine)
    assert all(r["sync_status"] == "Complete" for r in rows.values())
    outcomes = [e["outcome"] for e in await event_rows(engine)]
    assert outcomes.count("unchanged") == 2
    # force: true pushes anyway.
    await select_for(client, ids[:1], force=True)
    clock.advance(3600)
    await runner.run_once()
    assert len(fake.pushed_emails) == 3


async def test_editing_a_synced_field_requeues_the_contact(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    worker: Worker,
    fake: FakeConnector,
    clock: FrozenClock,
) -> None:
    ids = await add_contacts(client, 2)
    await select_for(client, ids)
    runner = worker.runners[HUB]
    clock.advance(3600)
    await runner.run_once()
    await client.put(f"/api/v3/contacts/{ids[0]}", json={"context": "not synced? yes it is"})
    await client.put(f"/api/v3/contacts/{ids[1]}", json={"contact_curation_status": "Skipped"})
    rows = await states(engine)
    assert rows[ids[0]]["sync_status"] == "Selected"  # re-queued in the edit's transaction
    assert rows[ids[1]]["sync_status"] == "Complete"  # curation status is not sent anywhere
    await client.put(f"/api/v3/contacts/{ids[0]}", json={"name": "New Name"})
    clock.advance(3600)
    assert await runner.run_once() == 1
    assert fake.pushes[-1][0].name == "New Name"
    # Bulk upsert edits re-queue too.
    email = (await client.get(f"/api/v3/contacts/{ids[1]}")).json()["email"]
    r = await client.post("/api/v3/contacts/bulk", json=[{"email": email, "phone_number": "+1"}])
    assert r.json()["updated_count"] == 1
    assert (await states(engine))[ids[1]]["sync_status"] == "Selected"


async def test_resync_on_change_can_be_turned_off(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    worker: Worker,
    clock: FrozenClock,
    settings: Settings,
) -> None:
    settings.resync_on_change = False
    ids = await add_contacts(client, 1)
    await select_for(client, ids)
    clock.advance(3600)
    await worker.runners[HUB].run_once()
    await client.put(f"/api/v3/contacts/{ids[0]}", json={"name": "Changed"})
    assert (await states(engine))[ids[0]]["sync_status"] == "Complete"


async def test_unselect_during_processing_wins(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    worker: Worker,
    fake: FakeConnector,
    clock: FrozenClock,
) -> None:
    ids = await add_contacts(client, 2)
    await select_for(client, ids)
    clock.advance(3600)
    fake.gate = asyncio.Event()
    task = asyncio.create_task(worker.runners[HUB].run_once())
    await asyncio.wait_for(fake.started.wait(), 10)
    assert all(r["sync_status"] == "Processing" for r in (await states(engine)).values())
    r = await client.put(
        SELECT, json={"contact_ids": ids[:1], "crms": ["hubspot"], "action": "unselect"}
    )
    assert r.status_code == 200
    fake.gate.set()
    await task
    rows = await states(engine)
    assert rows[ids[0]]["sync_status"] == "New"  # the person's newer action stands
    assert rows[ids[1]]["sync_status"] == "Complete"
    history = (await client.get(f"/api/v3/contacts/{ids[0]}/sync-history")).json()
    assert history[0]["outcome"] == "ok" and history[0]["message"].startswith("[not applied")


async def test_a_crm_without_credentials_is_disabled(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ids = await add_contacts(client, 1)
    r = await client.put(SELECT, json={"contact_ids": ids, "crms": ["mautic"]})
    assert "mautic is not configured" in r.json()["message"]
    worker = Worker(engine, settings, [Crm.mautic])
    assert worker.runners == {} and "MAUTIC_BASE_URL" in worker.disabled[Crm.mautic]
    assert "mautic is disabled" in caplog.text
    task = asyncio.create_task(worker.run())
    await until(lambda: worker.beat_at is not None, "the worker to register")
    worker.stop()
    await asyncio.wait_for(task, 10)
    contact = (await client.get(f"/api/v3/contacts/{ids[0]}")).json()
    assert contact["mautic_sync_status"] == "Selected"
    assert contact["mautic_processing_status"] == "Queued"


async def test_worker_run_drains_the_queue_and_wakes_on_selection(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, fake: FakeConnector
) -> None:
    settings.hubspot.sync_scheduler_interval_seconds = 30  # only a wake-up can be this fast
    worker = Worker(engine, settings, [HUB], connectors={HUB: fake})
    client._transport.app.state.contacts.on_queued = worker.wakeup.notify  # type: ignore[attr-defined]
    task = asyncio.create_task(worker.run())
    await until(lambda: idle(worker), "the worker to find nothing and rest for 30 s")
    ids = await add_contacts(client, 250)
    await select_for(client, ids)
    for _ in range(100):
        rows = await states(engine)
        if len(rows) == 250 and all(r["sync_status"] == "Complete" for r in rows.values()):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the worker did not drain the queue after being woken")
    worker.stop()
    await asyncio.wait_for(task, 10)
    assert sorted(fake.pushed_emails) == sorted(set(fake.pushed_emails))
    assert len(fake.pushed_emails) == 250
    assert max(len(b) for b in fake.pushes) == 100


async def start_held_worker(
    client: httpx.AsyncClient, worker: Worker, fake: FakeConnector
) -> tuple[asyncio.Task[None], asyncio.Event]:
    """Three contacts selected, the worker started, and its first push held at the fake vendor:
    the worker's task, and the gate that lets the vendor answer when set."""
    ids = await add_contacts(client, 3)
    await select_for(client, ids)
    gate = fake.gate = asyncio.Event()
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(fake.started.wait(), 10)
    return task, gate


async def test_graceful_shutdown_hands_back_unfinished_batches(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, fake: FakeConnector
) -> None:
    settings.shutdown_grace_seconds = 0.3
    worker = Worker(engine, settings, [HUB], connectors={HUB: fake})
    task, _gate = await start_held_worker(client, worker, fake)  # the vendor never answers
    worker.stop()
    await asyncio.wait_for(task, 10)
    rows = await states(engine)
    assert all(
        r["sync_status"] == "Queued" and r["attempts"] == 0 and r["lease_token"] is None
        for r in rows.values()
    )
    assert [e["outcome"] for e in await event_rows(engine)] == ["released"] * 3


async def test_graceful_shutdown_lets_a_batch_finish_within_grace(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    fake: FakeConnector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings.shutdown_grace_seconds = 5
    caplog.set_level(logging.INFO, logger="crmsync.sync.worker")
    worker = Worker(engine, settings, [HUB], connectors={HUB: fake})
    task, gate = await start_held_worker(client, worker, fake)
    worker.stop()
    await until(lambda: "waiting up to 5" in caplog.text, "the shutdown to wait for the batch")
    gate.set()  # the vendor answers during the grace period
    await asyncio.wait_for(task, 10)
    assert all(r["sync_status"] == "Complete" for r in (await states(engine)).values())


async def test_sync_history_of_an_unknown_contact_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get(f"/api/v3/contacts/{uuid.uuid4()}/sync-history")
    assert r.status_code == 404


@pytest.mark.parametrize("setting_ms", [0.2, 0.0])
async def test_a_running_worker_sets_the_thread_switch_interval_and_restores_it(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    fake: FakeConnector,
    setting_ms: float,
) -> None:
    before = sys.getswitchinterval()
    settings.thread_switch_interval_ms = setting_ms
    worker = Worker(engine, settings, [HUB], connectors={HUB: fake})
    task, gate = await start_held_worker(client, worker, fake)
    during = sys.getswitchinterval()
    gate.set()
    worker.stop()
    await asyncio.wait_for(task, 10)
    # 0 leaves Python's own value alone; any other is set while the worker runs, then undone.
    assert during == pytest.approx(setting_ms / 1000 if setting_ms else before)
    assert sys.getswitchinterval() == before


async def test_a_running_worker_freezes_the_startup_heap_and_restores_the_collector(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, fake: FakeConnector
) -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    worker = Worker(engine, settings, [HUB], connectors={HUB: fake})
    task, gate = await start_held_worker(client, worker, fake)
    frozen, during = gc.get_freeze_count(), gc.get_threshold()
    gate.set()
    worker.stop()
    await asyncio.wait_for(task, 10)
    assert frozen > 10_000  # the app, its modules, the test's own objects
    assert during == (2_000, *before[1:])
    assert (gc.get_freeze_count(), gc.get_threshold()) == (0, before)


@pytest.mark.parametrize("action", ["edit", "reselect"])
async def test_a_row_queued_again_during_its_push_waits_for_that_push_to_end(
    client: httpx.AsyncClient, engine: AsyncEngine, action: str
) -> None:
    """An edit (or a re-select) while a push is in flight: the row is queued again at once, but
    nobody may push it beside the old push, which could reach the vendor after the new one and
    leave the older data there. The old push's refused outcome ends the hold; a worker that died
    ends it with its lease."""
    ids = await add_contacts(client, 2)
    await select_for(client, ids)
    now = dt.datetime.now(dt.UTC)
    lease = dt.timedelta(seconds=60)
    first = await queue.claim(engine, HUB, 10, "w1", "tok-1", now, now + lease)
    assert len(first) == 2
    if action == "edit":
        for contact_id in ids:
            r = await client.put(f"/api/v3/contacts/{contact_id}", json={"name": "Newer Name"})
            assert r.status_code == 200, r.text
    else:
        await select_for(client, ids)
    assert {r["sync_status"] for r in (await states(engine)).values()} == {"Selected"}
    later = dt.datetime.now(dt.UTC)
    assert await queue.claim(engine, HUB, 10, "w2", "tok-2", later, later + lease) == []

    # One push ends (its outcome refused: the lease was voided): that row is due at once. The
    # other's request got no answer (it may still reach the vendor): its hold runs its course.
    done, unanswered = first
    updates = [
        RowUpdate(done.state_id, done.contact_id, Outcome.ok, 0, http_status=200),
        RowUpdate(unanswered.state_id, unanswered.contact_id, Outcome.retry, 1, "timed out"),
    ]
    stale = await queue.record(engine, HUB, "tok-1", updates, later, queue.Timing("w1", later, 1))
    assert stale.lost == [done.state_id, unanswered.state_id]
    second = await queue.claim(engine, HUB, 10, "w2", "tok-2", later, later + 10 * lease)
    assert [c.state_id for c in second] == [done.state_id]
    if action == "edit":
        assert second[0].payload.name == "Newer Name"
    assert await queue.claim(engine, HUB, 10, "w3", "tok-3", later, later + lease) == []
    after_lease = now + lease + dt.timedelta(seconds=1)
    third = await queue.claim(engine, HUB, 10, "w3", "tok-3", after_lease, after_lease + lease)
    assert [c.state_id for c in third] == [unanswered.state_id]


async def test_a_late_accepted_push_sends_the_latest_data_again(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """A push whose lease ran out reaches the vendor after the push that replaced it, which was
    of newer data and already recorded Complete: the row is queued to push its latest data."""
    ids = await add_contacts(client, 2)
    await select_for(client, ids)
    now = dt.datetime.now(dt.UTC)
    old = await queue.claim(engine, HUB, 10, "w1", "tok-1", now, now + dt.timedelta(seconds=5))
    later = now + dt.timedelta(seconds=6)  # w1 stalled past its lease; w2 takes the rows
    new = await queue.claim(engine, HUB, 10, "w2", "tok-2", later, later + dt.timedelta(60))
    timing = queue.Timing("w", later, 1)

    def ok(rows: list[queue.Claimed], hashes: list[str]) -> list[RowUpdate]:
        return [
            RowUpdate(r.state_id, r.contact_id, Outcome.ok, 0, http_status=200, synced_hash=h)
            for r, h in zip(rows, hashes, strict=True)
        ]

    await queue.record(engine, HUB, "tok-2", ok(new, ["newer", "same"]), later, timing)
    stale = await queue.record(engine, HUB, "tok-1", ok(old, ["older", "same"]), later, timing)
    assert len(stale.lost) == 2
    rows = {r["id"]: r for r in (await states(engine)).values()}
    assert rows[old[0].state_id]["sync_status"] == "Selected"  # the older data may have won
    assert rows[old[0].state_id]["synced_hash"] is None
    assert rows[old[1].state_id]["sync_status"] == "Complete"  # the same data either way


def test_workers_side_by_side_share_the_process_tuning_until_the_last_stops() -> None:
    before, interval = gc.get_threshold(), sys.getswitchinterval()
    first, second = process_tuning(0.2), process_tuning(0.2)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert gc.get_freeze_count() > 0 and gc.get_threshold() == (2_000, *before[1:])
    assert sys.getswitchinterval() == pytest.approx(0.0002)
    second.__exit__(None, None, None)
    assert (gc.get_freeze_count(), gc.get_threshold()) == (0, before)
    assert sys.getswitchinterval() == interval


@pytest.mark.parametrize("value", ["-1", "101", "fast"])
def test_a_bad_thread_switch_interval_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CRMSYNC_THREAD_SWITCH_INTERVAL_MS", value)
    with pytest.raises(ValidationError, match="CRMSYNC_THREAD_SWITCH_INTERVAL_MS"):
        Settings(_env_file=None)  # type: ignore[call-arg]
