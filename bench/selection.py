"""Issue 2: select 100,000 contacts for all four CRMs through `PUT /crm/select/filtered`.

Target: under 3 s on SQLite on the 2-core machine (PostgreSQL measured alongside).

For each database: a fresh database gets the schema (Alembic) and `--total` contacts (SQLite:
through the repository; PostgreSQL: COPY), half of them CORPORATE, then VACUUM ANALYZE / ANALYZE.
`crmsync serve --no-worker` runs as a subprocess (no worker, so only the request is measured) and
the benchmark sends, over real HTTP,
`{"email_type": "CORPORATE", "crms": [all four], "action": "select"}`, which matches
`--total / 2` contacts. The time is the request's wall time, send to full answer.
A pair of requests during which other work used over 10% of the CPUs is repeated.

Each repetition works on a fresh copy of that database (a file copy for SQLite, CREATE DATABASE
... TEMPLATE for PostgreSQL) with its own `crmsync serve`, and times two requests:
- first select: no state rows yet, 4 x N rows are inserted;
- re-select: the same request again, every row exists and is updated (ON CONFLICT).

    .venv/bin/python bench/selection.py [--db sqlite --db postgresql] [--total 200000]
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from benchlib import (
    DEFAULT_PG_URL,
    Api,
    CpuMeter,
    Database,
    Databases,
    Service,
    environment,
    least_disturbed,
    median,
    others_share,
    postgres_backends,
    prepared_database,
    stop_on_sigterm,
    table,
    wait_quiet,
)

CRMS = ("brevo", "hubspot", "mautic", "n8n")
TARGET_SECONDS = 3.0


@dataclass
class Result:
    database: str
    selected: int
    load_seconds: float
    first: list[float]
    again: list[float]
    others: list[float]  # share of the CPUs other work used during each timed request


def timed_select(api: Api, database: Database, expected: int) -> tuple[float, float]:
    """One select request: its seconds, and the share of the CPUs others used meanwhile."""
    wait_quiet()
    ours = [os.getpid(), api.process.pid, *postgres_backends(database)]
    meter = CpuMeter()
    meter.start(ours)
    seconds, answer = api.select(CRMS, email_type="CORPORATE")
    used, machine = meter.stop(ours)
    if answer["updated_count"] != expected or answer["queued_count"] != expected * len(CRMS):
        raise RuntimeError(f"unexpected selection answer: {answer}")
    return seconds, others_share(machine, sum(used.values()), seconds)


def select_pair(
    databases: Databases, template: Database, expected: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """On a fresh copy of the template: (first select, re-select), each (seconds, others)."""
    database = databases.create(template.kind, "run", template=template)
    work = databases.tmp / f"{database.name}-work"
    work.mkdir()
    api = Api(Service(database, work), worker=False)
    try:
        return timed_select(api, database, expected), timed_select(api, database, expected)
    finally:
        api.close()
        databases.drop(database)


def bench_one(databases: Databases, kind: str, args: argparse.Namespace) -> Result:
    template, load_seconds = prepared_database(databases, kind, args.total, "select")
    expected = args.total // 2
    first: list[float] = []
    again: list[float] = []
    others: list[float] = []
    try:
        for run in range(args.repeats):
            pair = least_disturbed(
                lambda: select_pair(databases, template, expected),
                lambda p: max(p[0][1], p[1][1]),
                template.label,
            )
            for times, (seconds, other) in zip((first, again), pair, strict=True):
                times.append(seconds)
                others.append(other)
            print(
                f"  {template.label} run {run + 1}: first select {first[-1]:.2f} s, "
                f"re-select {again[-1]:.2f} s (others used {max(others[-2:]):.0%} of the CPUs)",
                flush=True,
            )
    finally:
        databases.drop(template)
    return Result(template.label, expected, load_seconds, first, again, others)


def report(results: list[Result], args: argparse.Namespace) -> str:
    rows = []
    for r in results:
        verdict = ""
        if r.database == "SQLite":
            met = median(r.first) < TARGET_SECONDS
            verdict = f"{'met' if met else 'MISSED'} (< {TARGET_SECONDS:g} s)"
        rows.append(
            (
                r.database,
                f"{r.selected:,}",
                f"{r.selected * len(CRMS):,}",
                f"{median(r.first):.2f}",
                f"{min(r.first):.2f}-{max(r.first):.2f}",
                f"{median(r.again):.2f}",
                f"{min(r.again):.2f}-{max(r.again):.2f}",
                f"{max(r.others):.0%}",
                verdict or "-",
            )
        )
    headers = (
        "database",
        "contacts selected",
        "state rows",
        "first select s (median)",
        "min-max",
        "re-select s (median)",
        "min-max",
        "others' CPU (max)",
        "target",
    )
    return "\n".join(
        [
            environment(args.pg_url),
            f"{args.total:,} contacts in the table, {args.repeats} runs per database",
            "",
            table(headers, rows, right=(1, 2, 3, 4, 5, 6, 7)),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--db",
        action="append",
        choices=("sqlite", "postgresql"),
        help="database(s) to run on (repeatable; default both)",
    )
    parser.add_argument("--total", type=int, default=200_000, help="contacts in the table")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server (no db)")
    args = parser.parse_args()
    stop_on_sigterm()
    args.db = args.db or ["sqlite", "postgresql"]
    with Databases(args.pg_url) as databases:
        results = []
        for kind in args.db:
            print(f"{kind}: loading {args.total:,} contacts ...", flush=True)
            results.append(bench_one(databases, kind, args))
    print()
    print(report(results, args))


if __name__ == "__main__":
    main()
