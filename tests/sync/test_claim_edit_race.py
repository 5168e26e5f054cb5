"""PostgreSQL: an edit that commits while a claim is marking the contact's row is not lost.

The claim marks its rows Processing and reads their contacts; a worker's claim transaction stays
open until it commits (with the previous batch's record). An edit meanwhile used to find the row
still waiting (the claim had not committed), queue nothing, and commit, while the claim pushed
the contact as it was before the edit and the row went Complete: the vendor kept the old data.
Now the edit locks every state row of the contact first, so it waits for the claim, then finds
the row in flight and queues it again (the lease guard refuses the stale push's outcome).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.enums import Crm
from crmsync.sync.claim import PostgreSQL as PgClaim
from crmsync.tables import crm_sync_state
from tests.conftest import add_contacts
from tests.sync.pg_locks import until_waiting

HUB = Crm.hubspot
BASE = "/api/v3/contacts"


async def test_an_edit_during_a_claim_waits_for_it_and_queues_the_row_again(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite runs a claim under its single writer lock: an edit cannot interleave")
    [contact_id] = await add_contacts(client, 1)
    r = await client.put(
        f"{BASE}/crm/select", json={"contact_ids": [contact_id], "crms": ["hubspot"]}
    )
    assert r.status_code == 200, r.text
    now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)  # the row is due
    until = now + dt.timedelta(minutes=2)

    async with engine.connect() as conn:
        claiming = await conn.begin()
        raw = await conn.run_sync(
            lambda sync: PgClaim.claim_rows(HUB, 10, "worker-1", "tok-1", now, until, sync)
        )
        [row] = raw.claimed()
        assert str(row.payload.contact_id) == contact_id
        before = row.payload.name
        edit = asyncio.create_task(client.put(f"{BASE}/{contact_id}", json={"name": "Edited Now"}))
        await until_waiting(engine, edit, who="the edit")
        assert not edit.done()
        await claiming.commit()
    answer = await asyncio.wait_for(edit, 10)
    assert answer.status_code == 200, answer.text
    assert before != "Edited Now"  # the claim pushes the contact as it was before the edit...

    async with engine.connect() as conn:
        state = (
            await conn.execute(
                select(crm_sync_state).where(
                    crm_sync_state.c.contact_id == uuid.UUID(contact_id),
                    crm_sync_state.c.crm == HUB.value,
                )
            )
        ).one()
    # ...and the edit found the row in flight: queued again, the stale push's lease voided.
    assert (state.sync_status, state.processing_status) == ("Selected", "Queued")
    assert state.lease_token is None
