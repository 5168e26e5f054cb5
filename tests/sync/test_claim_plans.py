"""The claim reads each kind of due row through the partial index meant for it.

A partial index serves a query only if the planner can prove the query's condition implies the
index's predicate. With the statuses as bound parameters it cannot (SQLite, and PostgreSQL's
generic plan of a prepared statement, which asyncpg's statement cache runs after five calls):
a claim then reads and sorts every due row to take the first hundred. So each statement is
planned here as the driver runs it, with its parameters, and on PostgreSQL as a generic plan.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.sync import claim

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
VALUES = {"claim_crm": "hubspot", "now": NOW.isoformat(), "limit": 100}


def _plan(conn: Connection, statement: Any) -> str:
    compiled = statement.compile(dialect=conn.dialect)
    values = {**compiled.params, **VALUES}
    args = [values[name] for name in compiled.positiontup or []]
    if conn.dialect.name == "sqlite":
        found = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", tuple(args))
        return "\n".join(str(row[-1]) for row in found)
    conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
    # Only the index can answer without a sort; a scan of the table may not stand in for it.
    conn.exec_driver_sql("SET enable_seqscan = off")
    conn.exec_driver_sql(f"PREPARE claim_probe AS {compiled}")
    try:
        literals = ", ".join(str(a) if isinstance(a, int) else f"'{a}'" for a in args)
        found = conn.exec_driver_sql(f"EXPLAIN EXECUTE claim_probe({literals})")
        return "\n".join(str(row[0]) for row in found)
    finally:
        conn.exec_driver_sql("DEALLOCATE claim_probe")


async def test_the_claim_reads_each_kind_of_due_row_from_its_partial_index(
    engine: AsyncEngine,
) -> None:
    pg = engine.dialect.name == "postgresql"
    expected = {
        # Leases that ran out: the rows in flight only on PostgreSQL (migration 0013).
        "ix_crm_sync_state_expiry" if pg else "ix_crm_sync_state_queue": claim._EXPIRED,
        "ix_crm_sync_state_due": claim._WAITING_DUE,
    }
    async with engine.connect() as conn:
        for index, statement in expected.items():
            plan = await conn.run_sync(_plan, statement)
            assert index in plan, plan
            assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan
