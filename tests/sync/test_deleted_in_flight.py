"""Deleting a contact takes its state rows and history with it, even while a worker pushes it.

A contact deleted while its push was in flight: the late outcome is refused like any other,
nothing of the contact is left behind, and the rest of the batch is recorded. The history insert
used to break the foreign key and fail the whole batch's record, whose other rows then waited
for their lease to run out and were pushed again. On PostgreSQL no foreign key does this since
migration 0012: locks and a delete trigger do, and the last test races them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.enums import Crm, SyncStatus
from crmsync.sync import events, lease, queue
from crmsync.sync.state import Claimed, Outcome, RowUpdate
from crmsync.tables import crm_sync_state, sync_events
from tests.conftest import add_contacts
from tests.sync.pg_locks import delete_contact, edit_goes_on, in_own_transaction, until_waiting

HUB = Crm.hubspot
BASE = "/api/v3/contacts"
TIMING = queue.Timing("worker-1", dt.datetime.now(dt.UTC), 5)
s = crm_sync_state.c


async def _claimed(client: httpx.AsyncClient, engine: AsyncEngine, count: int) -> list[Claimed]:
    """`count` new contacts selected for HubSpot and claimed under "tok", in contact order."""
    ids = await add_contacts(client, count)
    r = await client.put(f"{BASE}/crm/select", json={"contact_ids": ids, "crms": ["hubspot"]})
    assert r.status_code == 200, r.text
    now = _now()
    rows = await queue.claim(engine, HUB, 10, "worker-1", "tok", now, now + dt.timedelta(minutes=5))
    order = {uuid.UUID(i): n for n, i in enumerate(ids)}
    return sorted(rows, key=lambda row: order[row.contact_id])


def _now() -> dt.datetime:
    """A moment when every row selected so far is due."""
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)


def _ok(row: Claimed) -> RowUpdate:
    return RowUpdate(
        row.state_id,
        row.contact_id,
        Outcome.ok,
        0,
        http_status=200,
        external_id=f"ext-{row.contact_id}",
        synced_hash="h",
        synced_email=row.payload.email,
    )


async def _rows_of(engine: AsyncEngine, contact_id: uuid.UUID) -> tuple[int, int]:
    """How many state rows and history rows name `contact_id`."""
    async with engine.connect() as conn:
        found = []
        for table in (crm_sync_state, sync_events):
            query = select(func.count()).select_from(table).where(table.c.contact_id == contact_id)
            found.append(int((await conn.execute(query)).scalar_one()))
    return found[0], found[1]


async def test_the_rest_of_the_batch_is_recorded(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    gone, kept = await _claimed(client, engine, 2)
    assert (await client.delete(f"{BASE}/{gone.contact_id}")).status_code == 204

    recorded = await queue.record(engine, HUB, "tok", [_ok(gone), _ok(kept)], _now(), TIMING)

    assert recorded.applied == 1 and recorded.lost == [gone.state_id]
    assert await _rows_of(engine, gone.contact_id) == (0, 0)
    assert await _rows_of(engine, kept.contact_id) == (1, 1)
    async with engine.connect() as conn:
        query = select(s.sync_status, s.external_id).where(s.contact_id == kept.contact_id)
        row = (await conn.execute(query)).one()
    assert tuple(row) == (SyncStatus.Complete.value, f"ext-{kept.contact_id}")


async def test_deleting_a_contact_deletes_its_history(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    synced, other = await _claimed(client, engine, 2)
    await queue.record(engine, HUB, "tok", [_ok(synced), _ok(other)], _now(), TIMING)
    assert await _rows_of(engine, synced.contact_id) == (1, 1)

    assert (await client.delete(f"{BASE}/{synced.contact_id}")).status_code == 204

    assert await _rows_of(engine, synced.contact_id) == (0, 0)
    assert await _rows_of(engine, other.contact_id) == (1, 1)


@pytest.fixture
def pg_only(engine: AsyncEngine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time, and foreign keys")


async def _delete_meets_history_writer(
    engine: AsyncEngine, row: Claimed, write: Callable[[Any], None]
) -> None:
    """`write` (on a sync connection) runs in a transaction left open while the
    contact of `row` is deleted; the delete must wait for it, and leave nothing behind."""
    async with engine.connect() as conn:
        async with conn.begin():
            await conn.run_sync(write)
            pid, deleting = await in_own_transaction(
                engine, partial(delete_contact, contact_id=row.contact_id)
            )
            await until_waiting(engine, deleting, pid, "the delete")
    assert await asyncio.wait_for(deleting, 10) == 1
    assert await _rows_of(engine, row.contact_id) == (0, 0)


async def test_a_delete_waits_for_the_worker_then_takes_the_history_it_wrote(
    client: httpx.AsyncClient, engine: AsyncEngine, pg_only: None
) -> None:
    """A worker holds a row and writes its history: the delete waits for the row (the trigger
    deletes the state rows first), then deletes that history too."""
    [row] = await _claimed(client, engine, 1)

    def hold_and_write(conn: Any) -> None:
        held = lease.held_locked(conn, "tok", [row.state_id])
        assert held == {row.state_id}
        events.insert_events(conn, HUB, [_ok(row)], held, _now(), TIMING)

    await _delete_meets_history_writer(engine, row, hold_and_write)


async def test_a_delete_waits_for_a_refused_outcomes_history_then_takes_it(
    client: httpx.AsyncClient, engine: AsyncEngine, pg_only: None
) -> None:
    """A refused outcome's history: the worker holds no row, so its read of the contact holds
    the delete back until its history row is in."""
    [row] = await _claimed(client, engine, 1)

    def write_refused(conn: Any) -> None:
        events.insert_events(conn, HUB, [_ok(row)], set(), _now(), TIMING)

    await _delete_meets_history_writer(engine, row, write_refused)


async def test_a_refused_outcomes_history_does_not_hold_up_an_edit(
    client: httpx.AsyncClient, engine: AsyncEngine, pg_only: None
) -> None:
    [row] = await _claimed(client, engine, 1)
    async with engine.connect() as conn:
        async with conn.begin():
            await conn.run_sync(
                lambda sync: events.insert_events(sync, HUB, [_ok(row)], set(), _now(), TIMING)
            )
            await edit_goes_on(engine, row.contact_id)
