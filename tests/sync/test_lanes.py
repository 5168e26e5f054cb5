"""Lanes: a batch task that records its outcome and claims the next batch in one step.

`queue.record_then_claim` is the outcome write of one batch followed by the claim of the next
(one transaction on SQLite); each must stay what it is alone, including when a person changed a
row while it was in flight. A lane goes on only while its batches come full, and stops claiming
when the CRM is paused or the worker stops; so does the loop that was waiting for the lane's
slot (it used to claim one more batch after a 429).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.connectors.base import ContactPayload, RateLimited, RowResult
from crmsync.enums import Crm
from crmsync.settings import Settings
from crmsync.sync import queue
from crmsync.sync import worker as worker_module
from crmsync.sync.state import Outcome, RowUpdate
from crmsync.sync.worker import Worker
from crmsync.tables import crm_sync_state
from tests.conftest import add_contacts
from tests.sync.fakes import FakeConnector, FrozenClock, all_ok, idle, until

HUB = Crm.hubspot
SELECT = "/api/v3/contacts/crm/select"
s = crm_sync_state.c


async def rows_by_contact(engine: AsyncEngine) -> dict[uuid.UUID, Any]:
    async with engine.connect() as conn:
        found = await conn.execute(select(crm_sync_state).where(s.crm == HUB.value))
        return {row.contact_id: row for row in found}


def ok(claimed: Sequence[queue.Claimed]) -> list[RowUpdate]:
    return [
        RowUpdate(c.state_id, c.contact_id, Outcome.ok, 0, external_id="x", synced_hash="h")
        for c in claimed
    ]


def next_claim(clock: FrozenClock, token: str, limit: int = 2) -> queue.NextClaim:
    return queue.NextClaim(HUB, limit, "w1", token, clock.now, clock.later(120))


async def test_record_then_claim_writes_the_outcome_and_leases_the_next_batch(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    ids = await add_contacts(client, 5)
    assert (await client.put(SELECT, json={"contact_ids": ids, "crms": ["hubspot"]})).is_success
    clock = FrozenClock()
    first = await queue.claim(engine, HUB, 2, "w1", "tok-a", clock.now, clock.later(120))
    timing = queue.Timing("w1", clock.now, 5)
    recorded, second = await queue.record_then_claim(
        engine, HUB, "tok-a", ok(first), clock.now, timing, next_claim(clock, "tok-b")
    )
    assert recorded.applied == 2 and recorded.lost == []
    assert len(second) == 2
    assert {c.contact_id for c in second}.isdisjoint(c.contact_id for c in first)
    rows = await rows_by_contact(engine)
    for c in first:
        assert rows[c.contact_id].sync_status == "Complete"
        assert rows[c.contact_id].lease_token is None
    for c in second:
        assert rows[c.contact_id].sync_status == "Processing"
        assert rows[c.contact_id].lease_token == "tok-b"
    assert sorted(r.sync_status for r in rows.values()).count("Selected") == 1


async def test_record_then_claim_refuses_a_lost_row_and_still_claims(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    ids = await add_contacts(client, 4)
    assert (await client.put(SELECT, json={"contact_ids": ids, "crms": ["hubspot"]})).is_success
    clock = FrozenClock()
    first = await queue.claim(engine, HUB, 2, "w1", "tok-a", clock.now, clock.later(120))
    # A person unselects one of the rows while its push is in flight: their action wins.
    gone = first[0]
    unselect = {"contact_ids": [str(gone.contact_id)], "crms": ["hubspot"], "action": "unselect"}
    assert (await client.put(SELECT, json=unselect)).is_success
    timing = queue.Timing("w1", clock.now, 5)
    recorded, second = await queue.record_then_claim(
        engine, HUB, "tok-a", ok(first), clock.now, timing, next_claim(clock, "tok-b")
    )
    assert recorded.lost == [gone.state_id] and recorded.applied == 1
    assert len(second) == 2 and gone.contact_id not in {c.contact_id for c in second}
    rows = await rows_by_contact(engine)
    assert rows[gone.contact_id].sync_status == "New"
    assert rows[first[1].contact_id].sync_status == "Complete"
    assert all(rows[c.contact_id].lease_token == "tok-b" for c in second)


async def test_a_lane_claims_its_next_batch_while_batches_come_full(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings.hubspot.sync_scheduler_batch_size = 2
    settings.hubspot.sync_scheduler_max_instances = 1
    merged: list[int] = []
    original = queue.record_then_claim

    async def counting(*args: Any, **kwargs: Any) -> Any:
        result = await original(*args, **kwargs)
        merged.append(len(result[1]))
        return result

    monkeypatch.setattr(worker_module.queue, "record_then_claim", counting)
    fake = FakeConnector()
    worker = Worker(engine, settings, [HUB], connectors={HUB: fake})
    ids = await add_contacts(client, 5)
    assert (await client.put(SELECT, json={"contact_ids": ids, "crms": ["hubspot"]})).is_success
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(200):
            rows = await rows_by_contact(engine)
            if all(r.sync_status == "Complete" for r in rows.values()):
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the lane did not drain the queue")
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
    assert [len(batch) for batch in fake.pushes] == [2, 2, 1]
    # After each full batch the lane claimed the next one itself; after the short one, nothing.
    assert merged == [2, 1]
    assert sorted(fake.pushed_emails) == sorted(set(fake.pushed_emails))


async def test_a_paused_crm_stops_the_lane(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    settings.hubspot.sync_scheduler_batch_size = 1
    settings.hubspot.sync_scheduler_max_instances = 1
    settings.hubspot.sync_scheduler_interval_seconds = 30
    fake = FakeConnector()

    def limited(batch: Sequence[ContactPayload]) -> list[RowResult]:
        if len(fake.pushes) == 2:
            raise RateLimited(600, "HubSpot answered 429")
        return all_ok(batch)

    fake.script = limited
    worker = Worker(engine, settings, [HUB], connectors={HUB: fake})
    ids = await add_contacts(client, 4)
    assert (await client.put(SELECT, json={"contact_ids": ids, "crms": ["hubspot"]})).is_success
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(200):
            statuses = sorted(r.sync_status for r in (await rows_by_contact(engine)).values())
            if statuses.count("Queued") == 1:
                break
            await asyncio.sleep(0.02)
        # The loop saw the pause and rests: no lane is left (one that ignored the pause would
        # still be pushing the batch it claimed).
        await until(lambda: idle(worker), "the runner to rest")
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
    statuses = sorted(r.sync_status for r in (await rows_by_contact(engine)).values())
    # One synced, one released by the 429 (no attempt spent), two never claimed.
    assert statuses == ["Complete", "Queued", "Selected", "Selected"]
    assert len(fake.pushes) == 2
    now = dt.datetime.now(dt.UTC)
    queued = [r for r in (await rows_by_contact(engine)).values() if r.sync_status == "Queued"]
    assert queued[0].attempts == 0 and queued[0].next_attempt_at > now
