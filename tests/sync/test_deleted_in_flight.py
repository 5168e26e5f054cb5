"""A contact deleted while its push is in flight (its state rows go with it): the late outcome
is refused like any other, nothing of the contact is left behind, and the rest of the batch is
recorded. The history insert used to break the foreign key and fail the whole batch's record,
whose other rows then waited for their lease to run out and were pushed again."""

from __future__ import annotations

import datetime as dt
import uuid

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.enums import Crm, SyncStatus
from crmsync.sync import queue
from crmsync.sync.state import Outcome, RowUpdate
from crmsync.tables import crm_sync_state, sync_events
from tests.conftest import add_contacts

HUB = Crm.hubspot
BASE = "/api/v3/contacts"
s = crm_sync_state.c


async def _count(engine: AsyncEngine, table: object, where: object) -> int:
    async with engine.connect() as conn:
        return int(
            (await conn.execute(select(func.count()).select_from(table).where(where))).scalar_one()
        )


async def test_the_rest_of_the_batch_is_recorded(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    ids = await add_contacts(client, 2)
    r = await client.put(f"{BASE}/crm/select", json={"contact_ids": ids, "crms": ["hubspot"]})
    assert r.status_code == 200, r.text
    now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    rows = await queue.claim(engine, HUB, 10, "worker-1", "tok", now, now + dt.timedelta(minutes=5))
    by_contact = {str(row.contact_id): row for row in rows}
    assert set(by_contact) == set(ids)
    gone, kept = (uuid.UUID(i) for i in ids)
    assert (await client.delete(f"{BASE}/{gone}")).status_code == 204

    updates = [
        RowUpdate(
            row.state_id,
            row.contact_id,
            Outcome.ok,
            0,
            http_status=200,
            external_id=f"ext-{row.contact_id}",
            synced_hash="h",
            synced_email=row.payload.email,
        )
        for row in rows
    ]
    timing = queue.Timing("worker-1", now, 5)
    recorded = await queue.record(engine, HUB, "tok", updates, now, timing)

    assert recorded.applied == 1
    assert recorded.lost == [by_contact[str(gone)].state_id]
    assert await _count(engine, crm_sync_state, s.contact_id == gone) == 0
    assert await _count(engine, sync_events, sync_events.c.contact_id == gone) == 0
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(s.sync_status, s.external_id).where(s.contact_id == kept))
        ).one()
    assert tuple(row) == (SyncStatus.Complete.value, f"ext-{kept}")
    assert await _count(engine, sync_events, sync_events.c.contact_id == kept) == 1
