"""Where the time of a 100,000-contact selection goes (a diagnosis, not a benchmark).

Runs the service's own selection code (`ContactService.select_filtered`, in-process) once with
a statement listener, so the exact SQL it sends is known, then replays each statement:

- PostgreSQL: `EXPLAIN (ANALYZE, BUFFERS)` of every statement inside a transaction that is
  rolled back, so the plans, the time per plan node and the foreign-key trigger time are shown;
- SQLite: each statement timed with the plain sqlite3 module on a copy of the database, then the
  statement that inserts the state rows timed again with one index of `crm_sync_state` dropped at
  a time and with foreign keys off, which prices each index and the foreign-key check; and the
  whole replay again with larger page caches (`CACHE_KIB`), which prices SQLite's 2 MiB default.

    .venv/bin/python bench/selection_diagnose.py [--db sqlite] [--total 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event

from benchlib import DEFAULT_PG_URL, Database, Databases, prepared_database, stop_on_sigterm
from crmsync.contacts.schemas import FilteredRequest
from crmsync.contacts.service import ContactService
from crmsync.settings import Settings

CRMS = ["brevo", "hubspot", "mautic", "n8n"]
Statement = tuple[str, Any]
# Page cache sizes the SQLite replay is repeated with (the default is 2 MiB).
CACHE_KIB = (8 * 1024, 32 * 1024, 128 * 1024)


async def capture_selection(database: Database) -> tuple[float, list[Statement], str]:
    """Select the CORPORATE half for all four CRMs through the service; its seconds, its SQL and
    the seconds each kind of statement took in that run (as planned there, with the state
    table's statistics of before the selection)."""
    engine = database.engine()
    captured: list[Statement] = []
    spent: dict[str, list[float]] = {}
    started_at: list[float] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _capture(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))
        started_at.append(time.perf_counter())

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def _timed(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        kind = _kind(" ".join(statement.split()))
        spent.setdefault(kind, []).append(time.perf_counter() - started_at.pop())

    service = ContactService(engine, Settings(database_url=database.url))
    try:
        started = time.perf_counter()
        await service.select_filtered(
            FilteredRequest(email_type="CORPORATE"), CRMS, "select", False
        )
        seconds = time.perf_counter() - started
    finally:
        await engine.dispose()
    lines = ["seconds per kind of statement in that run (client side, summed over the ranges):"]
    lines += [f"{sum(t):7.3f} s  {len(t):>4} x  {kind}" for kind, t in spent.items()]
    statements = [s for s in captured if not s[0].lstrip().upper().startswith(("BEGIN", "PRAGMA"))]
    return seconds, statements, "\n".join(lines)


async def explain_postgres(database: Database, statements: list[Statement]) -> str:
    """`EXPLAIN (ANALYZE, BUFFERS)` of each captured statement, in a transaction rolled back.

    The filtered selection runs in ranges of contacts (`ContactService._in_chunks`), so the
    same statements come once per range: the plans of the first range are shown whole, then the
    seconds per kind of statement summed over every range, with the triggers' share. Statements
    EXPLAIN cannot take (ANALYZE, the advisory lock and statistics reads that follow the commit)
    are timed plainly.
    """
    engine = database.engine()
    out: list[str] = []
    totals: dict[str, list[float]] = {}
    triggers: dict[str, float] = {}
    try:
        async with engine.connect() as conn:
            # Undo the captured run first, so each replayed insert starts from no rows.
            await conn.exec_driver_sql("DELETE FROM crm_sync_state")
            await conn.commit()
            shown: set[str] = set()
            for statement, parameters in statements:
                flat = " ".join(statement.split())
                kind = _kind(flat)
                if kind == "notify":
                    continue
                if kind in ("analyze", "other"):
                    started = time.perf_counter()
                    await conn.exec_driver_sql(statement, parameters)
                    totals.setdefault(kind, []).append(time.perf_counter() - started)
                    continue
                result = await conn.exec_driver_sql(
                    "EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters
                )
                plan = [row[0] for row in result]
                ms = float(re.findall(r"Execution Time: ([0-9.]+) ms", "\n".join(plan))[0])
                totals.setdefault(kind, []).append(ms / 1000)
                for line in plan:
                    if found := re.match(r"Trigger (.+?): time=([0-9.]+)", line.strip()):
                        name = f"{kind}: {found.group(1)}"
                        triggers[name] = triggers.get(name, 0.0) + float(found.group(2)) / 1000
                if kind not in shown:
                    shown.add(kind)
                    out.append(f"-- {flat[:400]}\n" + "\n".join(plan))
            await conn.rollback()
    finally:
        await engine.dispose()
    summary = ["seconds per kind of statement, summed over the ranges:"]
    for kind, seconds in totals.items():
        summary.append(f"{sum(seconds):7.3f} s  {len(seconds):>4} x  {kind}")
    for name, seconds in triggers.items():
        summary.append(f"{seconds:7.3f} s  trigger {name}")
    return "\n\n".join(out) + "\n\n" + "\n".join(summary)


def _kind(flat: str) -> str:
    """A short name for a captured statement, to sum its kind's time over the ranges."""
    upper = flat.upper()
    if "PG_NOTIFY" in upper or upper.startswith("NOTIFY"):
        return "notify"
    if upper.startswith("ANALYZE"):
        return "analyze"
    if upper.startswith("INSERT INTO CRM_SYNC_STATE"):
        return "insert state rows"
    if upper.startswith("UPDATE CRM_SYNC_STATE"):
        return "update state rows"
    if "FOR UPDATE" in upper:
        return "lock_in_order"
    if upper.startswith("SELECT COUNT(*)") and "FROM CONTACTS" in upper:
        return "count contacts"
    if upper.startswith("SELECT CONTACTS.ID") and "OFFSET" in upper:
        return "range end"
    if upper.startswith(("SELECT", "INSERT", "UPDATE", "DELETE", "WITH")) and "PG_" not in upper:
        return flat[:60]
    return "other"


def time_sqlite(path: Path, statements: list[Statement], cache_kib: int | None = None) -> list[str]:
    """Each statement's seconds on a fresh copy of the database (rows deleted first).

    `cache_kib` sets the connection's page cache (SQLite's default is 2 MiB).
    """
    lines = []
    with contextlib.closing(_fresh(path)) as conn:
        if cache_kib is not None:
            conn.execute(f"PRAGMA cache_size=-{cache_kib}")
        conn.execute("BEGIN IMMEDIATE")
        for statement, parameters in statements:
            started = time.perf_counter()
            cursor = conn.execute(statement, parameters)
            seconds = time.perf_counter() - started
            rows = cursor.rowcount
            lines.append(f"{seconds:7.3f} s  {rows:>7} rows  {' '.join(statement.split())[:160]}")
        started = time.perf_counter()
        conn.commit()
        lines.append(f"{time.perf_counter() - started:7.3f} s  commit")
    return lines


def price_indexes(path: Path, statements: list[Statement]) -> list[str]:
    """The first state-row insert, timed as is, without each index, and without FK checks."""
    insert = next(s for s in statements if "INSERT INTO crm_sync_state" in s[0])
    with contextlib.closing(sqlite3.connect(path)) as conn:
        indexes = [
            (name, sql)
            for name, sql in conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                "AND tbl_name = 'crm_sync_state' AND sql IS NOT NULL"
            )
        ]
    lines = [f"{_timed_insert(path, insert, None, True):7.3f} s  as deployed"]
    for name, _ in indexes:
        lines.append(f"{_timed_insert(path, insert, name, True):7.3f} s  without index {name}")
    lines.append(f"{_timed_insert(path, insert, None, False):7.3f} s  with foreign_keys=OFF")
    everything = [name for name, _ in indexes]
    lines.append(
        f"{_timed_insert(path, insert, everything, False):7.3f} s  no secondary index, no FK check"
    )
    return lines


