"""Issue 19: `crmsync import` of a large CSV file, time and peak memory.

Targets: 100,000 rows in under 20 s on SQLite; 1,000,000 rows with peak RSS under 200 MB
(200 x 10^6 bytes; the table also shows MiB).

What runs: a fresh migrated database; a CSV file of `--rows` realistic rows written to a temporary
directory (the customer's field names in "Title Case" variants: Email, Full Name, Phone Number,
Website, Email Type, Has Gmail, Context, with accented names, phones in several formats, one row
in 1,000 an invalid email and one in 500 a repeated email in another case); then
`crmsync import FILE` as a subprocess, twice: the first run creates every contact, the second
(the same file again) must report 0 created and 0 updated. Each run's wall time is measured from
start to exit; its CPU time (user + system) and peak RSS are the kernel's figures for the process
(`wait4`'s rusage: ru_utime + ru_stime, ru_maxrss). Checked: the summary's counts against what
the file holds, and the number of contacts in the database.

    .venv/bin/python bench/import_contacts.py [--db sqlite] [--rows 100000] [--chunk-size 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import subprocess
import time
from pathlib import Path

from sqlalchemy import func, select

from benchlib import (
    CRMSYNC,
    DEFAULT_PG_URL,
    Databases,
    Service,
    environment,
    migrate,
    table,
)
from crmsync.tables import contacts

HEADER = ["Email", "Full Name", "Phone Number", "Website", "Email Type", "Has Gmail", "Context"]
FIRST = ["José", "Zoë", "Ana", "Björn", "Chloé", "Łukasz", "Mary", "Søren", "Ines", "Wei"]
LAST = ["Müller", "Ødegård", "García", "Dubois", "O'Brien", "Nowak", "Smith", "Rossi"]
PHONES = ["+33 1 23 45 {:02d} {:02d}", "(555) 01{:02d}-{:02d}00", "+49 30 1234{:02d}{:02d}"]
TYPES = ["CORPORATE", "FREE", "SERVICE", "UNKNOWN"]


def write_csv(path: Path, rows: int, seed: int = 19) -> tuple[int, int]:
    """The benchmark file; returns (invalid rows, repeated rows)."""
    rng = random.Random(seed)
    invalid = repeated = 0
    with path.open("w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(HEADER)
        for i in range(rows):
            email = f"lead{i}@company{i % 997}.example"
            if i % 1000 == 999:
                email, invalid = f"lead{i}-at-company.example", invalid + 1
            elif i % 500 == 499:
                email, repeated = f"LEAD{i - 1}@Company{(i - 1) % 997}.example", repeated + 1
            name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
            phone = rng.choice(PHONES).format(i % 100, (i // 100) % 100)
            site = f"https://company{i % 997}.example/team"
            kind = TYPES[i % len(TYPES)]
            context = f"Found on the team page, row {i}" if i % 3 == 0 else ""
            out.writerow([email, name, phone, site, kind, "yes" if i % 7 == 0 else "no", context])
    return invalid, repeated


def run_import(
    service: Service, path: Path, chunk_size: int
) -> tuple[float, float, int, dict[str, int]]:
    """One `crmsync import --json` run: wall and CPU seconds, peak RSS in bytes, the summary."""
    args = [CRMSYNC, "import", str(path), "--json", "--chunk-size", str(chunk_size)]
    out, err = service.workdir / "import.out", service.workdir / "import.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(
            args, cwd=service.workdir, env=service.environ(), stdout=stdout, stderr=stderr
        )
        # wait4, not Popen.wait: it also returns the child's own peak resident set.
        _pid, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"crmsync import failed: {err.read_text()[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return seconds, cpu, usage.ru_maxrss * 1024, json.loads(out.read_text())


async def contact_count(url: str) -> int:
    from crmsync import db

    engine = db.create_engine(url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(contacts))).scalar())
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=2_000)
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    args = parser.parse_args()

    with Databases(args.pg_url) as databases:
        database = databases.create(args.db, "import")
        asyncio.run(migrate(database))
        work = databases.tmp / "work"
        work.mkdir()
        path = databases.tmp / "leads.csv"
        started = time.perf_counter()
        invalid, repeated = write_csv(path, args.rows)
        print(
            f"wrote {args.rows:,} rows ({path.stat().st_size / 1e6:.1f} MB) in "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
        service = Service(database, work)
        distinct = args.rows - invalid - repeated
        results = []
        for run in ("first", "again"):
            seconds, cpu, peak, summary = run_import(service, path, args.chunk_size)
            expected = {
                "rows": args.rows,
                "created": distinct if run == "first" else 0,
                "updated": 0,
                "unchanged": 0 if run == "first" else distinct,
                "duplicates": repeated,
                "rejected": invalid,
            }
            got = {key: summary[key] for key in expected}
            if got != expected:
                raise RuntimeError(f"{run} import: summary {got}, expected {expected}")
            results.append((run, seconds, cpu, peak))
        stored = asyncio.run(contact_count(database.url))
        if stored != distinct:
            raise RuntimeError(f"{stored} contacts stored, expected {distinct}")

    print(environment(args.pg_url))
    print(
        table(
            ["database", "rows", "run", "seconds", "CPU s", "rows/s", "peak RSS MB", "peak MiB"],
            [
                [
                    database.label,
                    f"{args.rows:,}",
                    run,
                    f"{seconds:.1f}",
                    f"{cpu:.1f}",
                    f"{args.rows / seconds:,.0f}",
                    f"{peak / 1e6:.0f}",
                    f"{peak / 2**20:.0f}",
                ]
                for run, seconds, cpu, peak in results
            ],
            right=[1, 3, 4, 5, 6, 7],
        )
    )


if __name__ == "__main__":
    main()
