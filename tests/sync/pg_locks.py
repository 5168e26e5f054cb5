"""PostgreSQL tests of lock order: run a statement on a connection of its own, and wait until
its backend waits for another transaction's row lock."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


async def until_waiting(engine: AsyncEngine, pid: int, task: asyncio.Task[Any]) -> None:
    """Until backend `pid` waits for a lock (bounded; `task` must not end first)."""
    stmt = text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid")
    deadline = time.monotonic() + 10
    while True:
        async with engine.connect() as conn:
            if (await conn.execute(stmt, {"pid": pid})).scalar() == "Lock":
                return
        assert not task.done(), "it did not wait for the other transaction's lock"
        assert time.monotonic() < deadline, "it neither waited nor finished"
        await asyncio.sleep(0.02)


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
