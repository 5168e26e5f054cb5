"""The PostgreSQL side of the sync loop alone: claim, record, no vendor, no HTTP.

A diagnosis and A/B tool for issue 24 ("PostgreSQL's speed"), not a headline figure. It runs the
queue's own functions (`queue.claim`, `queue.record_then_claim`) the way a worker's lanes do
(`--lanes` of them, batches of `--batch`), every outcome `ok` with an external id, hash and email,
over `--contacts` Selected HubSpot rows, and reports per 10,000 contacts:

- the CPU seconds of the PostgreSQL backends serving the database (from /proc),
- the CPU seconds of this Python process (the worker's share of the queue work: SQLAlchemy,
  asyncpg, building the rows),
- wall seconds.

Variants are compared in one invocation, interleaved (run 1 of each, then run 2, ...), each on a
fresh copy of one template database. A variant is a name plus optional SQL applied to the copy
before the run (`--variant NAME=FILE.sql`, e.g. a migration's statements) and environment
settings for the engine (`--variant-env NAME:KEY=VALUE`). `base` (nothing changed) always runs.

    .venv/bin/python bench/pg_queue_cycle.py --contacts 50000 --repeats 5 \
        --variant fast=/tmp/patch.sql --variant-env fast:CRMSYNC_X=1

With `--explain`, one extra copy runs a few cycles and prints EXPLAIN (ANALYZE, BUFFERS) of the
claim and record statements (captured as sent, with values bound), and the trigger functions'
time (`track_functions`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import text

from benchlib import (
    DEFAULT_PG_URL,
    Database,
    Databases,
    cpu_seconds,
    environment,
    median,
    prepared_database,
    stop_on_sigterm,
    wait_quiet,
)
from crmsync import db
from crmsync.enums import Crm
from crmsync.settings import Settings
from crmsync.sync import queue
from crmsync.sync.state import Claimed, Outcome, RowUpdate


@dataclass
class Result:
    contacts: int
    wall: float
    python_cpu: float
    pg_cpu: float
    others: float

    def per10k(self, value: float) -> float:
        return value * 10_000 / self.contacts


@dataclass
class Variant:
    name: str
    sql: str = ""
    env: dict[str, str] = field(default_factory=dict)
    runs: list[Result] = field(default_factory=list)


async def _backend_pids(admin_url: str, name: str) -> list[int]:
    conn = await asyncpg.connect(admin_url)
    try:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", name)
        return [int(r["pid"]) for r in rows]
    finally:
        await conn.close()


def _cpu(pids: list[int]) -> dict[int, float]:
    found = {}
    for pid in pids:
        try:
            found[pid] = cpu_seconds(pid)
        except OSError:
            pass
    return found


def _updates(batch: list[Claimed]) -> list[RowUpdate]:
    return [
        RowUpdate(
            row.state_id,
            row.contact_id,
            Outcome.ok,
            attempts=0,
            http_status=200,
            external_id=str(10_000_000 + row.state_id),
            synced_hash=uuid.uuid4().hex,
            synced_email=row.payload.email,
        )
        for row in batch
    ]


async def _lane(engine: Any, batch_size: int, done: list[int], stop_at: int = 0) -> None:
    now = dt.datetime.now(dt.UTC)
    token = uuid.uuid4().hex
    batch = await queue.claim(
        engine, Crm.hubspot, batch_size, "bench", token, now, now + dt.timedelta(minutes=2)
    )
    while batch:
        updates = _updates(batch)
        now = dt.datetime.now(dt.UTC)
        next_token = uuid.uuid4().hex
        then = queue.NextClaim(
            Crm.hubspot, batch_size, "bench", next_token, now, now + dt.timedelta(minutes=2)
        )
        timing = queue.Timing("bench", now, 5)
        recorded, batch = await queue.record_then_claim(
            engine, Crm.hubspot, token, updates, now, timing, then
        )
        if recorded.lost:
            raise RuntimeError(f"lost {len(recorded.lost)} rows")
        done[0] += recorded.applied
        token = next_token
        if stop_at and done[0] >= stop_at:
            return


async def _select_all(database: Database) -> int:
    engine = database.engine()
    try:
        async with engine.begin() as conn:
            now = dt.datetime.now(dt.UTC)
            from sqlalchemy import true

            from crmsync.sync.selection import select_contacts

            return await select_contacts(conn, Crm.hubspot, true(), now)
    finally:
        await engine.dispose()


async def _apply_sql(database: Database, sql: str) -> None:
    if not sql.strip():
        return
    engine = database.engine(isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            await raw.driver_connection.execute(sql)  # type: ignore[union-attr]
            await conn.execute(text("VACUUM ANALYZE"))
    finally:
        await engine.dispose()


async def _cycle(database: Database, variant: Variant, args: argparse.Namespace) -> Result:
    await _apply_sql(database, variant.sql)
    selected = await _select_all(database)
    # The variant's settings hold for the whole run: the code may read them at call time too.
    saved = {k: os.environ.get(k) for k in variant.env}
    os.environ.update(variant.env)
    try:
        return await _run(database, selected, args, variant.name)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def _run(database: Database, selected: int, args: argparse.Namespace, name: str) -> Result:
    settings = Settings(database_url=database.url)
    engine = db.engine_for(settings)
    if args.timings:
        _time_statements(engine, name)
    try:
        # Open the lanes' connections before the clock starts (as a running worker has them).
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        assert database.admin_url is not None
        wait_quiet(args.quiet)
        busy0 = _machine_busy()
        pids = await _backend_pids(database.admin_url, database.name)
        before = _cpu(pids)
        py0 = time.process_time()
        t0 = time.perf_counter()
        done = [0]
        await asyncio.gather(*(_lane(engine, args.batch, done) for _ in range(args.lanes)))
        wall = time.perf_counter() - t0
        py = time.process_time() - py0
        pids = await _backend_pids(database.admin_url, database.name)
        after = _cpu(pids)
        pg = sum(after[p] - before.get(p, 0.0) for p in after)
        machine = _machine_busy() - busy0
        others = max(0.0, machine - py - pg) / (wall * (os.cpu_count() or 1))
        if done[0] != selected:
            raise RuntimeError(f"recorded {done[0]} of {selected}")
        return Result(done[0], wall, py, pg, others)
    finally:
        await engine.dispose()


STATEMENT_TIMES: dict[tuple[str, str], list[float]] = {}


def _statement_kind(statement: str) -> str:
    words = statement.split()
    head = " ".join(words[:2])
    if "unnest" in statement:
        head += " (unnest)"
    if "FOR UPDATE" in statement:
        head += " FOR UPDATE"
    if "Processing'" in statement and "MATERIALIZED" in statement:
        head += " expired" if "sync_status = 'Processing'" in statement else " waiting"
    return head


def _time_statements(engine: Any, variant: str) -> None:
    """Client-side time of each statement (send to answer), summed per kind and variant."""
    from sqlalchemy import event

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _start(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        conn.info["t0"] = time.perf_counter()

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def _stop(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        key = (variant, _statement_kind(statement))
        STATEMENT_TIMES.setdefault(key, []).append(time.perf_counter() - conn.info["t0"])

    @event.listens_for(engine.sync_engine, "commit")
    def _commit(conn: Any) -> None:
        conn.info["c0"] = time.perf_counter()


def _machine_busy() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


async def _explain(database: Database, args: argparse.Namespace) -> None:
    """A few cycles with every statement captured, then EXPLAIN ANALYZE of each kind once."""
    await _select_all(database)
    assert database.admin_url is not None
    admin = await asyncpg.connect(database.admin_url)
    await admin.execute(f"ALTER DATABASE {database.name} SET track_functions = 'all'")
    await admin.close()
    engine = db.create_engine(database.url)
    captured: list[tuple[str, Any]] = []
    from sqlalchemy import event

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    done = [0]
    half = args.contacts // 2
    await asyncio.gather(*(_lane(engine, args.batch, done, half) for _ in range(args.lanes)))
    captured.reverse()  # the latest statement of each kind
    seen: set[str] = set()
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        stats = await driver.fetch(
            "SELECT funcname, calls, total_time, self_time FROM pg_stat_user_functions "
            "ORDER BY total_time DESC"
        )
        print(f"trigger functions over {done[0]} contacts (ms):")
        for row in stats:
            print(f"  {row['funcname']}: {row['calls']} calls, total {row['total_time']:.1f}")
        for statement, parameters in captured:
            key = _statement_kind(statement)
            if key in seen or not statement.lstrip().upper().startswith(
                ("UPDATE", "INSERT", "SELECT", "WITH")
            ):
                continue
            seen.add(key)
            tr = driver.transaction()
            await tr.start()
            try:
                plan = await driver.fetch(
                    "EXPLAIN (ANALYZE, BUFFERS) " + statement, *(parameters or ())
                )
            except Exception as exc:
                print(f"--- {statement[:200]}\n  (no plan: {exc})")
                continue
            finally:
                await tr.rollback()
            print("---", statement)
            for row in plan:
                print("   ", row[0])
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lanes", type=int, default=4)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--variant", action="append", default=[], help="NAME=FILE.sql")
    parser.add_argument("--variant-env", action="append", default=[], help="NAME:KEY=VALUE")
    parser.add_argument("--no-base", action="store_true")
    parser.add_argument(
        "--quiet", type=float, default=0.15, help="wait until others use less than this share"
    )
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--timings", action="store_true", help="client-side time per statement")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    args = parser.parse_args()
    stop_on_sigterm()
    variants: dict[str, Variant] = {} if args.no_base else {"base": Variant("base")}
    for spec in args.variant:
        name, _, path = spec.partition("=")
        variants.setdefault(name, Variant(name)).sql = Path(path).read_text() if path else ""
    for spec in args.variant_env:
        name, _, pair = spec.partition(":")
        key, _, value = pair.partition("=")
        variants.setdefault(name, Variant(name)).env[key] = value
    print(environment(args.pg_url))
    with Databases(args.pg_url) as databases:
        template, _ = prepared_database(databases, "postgresql", args.contacts)
        if args.explain:
            copy = databases.create("postgresql", "explain", template=template)
            for variant in variants.values():
                if variant.sql:
                    asyncio.run(_apply_sql(copy, variant.sql))
            asyncio.run(_explain(copy, args))
            databases.drop(copy)
            return
        for repeat in range(args.repeats):
            for variant in variants.values():
                copy = databases.create("postgresql", "cycle", template=template)
                try:
                    result = asyncio.run(_cycle(copy, variant, args))
                finally:
                    databases.drop(copy)
                variant.runs.append(result)
                print(
                    f"run {repeat + 1} {variant.name:>12}: {result.contacts / result.wall:8,.0f}"
                    f" contacts/s; per 10k: PG {result.per10k(result.pg_cpu):.3f} s, python "
                    f"{result.per10k(result.python_cpu):.3f} s; others {result.others:.0%}",
                    flush=True,
                )
    if STATEMENT_TIMES:
        print("\nstatement kinds: calls, total ms (all runs), mean us")
        for (name, kind), times in sorted(STATEMENT_TIMES.items()):
            print(
                f"  {name:>10} {kind:<40} {len(times):6d} {sum(times) * 1000:9.1f} "
                f"{sum(times) / len(times) * 1e6:8.0f}"
            )
    print()
    print(
        "| variant | runs | contacts/s (median) | PG CPU s / 10k (median) | python CPU s / 10k "
        "(median) | PG per run | others (max) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: |")
    for v in variants.values():
        pg = [r.per10k(r.pg_cpu) for r in v.runs]
        py = [r.per10k(r.python_cpu) for r in v.runs]
        rate = [r.contacts / r.wall for r in v.runs]
        print(
            f"| {v.name} | {len(v.runs)} | {median(rate):,.0f} | {median(pg):.3f} | "
            f"{median(py):.3f} | {', '.join(f'{x:.3f}' for x in pg)} | "
            f"{max(r.others for r in v.runs):.0%} |"
        )


if __name__ == "__main__":
    sys.exit(main())
