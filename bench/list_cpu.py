"""CPU per API request, in process: the lists of the API load benchmark, one kind at a time.

What `api_load.py` offers the API, without the sync beside it: a migrated SQLite database of
`--contacts` contacts (`benchlib.prepared_database`, analysed as there), every contact selected
for HubSpot through the route, then per request kind `--repeat` requests through the ASGI app
in this process, each timed with `time.process_time` (the CPU of the whole process, SQLite's
included). Prints the median CPU-ms per kind and, with `--explain`, SQLite's EXPLAIN QUERY PLAN
and CPU-ms of each statement a request ran.

`--ab OTHER_SRC` runs the same measurement with another checkout's `src` (e.g. the revision
before a change, from `git archive`) in interleaved subprocesses (A B B A ...), `--pairs` pairs,
each on a database its own migrations built: a before/after of the list queries.

```
.venv/bin/python bench/list_cpu.py --explain
.venv/bin/python bench/list_cpu.py --ab /tmp/base/src --pairs 5
```
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parent))

SECRET = "bench-secret-" + "x" * 60
BASE = "/api/v3/contacts"

KINDS: dict[str, list[dict[str, Any]]] = {
    "status New": [{"hubspot_sync_status": "New", "offset": o} for o in (0, 100, 450)],
    "status Selected": [{"hubspot_sync_status": "Selected", "offset": o} for o in (0, 100, 450)],
    "status Complete": [{"hubspot_sync_status": "Complete", "offset": o} for o in (0, 100, 450)],
    "email_type FREE": [{"email_type": "FREE", "offset": o} for o in (0, 100, 450)],
    "email_type CORPORATE": [{"email_type": "CORPORATE", "offset": o} for o in (0, 100, 450)],
    "search leadN": [{"search": f"lead{n}", "offset": o} for n in (7, 42, 93) for o in (0, 100)],
    "(no filter)": [{"offset": o} for o in (0, 100, 450)],
}


async def measure(path: Path, repeat: int, explain: bool) -> dict[str, Any]:
    from crmsync.api.app import create_app
    from crmsync.auth import mint_token
    from crmsync.settings import Settings

    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{path}",
        jwt_secret_key=SECRET,
        state_dir=path.parent / ".crmsync",
        _env_file=None,  # type: ignore[call-arg]
    )
    app = create_app(settings, SECRET)
    token = mint_token(SECRET, "bench", dt.timedelta(hours=1))
    statements: list[tuple[str, Any, float]] = []
    started: dict[int, float] = {}
    engine = app.state.engine if hasattr(app.state, "engine") else None
    result: dict[str, Any] = {"cpu_ms": {}, "plans": {}}
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as c:
        r = await c.put(f"{BASE}/crm/select/filtered", json={"all": True, "crms": ["hubspot"]})
        assert r.status_code == 200, r.text
        # The selection's pages folded into the database file: otherwise how many of them a
        # list reads through the WAL depends on where its last automatic checkpoint fell.
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if explain:
            from sqlalchemy import Engine

            def before(conn: Any, cursor: Any, stmt: str, params: Any, ctx: Any, many: Any) -> None:
                started[id(cursor)] = time.process_time()

            def after(conn: Any, cursor: Any, stmt: str, params: Any, ctx: Any, many: Any) -> None:
                spent = time.process_time() - started.pop(id(cursor), time.process_time())
                statements.append((stmt, params, spent))

            event.listen(Engine, "before_cursor_execute", before)
            event.listen(Engine, "after_cursor_execute", after)
        for kind, variants in KINDS.items():
            spent: list[float] = []
            for i in range(repeat):
                params = {"limit": 50, **variants[i % len(variants)]}
                statements.clear()
                t0 = time.process_time()
                r = await c.get(BASE, params=params)
                spent.append(time.process_time() - t0)
                assert r.status_code == 200, r.text
                if explain and i < len(variants):
                    result["plans"].setdefault(kind, []).append(
                        {
                            "params": params,
                            "total": r.headers["x-total-count"],
                            "statements": [(s, list(p), t) for s, p, t in statements],
                        }
                    )
            result["cpu_ms"][kind] = statistics.median(spent) * 1000
    del engine
    return result


def prepare(contacts: int) -> Path:
    from benchlib import Databases, prepared_database

    databases = Databases()
    database, _ = prepared_database(databases, "sqlite", contacts, "listcpu")
    assert database.path is not None
    return database.path


def explain_plans(path: Path, plans: dict[str, Any]) -> None:
    db = sqlite3.connect(path)
    for kind, requests in plans.items():
        print(f"\n## {kind}")
        for req in requests[:1]:
            print(f"  {req['params']}  X-Total-Count {req['total']}")
            for stmt, params, spent in req["statements"]:
                print(f"  -- {spent * 1000:.1f} ms: {' '.join(stmt.split())[:220]}")
                try:
                    rows = db.execute("EXPLAIN QUERY PLAN " + stmt, params).fetchall()
                except sqlite3.Error as exc:
                    print(f"     (no plan: {exc})")
                    continue
                for row in rows:
                    print(f"     {row[-1]}")
    db.close()


def child(args: argparse.Namespace) -> None:
    path = prepare(args.contacts)
    try:
        result = asyncio.run(measure(path, args.repeat, args.explain))
        if args.explain:
            explain_plans(path, result["plans"])
        print("RESULT " + json.dumps(result["cpu_ms"]))
    finally:
        if args.keep:
            print(f"kept {path}")
        else:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ab(args: argparse.Namespace) -> None:
    import benchlib

    here = Path(__file__).resolve().parent.parent / "src"
    sides = {"A (before)": Path(args.ab).resolve(), "B (after)": here}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
    others: list[float] = []
    order = list(sides)
    for pair in range(args.pairs):
        for label in order if pair % 2 == 0 else order[::-1]:
            env = {**os.environ, "PYTHONPATH": str(sides[label])}
            cmd = [sys.executable, __file__, "--child", "--contacts", str(args.contacts)]
            cmd += ["--repeat", str(args.repeat)]
            busy0, _ = benchlib.busy_jiffies()
            ours0 = _children_cpu()
            t0 = time.monotonic()
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            wall = time.monotonic() - t0
            busy1, _ = benchlib.busy_jiffies()
            machine = (busy1 - busy0) / os.sysconf("SC_CLK_TCK")
            share = benchlib.others_share(machine, _children_cpu() - ours0, wall)
            line = next(x for x in out.splitlines() if x.startswith("RESULT "))
            runs[label].append(json.loads(line.removeprefix("RESULT ")))
            others.append(share)
            print(f"pair {pair + 1} {label}: {line} ({wall:.0f} s, others {share:.0%})", flush=True)
    print(f"\nothers' CPU (share of the CPUs): {', '.join(f'{x:.0%}' for x in others)}")
    print("\n| request | A CPU-ms (median of runs) | B CPU-ms | B faster in |")
    print("|---|---:|---:|---:|")
    a, b = runs["A (before)"], runs["B (after)"]
    for kind in KINDS:
        am = statistics.median(r[kind] for r in a)
        bm = statistics.median(r[kind] for r in b)
        wins = sum(rb[kind] < ra[kind] for ra, rb in zip(a, b, strict=True))
        print(f"| {kind} | {am:.1f} | {bm:.1f} | {wins} of {len(a)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--ab", metavar="OTHER_SRC")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the database (its path printed)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ab:
        ab(args)
    else:
        child(args)


if __name__ == "__main__":
    main()
