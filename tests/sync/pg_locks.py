"""PostgreSQL tests of lock order: run a statement on a connection of its own, and wait until
its backend waits for another transaction's row lock."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.sync.fakes import until


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
    engine: AsyncEngine, sql: str, **params: Any
) -> tuple[int, asyncio.Task[int]]:
    """Start `sql` on a connection of its own (committing at the end): its backend pid, and the
    task that runs it (its result: the rows it changed)."""
    conn = await engine.connect()
    pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()

    async def run() -> int:
        try:
            result = await conn.execute(text(sql), params)
            await conn.commit()
            return int(result.rowcount)
        finally:
            await conn.close()

    return pid, asyncio.create_task(run())
