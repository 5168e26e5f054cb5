"""The API's SQLite write transactions run whole in the write lane's thread (`write_lane`)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import db, write_lane
from crmsync.api.app import create_app
from crmsync.settings import Settings
from tests.conftest import SECRET, add_contacts

LANE_THREAD = "crmsync-sqlite-writes"


def lanes() -> int:
    return sum(1 for t in threading.enumerate() if t.name == LANE_THREAD)


@pytest.fixture
def sqlite_only(engine: AsyncEngine) -> None:
    if not db.is_sqlite_file(engine):
        pytest.skip("the write lane is for SQLite files")


@pytest.mark.usefixtures("sqlite_only")
async def test_an_edit_runs_every_statement_in_the_lane_not_on_the_event_loop(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Every statement of the transaction (BEGIN IMMEDIATE included) runs in the lane's thread:
    through aiosqlite each would have come back through the busy event loop."""
    [contact] = await add_contacts(client, 1)
    await client.put(
        "/api/v3/contacts/crm/select", json={"contact_ids": [contact], "crms": ["hubspot"]}
    )
    threads: list[tuple[str, str]] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        threads.append((threading.current_thread().name, statement.split()[0].upper()))

    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        r = await client.put(f"/api/v3/contacts/{contact}", json={"name": "Ada Lovelace"})
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", seen)
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "Ada Lovelace"
    assert threads[0] == (LANE_THREAD, "BEGIN")
    assert {name for name, _ in threads} == {LANE_THREAD}
    assert {"UPDATE", "SELECT"} <= {kind for _, kind in threads}


@pytest.mark.usefixtures("sqlite_only")
async def test_a_write_waiting_for_the_lock_leaves_the_event_loop_free(
    settings: Settings, engine: AsyncEngine, auth: dict[str, str]
) -> None:
    """While another process holds the write lock, the edit waits in the lane; the event loop
    goes on (reads answer), and the edit lands once the lock is released."""
    app = create_app(settings, SECRET, engine=engine)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=auth) as http:
        [contact] = await add_contacts(http, 1)
        path = engine.url.database
        assert path
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            edit = asyncio.create_task(
                http.put(f"/api/v3/contacts/{contact}", json={"name": "Grace Hopper"})
            )
            started = time.monotonic()
            ticks = 0
            while time.monotonic() - started < 0.5:
                await asyncio.sleep(0.01)
                ticks += 1
            read = await http.get(f"/api/v3/contacts/{contact}")
            assert read.status_code == 200
            assert not edit.done()
            assert ticks >= 25  # the loop was not held by the waiting write
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        r = await edit
        assert r.status_code == 200, r.text
        assert r.json()["name"] == "Grace Hopper"


async def test_the_lane_stops_with_its_engine(tmp_path: Path) -> None:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'lane.db'}")
    before = lanes()

    async def write(e: AsyncEngine) -> int:
        async with e.begin() as conn:
            await conn.execute(text("CREATE TABLE IF NOT EXISTS t (id TEXT)"))
            await conn.execute(text("INSERT INTO t VALUES (:id)"), {"id": str(uuid.uuid4())})
            return int((await conn.execute(text("SELECT count(*) FROM t"))).scalar_one())

    try:
        assert await write_lane.run_write(engine, write) == 1
        assert lanes() == before + 1
    finally:
        await engine.dispose()
    assert lanes() == before
    # The engine is usable after a dispose: a new lane starts with the next write.
    try:
        assert await write_lane.run_write(engine, write) == 2
    finally:
        await engine.dispose()
    assert lanes() == before


async def test_an_error_in_the_lane_rolls_back_and_reaches_the_caller(tmp_path: Path) -> None:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'lane.db'}")

    async def failing(e: AsyncEngine) -> None:
        async with e.begin() as conn:
            await conn.execute(text("CREATE TABLE t (id INTEGER)"))
            raise LookupError("no such contact")

    async def tables(e: AsyncEngine) -> int:
        async with e.begin() as conn:
            query = text("SELECT count(*) FROM sqlite_master WHERE name = 't'")
            return int((await conn.execute(query)).scalar_one())

    try:
        with pytest.raises(LookupError, match="no such contact"):
            await write_lane.run_write(engine, failing)
        assert await write_lane.run_write(engine, tables) == 0
    finally:
        await engine.dispose()


async def test_postgresql_and_memory_engines_write_in_place() -> None:
    memory = db.create_engine("sqlite:///:memory:")
    try:
        assert write_lane.lane_for(memory) is None
    finally:
        await memory.dispose()
