"""Pruning the attempt history (`CRMSYNC_EVENT_RETENTION_DAYS`), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import httpx
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.enums import Crm
from crmsync.settings import Settings
from crmsync.sync import events
from crmsync.sync.worker import Worker
from crmsync.tables import sync_events
from tests.conftest import add_contacts
from tests.sync.fakes import FakeConnector, FrozenClock

NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)


async def add_events(engine: AsyncEngine, contact_id: str, ages_days: list[float]) -> None:
    """One event per age, for a different CRM in turn (pruning must cover every CRM)."""
    crms = list(Crm)
    rows = [
        {
            "contact_id": uuid.UUID(contact_id),
            "crm": crms[i % len(crms)].value,
            "outcome": "Complete",
            "message": f"{age} days old",
            "created_at": NOW - dt.timedelta(days=age),
        }
        for i, age in enumerate(ages_days)
    ]
    async with engine.begin() as conn:
        await conn.execute(insert(sync_events), rows)


async def kept_messages(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        stmt = select(sync_events.c.message).order_by(sync_events.c.created_at)
        return list((await conn.execute(stmt)).scalars())


async def test_prune_deletes_only_events_older_than_the_cut_off_a_batch_at_a_time(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    [contact] = await add_contacts(client, 1)
    await add_events(engine, contact, [40, 31, 30.01, 29.99, 1, 0])
    cut_off = NOW - dt.timedelta(days=30)
    deleted = []
    async with engine.begin() as conn:
        for _ in range(3):
            deleted.append(await events.prune(conn, cut_off, batch=2))
    assert deleted == [2, 1, 0]
    assert await kept_messages(engine) == ["29.99 days old", "1 days old", "0 days old"]


async def test_the_worker_prunes_what_is_older_than_the_retention_setting(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    settings.event_retention_days = 7
    [contact] = await add_contacts(client, 1)
    await add_events(engine, contact, [8, 7.01, 6.99, 0])
    worker = Worker(
        engine,
        settings,
        [Crm.hubspot],
        connectors={Crm.hubspot: FakeConnector()},
        clock=FrozenClock(NOW),
    )
    pruning = asyncio.create_task(worker._prune())
    try:
        for _ in range(200):
            if len(await kept_messages(engine)) < 4:
                break
            await asyncio.sleep(0.05)
    finally:
        pruning.cancel()
    assert await kept_messages(engine) == ["6.99 days old", "0 days old"]
    # What is left is still the contact's history through the API, newest first.
    r = await client.get(f"/api/v3/contacts/{contact}/sync-history")
    assert r.status_code == 200, r.text
    assert [e["message"] for e in r.json()] == ["0 days old", "6.99 days old"]
