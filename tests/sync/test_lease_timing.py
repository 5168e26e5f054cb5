"""A lease runs from the moment of the claim, however long the worker waited for a free slot.

Found by the end-to-end lease checks (tests/e2e): the claim used a timestamp taken before the
runner waited for one of its `MAX_INSTANCES` slots, so after a slow batch the next claim was born
with a lease that had (partly or wholly) run out already, and another worker could take the same
rows while this one was pushing them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.enums import Crm
from crmsync.settings import Settings
from crmsync.sync import queue
from crmsync.sync.worker import Worker
from crmsync.tables import crm_sync_state
from tests.conftest import add_contacts
from tests.sync.fakes import FakeConnector, FrozenClock

HUB = Crm.hubspot
s = crm_sync_state.c


async def _wait_for(condition: object, what: str, within: float = 10.0) -> None:
    assert callable(condition)
    deadline = asyncio.get_running_loop().time() + within
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_a_claim_made_after_waiting_for_a_slot_gets_a_full_lease(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    settings.lease_seconds = 30
    settings.hubspot.sync_scheduler_batch_size = 1
    settings.hubspot.sync_scheduler_max_instances = 1
    clock = FrozenClock()
    fake = FakeConnector()
    first_gate = fake.gate = asyncio.Event()
    worker = Worker(engine, settings, [HUB], connectors={HUB: fake}, clock=clock)
    runner = worker.runners[HUB]
    ids = await add_contacts(client, 2)
    r = await client.put("/api/v3/contacts/crm/select", json={"contact_ids": ids, "crms": [HUB]})
    assert r.status_code == 200, r.text
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(fake.started.wait(), 10)

        async def next_cycle_waits_for_the_slot() -> bool:
            return bool(runner._slots._waiters)  # type: ignore[attr-defined]

        await _wait_for(next_cycle_waits_for_the_slot, "the next cycle to wait for a slot")
        # The first batch is slow: it holds the only slot for longer than a whole lease.
        clock.advance(60)
        fake.gate = asyncio.Event()  # the second batch will be held at the vendor too
        first_gate.set()
        second = uuid.UUID(next(i for i in ids if fake.pushes[0][0].contact_id != uuid.UUID(i)))

        async def second_claimed() -> bool:
            async with engine.connect() as conn:
                status = await conn.scalar(select(s.sync_status).where(s.contact_id == second))
            return status == "Processing" and len(fake.pushes) == 2

        await _wait_for(second_claimed, "the second batch to be claimed")
        async with engine.connect() as conn:
            row = (await conn.execute(select(crm_sync_state).where(s.contact_id == second))).one()
        assert row.lease_expires_at == clock.now + dt.timedelta(seconds=30)
        assert row.next_attempt_at == row.lease_expires_at
        # While this worker pushes it, nobody else can take the row.
        lease = clock.now + dt.timedelta(seconds=30)
        assert await queue.claim(engine, HUB, 10, "other", "tok-x", clock.now, lease) == []
    finally:
        fake.gate.set()
        worker.stop()
        await asyncio.wait_for(task, 10)
