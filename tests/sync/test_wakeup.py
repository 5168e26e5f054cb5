"""Idle workers wake when work is queued: in-process directly, across processes by NOTIFY
(PostgreSQL) or `PRAGMA data_version` (SQLite)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.enums import Crm
from crmsync.settings import Settings
from crmsync.sync.wakeup import Wakeup
from crmsync.sync.worker import Worker
from crmsync.tables import crm_sync_state
from tests.conftest import add_contacts
from tests.sync.fakes import FakeConnector, idle, until


async def _complete(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        query = select(func.count()).where(crm_sync_state.c.sync_status == "Complete")
        return int((await conn.execute(query)).scalar_one())


@contextlib.asynccontextmanager
async def _slow_polling_worker(
    engine: AsyncEngine, settings: Settings
) -> AsyncIterator[tuple[Worker, FakeConnector]]:
    """A running HubSpot worker that polls once a minute, so that only a wake-up makes it work
    soon; stopped on leaving. Nothing links it to the API's service: only the database can wake
    it (NOTIFY on PostgreSQL, `PRAGMA data_version` on SQLite)."""
    settings.hubspot.sync_scheduler_interval_seconds = 60  # polling alone would take a minute
    fake = FakeConnector()
    worker = Worker(engine, settings, [Crm.hubspot], connectors={Crm.hubspot: fake})
    task = asyncio.create_task(worker.run())
    try:
        yield worker, fake
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)


async def _select_and_expect_a_wake(
    client: httpx.AsyncClient, engine: AsyncEngine, worker: Worker, ids: list[str], how: str
) -> None:
    """Once the worker rests, select `ids` for HubSpot: all Complete within 15 s, far less than
    the worker's 60 s poll, so only a wake-up can have done it."""
    await until(lambda: idle(worker), "the worker to find nothing and rest")
    r = await client.put(
        "/api/v3/contacts/crm/select", json={"contact_ids": ids, "crms": ["hubspot"]}
    )
    assert r.status_code == 200

    async def synced() -> bool:
        return await _complete(engine) == len(ids)

    await until(synced, f"a wake-up {how}", within=15, every=0.05)


async def test_a_commit_wakes_a_worker_that_shares_only_the_database(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    if engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:"):
        pytest.skip("an in-memory SQLite database has no other process to wake")
    async with _slow_polling_worker(engine, settings) as (worker, fake):
        ids = await add_contacts(client, 30)
        # The worker listens for other processes' commits, has found nothing and is idle.
        await asyncio.wait_for(worker.listening.wait(), 10)
        await _select_and_expect_a_wake(client, engine, worker, ids, "by the commit")
    assert len(fake.pushed_emails) == 30


async def test_wakeup_events() -> None:
    wakeup = Wakeup()
    assert await wakeup.wait(Crm.brevo, 0.01) is False
    wakeup.notify_payload("brevo,unknown,n8n")
    assert await wakeup.wait(Crm.brevo, 1) is True
    assert await wakeup.wait(Crm.n8n, 1) is True
    assert await wakeup.wait(Crm.hubspot, 0.01) is False


async def _listen_backends(engine: AsyncEngine) -> list[int]:
    """Backends of this database whose last statement was our LISTEN."""
    stmt = text(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND query ILIKE 'LISTEN %' AND pid <> pg_backend_pid()"
    )
    async with engine.connect() as conn:
        return [int(pid) for pid in (await conn.execute(stmt)).scalars()]


async def test_a_worker_listens_again_after_its_listen_connection_ends(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    async with _slow_polling_worker(engine, settings) as (worker, _fake):
        ids = await add_contacts(client, 10)
        await asyncio.wait_for(worker.listening.wait(), 10)
        [first] = await _listen_backends(engine)
        async with engine.connect() as conn:  # a server restart or an admin does this
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})

        async def listening_elsewhere() -> bool:
            backends = await _listen_backends(engine)
            return worker.listening.is_set() and bool(backends) and first not in backends

        await until(listening_elsewhere, "the worker to listen again", within=15, every=0.05)
        await _select_and_expect_a_wake(client, engine, worker, ids, "by the new LISTEN")
