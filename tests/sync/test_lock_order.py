"""PostgreSQL: the worker's writes lock their rows in the primary key's order, as a person's do.

A person's multi-row write (select, edit, retry) locks its state rows in the primary key's order
(`sqlutil.lock_in_order`). A worker's lease renewal found its rows by token, and its outcome
write updated them one outcome kind after another, in their plan's order: with a person's action
holding one row of a batch and waiting for another the worker already held, PostgreSQL broke
the deadlock only after `deadlock_timeout` (a second), and both sides waited meanwhile (the API
load benchmark saw a 5.5 s request that way). Each test makes the worker's old order differ
from the primary key's, holds the lowest row as a person would, lets the worker start, then
takes a higher row: that must not wait for the worker.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.enums import Crm
from crmsync.sync import queue
from crmsync.sync.state import Outcome, RowUpdate
from tests.conftest import add_contacts
from tests.sync.pg_locks import until_waiting

HUB = Crm.hubspot
BASE = "/api/v3/contacts"
LEASE = dt.timedelta(minutes=5)


@pytest.fixture
def pg_only(engine: AsyncEngine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: no row locks to take in any order")


async def _claimed(client: httpx.AsyncClient, engine: AsyncEngine, count: int) -> list[Any]:
    """`count` HubSpot rows claimed under "tok", in the primary key's order."""
    ids = await add_contacts(client, count)
    r = await client.put(f"{BASE}/crm/select", json={"contact_ids": ids, "crms": ["hubspot"]})
    assert r.status_code == 200, r.text
    now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    rows = await queue.claim(engine, HUB, count, "worker-1", "tok", now, now + LEASE)
    assert len(rows) == count
    return sorted(rows, key=lambda row: row.state_id)


async def _person_meets_worker(
    engine: AsyncEngine, first: int, then: int, worker: Callable[[], Awaitable[Any]]
) -> tuple[float, Any]:
    """A person locks row `first`; the worker starts and must wait for it; the person then locks
    row `then` and commits. Returns how long that second lock took, and the worker's result."""
    lock = "SELECT id FROM crm_sync_state WHERE id = :id FOR UPDATE"
    async with engine.connect() as conn:
        person = await conn.begin()
        await conn.execute(text("SET LOCAL lock_timeout = '5s'"))
        await conn.execute(text(lock), {"id": first})
        work = asyncio.create_task(worker())
        await until_waiting(engine, work, who="the worker")
        started = time.monotonic()
        await conn.execute(text(lock), {"id": then})
        took = time.monotonic() - started
        await person.commit()
    return took, await asyncio.wait_for(work, 10)


async def _move_to_the_heap_end(engine: AsyncEngine, state_id: int) -> None:
    """Give the row a new version after the others (a change of an indexed column twice, so not
    a HOT update): read by token, through the lease index, it then comes last."""
    async with engine.begin() as conn:
        for token in ("moving", "tok"):
            await conn.execute(
                text("UPDATE crm_sync_state SET lease_token = :t WHERE id = :id"),
                {"t": token, "id": state_id},
            )


async def _ctid(engine: AsyncEngine, state_id: int) -> tuple[int, int]:
    async with engine.connect() as conn:
        raw = (
            await conn.execute(
                text("SELECT ctid::text FROM crm_sync_state WHERE id = :id"), {"id": state_id}
            )
        ).scalar_one()
    page, offset = raw.strip("()").split(",")
    return int(page), int(offset)


async def test_a_lease_renewal_takes_its_rows_in_key_order(
    pg_only: None, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    low, high = (row.state_id for row in await _claimed(client, engine, 2))
    await _move_to_the_heap_end(engine, low)
    assert await _ctid(engine, low) > await _ctid(engine, high)  # by token: high, then low

    later = dt.datetime.now(dt.UTC) + 2 * LEASE
    took, renewed = await _person_meets_worker(
        engine, low, high, lambda: queue.renew(engine, {HUB: ["tok"]}, later)
    )
    assert took < 0.5, f"the person waited {took:.2f} s for a row the renewal took out of order"
    assert renewed == 2


async def test_an_outcome_write_takes_its_rows_in_key_order(
    pg_only: None, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    rows = await _claimed(client, engine, 3)
    low, middle, high = rows
    # One outcome kind after another would write low and high (ok) before middle (retry).
    outcomes = {low.state_id: Outcome.ok, middle.state_id: Outcome.retry, high.state_id: Outcome.ok}
    updates = [
        RowUpdate(row.state_id, row.payload.contact_id, outcomes[row.state_id], 1) for row in rows
    ]
    now = dt.datetime.now(dt.UTC)
    timing = queue.Timing("worker-1", now, 1)
    then = queue.NextClaim(HUB, 10, "worker-1", "tok-2", now, now + LEASE)

    took, (recorded, _) = await _person_meets_worker(
        engine,
        middle.state_id,
        high.state_id,
        lambda: queue.record_then_claim(engine, HUB, "tok", updates, now, timing, then),
    )
    assert took < 0.5, f"the person waited {took:.2f} s for a row the outcome took out of order"
    assert recorded.applied == 3 and recorded.lost == []
