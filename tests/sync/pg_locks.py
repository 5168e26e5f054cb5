"""PostgreSQL tests of lock order: run work on a connection of its own, wait until its backend
waits for another transaction's row lock, or check that an edit does not wait at all."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import delete, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from crmsync.tables import contacts
from tests.sync.fakes import until

T = TypeVar("T")


async def lock_waits(engine: AsyncEngine, pid: int | None = None) -> int:
    """How many backends of this database (or backend `pid` only) wait for a lock."""
    stmt = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND (CAST(:pid AS integer) IS NULL OR pid = :pid)"
    )
    async with engine.connect() as conn:
        return int((await conn.execute(stmt, {"pid": pid})).scalar_one())


async def until_waiting(
    engine: AsyncEngine, task: asyncio.Task[Any], pid: int | None = None, who: str = "it"
) -> None:
    """Until backend `pid` (or any backend of this database) waits for a lock; `task`, which
    should be what waits, must not end first. Bounded: fails the test after 10 s."""

    async def waiting() -> bool:
        assert not task.done(), f"{who} did not wait for the other transaction's lock"
        return await lock_waits(engine, pid) > 0

    await until(waiting, f"{who} to wait for a lock", every=0.02)


async def in_own_transaction(
    engine: AsyncEngine, work: Callable[[AsyncConnection], Awaitable[T]]
) -> tuple[int, asyncio.Task[T]]:
    """Start `work` in a transaction on a connection of its own, committed when it returns: the
    connection's backend pid, and the task that runs it (its result: what `work` returned)."""
    conn = await engine.connect()
    pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    await conn.commit()

    async def run() -> T:
        try:
            async with conn.begin():
                return await work(conn)
        finally:
            await conn.close()

    return pid, asyncio.create_task(run())


async def delete_contact(conn: AsyncConnection, contact_id: uuid.UUID) -> int:
    """Delete the contact (as `DELETE /contacts/{id}` does); how many rows went (0 or 1)."""
    return int((await conn.execute(delete(contacts).where(contacts.c.id == contact_id))).rowcount)


async def edit_goes_on(engine: AsyncEngine, contact_id: uuid.UUID) -> None:
    """A person's edit of the contact, on a connection of its own, commits without waiting for
    any lock another transaction holds (it fails after 2 s if it would)."""
    async with engine.connect() as conn:
        await conn.execute(text("SET lock_timeout = '2s'"))
        edit = update(contacts).where(contacts.c.id == contact_id).values(name="Edited")
        assert (await conn.execute(edit)).rowcount == 1
        await conn.commit()