def _timed_insert(
    path: Path, insert: Statement, drop: str | list[str] | None, foreign_keys: bool
) -> float:
    with contextlib.closing(_fresh(path)) as conn:
        conn.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        for name in [drop] if isinstance(drop, str) else drop or []:
            conn.execute(f"DROP INDEX {name}")
        conn.execute("BEGIN IMMEDIATE")
        started = time.perf_counter()
        conn.execute(*insert)
        conn.commit()
        return time.perf_counter() - started


def _fresh(path: Path) -> sqlite3.Connection:
    """A copy of the database without state rows, configured as crmsync configures SQLite."""
    copy = path.with_name(path.stem + "-diag.db")
    shutil.copyfile(path, copy)
    conn = sqlite3.connect(copy, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("DELETE FROM crm_sync_state")
    return conn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", action="append", choices=("sqlite", "postgresql"))
    parser.add_argument("--total", type=int, default=200_000)
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    args = parser.parse_args()
    stop_on_sigterm()
    with Databases(args.pg_url) as databases:
        for kind in args.db or ["sqlite", "postgresql"]:
            database, _ = prepared_database(databases, kind, args.total, "diag")
            seconds, statements, spent = asyncio.run(capture_selection(database))
            print(f"\n== {database.label}: service select_filtered in-process: {seconds:.2f} s")
            print(spent)
            if kind == "postgresql":
                print(asyncio.run(explain_postgres(database, statements)))
            else:
                assert database.path is not None
                print("statements, replayed with sqlite3:")
                print("\n".join(time_sqlite(database.path, statements)))
                for kib in CACHE_KIB:
                    print(f"the same with a {kib // 1024} MiB page cache:")
                    print("\n".join(time_sqlite(database.path, statements, kib)))
                print("first INSERT ... ON CONFLICT (one CRM, 100,000 rows):")
                print("\n".join(price_indexes(database.path, statements)))
            databases.drop(database)


if __name__ == "__main__":
    main()
