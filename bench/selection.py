"""Issue 2: select 100,000 contacts for all four CRMs through `PUT /crm/select/filtered`.

Target: under 3 s on the 2-core machine, on SQLite (issue 2) and on PostgreSQL (issue 24).

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

An interleaved A/B of revisions: `--rev LABEL=path/to/crmsync` (repeatable; each a tree's
`.venv/bin/crmsync`, so its code). Every repetition then runs each revision in turn on its own
fresh copy of the same template, the order reversed every other repetition (`--schema REV`
stops the template at an older revision's schema; each `crmsync serve` upgrades its copy on
start); the table has a row per database and revision, with the CPU seconds crmsync and its
PostgreSQL backends used for the first select (the figure the machine's other load disturbs
least).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

import benchlib
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
    revision: str = "-"
    first_cpu: list[float] = field(default_factory=list)  # ours: crmsync + its backends


def timed_select(api: Api, database: Database, expected: int) -> tuple[float, float, float]:
    """One select request: its seconds, the share of the CPUs others used meanwhile, and the
    CPU seconds crmsync and its PostgreSQL backends used (the benchmark's own client left out)."""
    wait_quiet()
    ours = [os.getpid(), api.process.pid, *postgres_backends(database)]
    meter = CpuMeter()
    meter.start(ours)
    seconds, answer = api.select(CRMS, email_type="CORPORATE")
    # Backends opened during the request count too, from zero (their whole life is in it); a
    # negated postmaster pid (its reaped children) only if it was counted from the start.
    opened = [pid for pid in postgres_backends(database) if pid > 0 and pid not in ours]
    used, machine = meter.stop([*ours, *opened])
    if answer["updated_count"] != expected or answer["queued_count"] != expected * len(CRMS):
        raise RuntimeError(f"unexpected selection answer: {answer}")
    crmsync = sum(cpu for pid, cpu in used.items() if pid != os.getpid())
    return seconds, others_share(machine, sum(used.values()), seconds), crmsync


Timed = tuple[float, float, float]


def select_pair(databases: Databases, template: Database, expected: int) -> tuple[Timed, Timed]:
    """On a fresh copy of the template: (first select, re-select), each (seconds, others, our
    CPU seconds)."""
    database = databases.create(template.kind, "run", template=template)
    work = databases.tmp / f"{database.name}-work"
    work.mkdir()
    api = Api(Service(database, work), worker=False)
    try:
        return timed_select(api, database, expected), timed_select(api, database, expected)
    finally:
        api.close()
        databases.drop(database)


def bench_one(
    databases: Databases, kind: str, args: argparse.Namespace, revisions: dict[str, str]
) -> list[Result]:
    template, load_seconds = prepared_database(databases, kind, args.total, "select")
    expected = args.total // 2
    results = {
        label: Result(template.label, expected, load_seconds, [], [], [], label)
        for label in revisions
    }
    try:
        for run in range(args.repeats):
            order = list(revisions) if run % 2 == 0 else list(reversed(revisions))
            for label in order:
                benchlib.CRMSYNC = revisions[label]
                pair = least_disturbed(
                    lambda: select_pair(databases, template, expected),
                    lambda p: max(p[0][1], p[1][1]),
                    template.label,
                )
                result = results[label]
                for times, (seconds, other, _) in zip(
                    (result.first, result.again), pair, strict=True
                ):
                    times.append(seconds)
                    result.others.append(other)
                result.first_cpu.append(pair[0][2])
                name = "" if label == "-" else f" {label}"
                print(
                    f"  {template.label}{name} run {run + 1}: first select "
                    f"{result.first[-1]:.2f} s ({result.first_cpu[-1]:.2f} CPU s), re-select "
                    f"{result.again[-1]:.2f} s (others used {max(result.others[-2:]):.0%} "
                    "of the CPUs)",
                    flush=True,
                )
    finally:
        databases.drop(template)
    return list(results.values())


def report(results: list[Result], args: argparse.Namespace) -> str:
    rows = []
    for r in results:
        met = median(r.first) < TARGET_SECONDS
        verdict = f"{'met' if met else 'MISSED'} (< {TARGET_SECONDS:g} s)"
        rows.append(
            (
                r.database,
                r.revision,
                f"{r.selected:,}",
                f"{r.selected * len(CRMS):,}",
                f"{median(r.first):.2f}",
                f"{min(r.first):.2f}-{max(r.first):.2f}",
                f"{median(r.first_cpu):.2f}",
                f"{median(r.again):.2f}",
                f"{min(r.again):.2f}-{max(r.again):.2f}",
                f"{max(r.others):.0%}",
                verdict,
            )
        )
    headers = (
        "database",
        "revision",
        "contacts selected",
        "state rows",
        "first select s (median)",
        "min-max",
        "first select CPU s (median)",
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
            table(headers, rows, right=(2, 3, 4, 5, 6, 7, 8, 9)),
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
    parser.add_argument("--rev", action="append", default=[], help="LABEL=path/to/crmsync")
    parser.add_argument(
        "--schema", default="head", help="migrate the template only this far (an older --rev)"
    )
    args = parser.parse_args()
    # Each revision's `crmsync serve` upgrades its copy on start, before the timed request.
    benchlib.SCHEMA = args.schema
    revisions = dict(item.split("=", 1) for item in args.rev) or {"-": benchlib.CRMSYNC}
    stop_on_sigterm()
    args.db = args.db or ["sqlite", "postgresql"]
    with Databases(args.pg_url) as databases:
        results = []
        for kind in args.db:
            print(f"{kind}: loading {args.total:,} contacts ...", flush=True)
            results += bench_one(databases, kind, args, revisions)
    print()
    print(report(results, args))


if __name__ == "__main__":
    main()
