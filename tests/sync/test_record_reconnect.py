"""A record transaction whose database connection is lost, or that PostgreSQL aborted for a
deadlock, is tried again (on a new connection).

The backend running the record is terminated (`pg_terminate_backend`) just before its first
outcome UPDATE: the transaction rolls back, and without the retry the vendor's answers for the
whole batch would be thrown away (the rows left Processing until their lease ran out).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

from crmsync.enums import Crm
from crmsync.settings import Settings
from crmsync.sync import queue
from crmsync.sync.worker import Worker
from tests.conftest import add_contacts
from tests.sync.fakes import FakeConnector, FrozenClock
from tests.sync.test_engine import select_for, states

HUB = Crm.hubspot


@pytest.fixture
async def admin(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    yield conn
    await conn.close()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_a_record_whose_connection_is_lost_is_tried_again(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    admin: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ids = await add_contacts(client, 3)
    await select_for(client, ids)
    fake = FakeConnector()
    worker = Worker(engine, settings, [HUB], connectors={HUB: fake}, clock=FrozenClock())
    killed: list[int] = []

    def kill_once(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        # The first outcome write of a record: its backend dies before the statement runs.
        if not killed and statement.startswith("UPDATE crm_sync_state SET sync_status"):
            pid = conn.connection.driver_connection.get_server_pid()
            killed.append(pid)
            await_only(admin.execute("SELECT pg_terminate_backend($1)", pid))

    event.listen(engine.sync_engine, "before_cursor_execute", kill_once)
    try:
        with caplog.at_level(logging.WARNING, logger="crmsync.sync.runner"):
            assert await worker.runners[HUB].run_once() == 3
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", kill_once)
    assert killed, "the record's connection was never cut"
    assert len(fake.pushes) == 1  # the answers were kept, not asked for again
    rows = await states(engine)
    assert {row["sync_status"] for row in rows.values()} == {"Complete"}
    assert "connection was lost while recording a batch" in caplog.text


class _DeadlockDetected(Exception):
    """What the driver raises when PostgreSQL aborts a transaction to break a deadlock."""

    sqlstate = "40P01"


@pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)
async def test_a_record_aborted_for_a_deadlock_is_tried_again(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PostgreSQL aborts one of two transactions that wait on each other (a person's write and
    the worker's outcome write, each holding rows the other wants). The aborted one wrote
    nothing: the worker runs it again instead of dropping the vendor's answers."""
    ids = await add_contacts(client, 3)
    await select_for(client, ids)
    fake = FakeConnector()
    worker = Worker(engine, settings, [HUB], connectors={HUB: fake}, clock=FrozenClock())
    aborted: list[str] = []

    def abort_once(real: Any) -> Any:
        async def write(*args: Any, **kwargs: Any) -> Any:
            if not aborted:
                aborted.append(real.__name__)
                raise DBAPIError("UPDATE crm_sync_state ...", None, _DeadlockDetected())
            return await real(*args, **kwargs)

        return write

    monkeypatch.setattr(queue, "record", abort_once(queue.record))
    monkeypatch.setattr(queue, "record_then_claim", abort_once(queue.record_then_claim))
    with caplog.at_level(logging.WARNING, logger="crmsync.sync.runner"):
        assert await worker.runners[HUB].run_once() == 3
    assert aborted, "no record was aborted"
    assert len(fake.pushes) == 1  # the answers were kept, not asked for again
    rows = await states(engine)
    assert {row["sync_status"] for row in rows.values()} == {"Complete"}
    assert "a conflict while recording a batch" in caplog.text
