"""`db.write` on a SQLite file: every write transaction runs on one thread of its own, in order,
with the caller's context, rolls back on error, and comes back after the engine is disposed."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from crmsync import db

_CALLER = contextvars.ContextVar("caller", default="none")


def _insert(value: int) -> Callable[[Connection], tuple[str, str, int]]:
    """A write that inserts `value`; it reports its thread, its context and the rows it saw."""

    def work(conn: Connection) -> tuple[str, str, int]:
        conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": value})
        count = conn.execute(text("SELECT count(*) FROM t")).scalar_one()
        return threading.current_thread().name, _CALLER.get(), int(count)

    return work


async def test_sqlite_writes_share_one_thread_and_survive_a_dispose(tmp_path: Path) -> None:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    try:
        await db.write(engine, lambda conn: conn.execute(text("CREATE TABLE t (v INTEGER)")))

        async def insert(value: int) -> tuple[str, str, int]:
            _CALLER.set(f"caller-{value}")
            return await db.write(engine, _insert(value))

        done = await asyncio.gather(*(insert(v) for v in range(20)))
        names = {name for name, _, _ in done}
        assert len(names) == 1 and names.pop().startswith("crmsync-sqlite-writer")
        assert [caller for _, caller, _ in done] == [f"caller-{v}" for v in range(20)]
        # One at a time: each transaction saw all the ones before it, none after.
        assert sorted(count for _, _, count in done) == list(range(1, 21))

        def fail(conn: Connection) -> None:
            conn.execute(text("INSERT INTO t (v) VALUES (99)"))
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            await db.write(engine, fail)
        rows = await db.write(engine, lambda c: c.execute(text("SELECT v FROM t")).scalars().all())
        assert sorted(rows) == list(range(20))  # the failed transaction left nothing

        old = {t for t in threading.enumerate() if t.name.startswith("crmsync-sqlite-writer")}
        await engine.dispose()
        for thread in old:
            await asyncio.to_thread(thread.join, 10)
            assert not thread.is_alive()
        name, _, count = await db.write(engine, _insert(20))
        assert count == 21 and name.startswith("crmsync-sqlite-writer")
    finally:
        await engine.dispose()
