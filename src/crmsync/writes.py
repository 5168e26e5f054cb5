"""What the API's write transactions need under load: retrying a transaction PostgreSQL
aborted to break a deadlock or a serialization conflict, and fresh planner statistics after a
write that changed many rows.

Deadlocks are prevented where they can be (every multi-row write takes its rows in one global
order, `sqlutil.lock_in_order`), but a person's write still meets the worker's, which takes its
rows in its own order. PostgreSQL then aborts one transaction (SQLSTATE 40P01, or 40001 for a
serialization failure); nothing of it was written, so running it again is safe and is what a
client would have to do. Here it is done a few times before answering, so the client never
sees a 500 for it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")
log = logging.getLogger(__name__)

# deadlock_detected, serialization_failure
CONFLICT_SQLSTATES = frozenset({"40P01", "40001"})
# Overlapping selections from many clients can meet in several deadlocks in a row on a loaded
# host (5 attempts were not always enough in the suite); the wait between attempts stops
# doubling at 32 times the first, so ten attempts wait about 3 s in all at most.
ATTEMPTS = 10
MAX_DOUBLINGS = 5
# Rows a process may change in a table before it refreshes the table's statistics: at least
# this many, and a tenth of the rows the table had when last analysed (autovacuum's own default
# fraction), so an import of a million rows analyses a few times, not once per chunk.
ANALYZE_AFTER_ROWS = 1_000
ANALYZE_FRACTION = 0.1
# The columns whose statistics the plans of the lists and counts read from a table that changed
# in bulk (row estimates per CRM and status, and the join to the contacts). The answer waits
# for the ANALYZE: every other column's statistics are left to autovacuum, which takes them
# later anyway, and sampling fewer columns shortens the wait (bench/README.md, issue 24).
ANALYZED_COLUMNS = {"crm_sync_state": ("contact_id", "crm", "sync_status", "next_attempt_at")}


def is_write_conflict(exc: BaseException) -> bool:
    """Whether `exc` is PostgreSQL aborting a transaction to break a deadlock or a
    serialization conflict (the transaction wrote nothing; running it again is safe)."""
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code in CONFLICT_SQLSTATES


async def retry_conflicts(
    work: Callable[[], Awaitable[T]], what: str, attempts: int = ATTEMPTS
) -> T:
    """Run `work()` (one whole transaction), again when PostgreSQL aborted it for a conflict.

    Waits a few random milliseconds between attempts (doubling, up to a bound), so that the two
    transactions of a deadlock do not meet again in step. After `attempts` the last error is raised.
    """
    for attempt in range(1, attempts + 1):
        try:
            return await work()
        except DBAPIError as exc:
            if not is_write_conflict(exc) or attempt == attempts:
                raise
            code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
            log.info("%s: conflict with another transaction (%s), attempt %d", what, code, attempt)
            await asyncio.sleep(random.uniform(0.005, 0.02) * 2 ** min(attempt, MAX_DOUBLINGS))
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class Statistics:
    """Keeps the planner's statistics of the tables this process writes in bulk up to date.

    PostgreSQL plans from statistics taken when a table was last analysed. Right after a large
    selection the state table may hold tens of thousands of rows the statistics do not know of,
    and "contacts whose HubSpot status is New" was then planned as a nested loop re-reading every
    state row per contact: 5.7 s for an empty page at 20,000 contacts (tests/api/
    test_load_safety.py). Autovacuum analyses such a table only after a delay; this analyses it
    right after the write, before the answer, once `ANALYZE_AFTER_ROWS` rows changed. One
    ANALYZE of a table at a time per process (two at once can fail with "tuple concurrently
    updated"), and across processes an advisory lock skips it when another one is at it. A
    failure is logged, never raised: the write it follows is committed.

    SQLite's planner is not led astray the same way (measured in the same test), and its
    statistics would change plans tuned without them (`repository.in_range`): nothing is done.
    """

    engine: AsyncEngine
    threshold: int = ANALYZE_AFTER_ROWS
    changed: dict[str, int] = field(default_factory=dict)
    known: dict[str, float] = field(default_factory=dict)  # rows at the last ANALYZE
    _running: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def wrote(self, tables: Sequence[str], rows: int) -> None:
        """`rows` rows of `tables` changed and committed: analyse those that changed enough."""
        if self.engine.dialect.name != "postgresql" or rows <= 0:
            return
        for table in tables:
            self.changed[table] = self.changed.get(table, 0) + rows
            due = max(self.threshold, self.known.get(table, 0) * ANALYZE_FRACTION)
            if self.changed[table] >= due:
                await self._analyze(table)

    async def _analyze(self, table: str) -> None:
        lock = self._running.setdefault(table, asyncio.Lock())
        if lock.locked():
            return  # this process is at it now; the rows counted so far wait for the next one
        async with lock:
            pending, self.changed[table] = self.changed[table], 0
            try:
                async with self.engine.connect() as conn:
                    key = f"crmsync analyze {table}"
                    got = await conn.scalar(
                        text("SELECT pg_try_advisory_xact_lock(hashtext(:key))"), {"key": key}
                    )
                    if got:
                        columns = ANALYZED_COLUMNS.get(table)
                        target = f"{table} ({', '.join(columns)})" if columns else table
                        await conn.execute(text(f"ANALYZE {target}"))
                    rows = await conn.scalar(
                        text("SELECT reltuples FROM pg_class WHERE oid = CAST(:t AS regclass)"),
                        {"t": table},
                    )
                    await conn.commit()
                self.known[table] = float(rows or 0)
            except Exception:  # statistics are an optimisation; the write is committed
                self.changed[table] = self.changed.get(table, 0) + pending
                log.warning("ANALYZE %s failed", table, exc_info=True)
