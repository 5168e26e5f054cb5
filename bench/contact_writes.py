"""What writing contacts costs through the API, on PostgreSQL (or SQLite).

No target: this measures what the triggers behind the exact counts add to every write (count
deltas, migration 0003; the change log and its (email, name) images, migrations 0005-0006), so a
change to them can be compared side by side with the revision before.

What runs: a fresh database gets the schema (Alembic) and `--contacts` contacts (COPY on
PostgreSQL), VACUUM ANALYZE, then `crmsync serve --no-worker` as a subprocess, and over HTTP:
- import: `--batches` `POST /contacts/bulk` requests of 10,000 new contacts each;
- rename: the same number of bulk requests of 10,000 existing contacts with a new name each;
- status: `PUT /contacts/status/filtered` on the FREE contacts (30%), alternately Queued and
  New, `--batches` times;
- edit: `--edits` `PATCH /contacts/{id}` of one contact's name, one at a time.
Each figure is wall time from send to full answer; a step's median (edits: p50 and p95).

    .venv/bin/python bench/contact_writes.py [--db postgresql] [--contacts 200000]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import httpx

from benchlib import (
    DEFAULT_PG_URL,
    Api,
    Databases,
    Service,
    contact_email,
    environment,
    median,
    percentile,
    prepared_database,
    stop_on_sigterm,
    table,
    wait_quiet,
)

BULK = 10_000


def timed(client: httpx.Client, method: str, path: str, body: Any) -> float:
    started = time.perf_counter()
    response = client.request(method, f"/api/v3/contacts{path}", json=body)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"answered {response.status_code}: {response.text[:300]}")
    return seconds


def bulk_rows(first: int, name: str) -> list[dict[str, Any]]:
    return [{"email": contact_email(i), "name": f"{name} {i}"} for i in range(first, first + BULK)]


def run(args: argparse.Namespace) -> dict[str, list[float]]:
    with Databases(args.pg_url) as databases:
        database, _load = prepared_database(databases, args.db, args.contacts, "writes")
        work = databases.tmp / "work"
        work.mkdir()
        api = Api(Service(database, work), worker=False)
        client = api.client
        steps: dict[str, list[float]] = {"import": [], "rename": [], "status": [], "edit": []}
        try:
            wait_quiet()
            for n in range(args.batches):
                rows = bulk_rows(args.contacts + n * BULK, "New")
                steps["import"].append(timed(client, "POST", "/bulk", {"contacts": rows}))
            for n in range(args.batches):
                rows = bulk_rows(n * BULK, f"Renamed{n}")
                steps["rename"].append(timed(client, "POST", "/bulk", {"contacts": rows}))
            for n in range(args.batches):
                body = {"status": "Queued" if n % 2 == 0 else "New", "email_type": "FREE"}
                steps["status"].append(timed(client, "PUT", "/status/filtered", body))
            edited = client.get("/api/v3/contacts", params={"limit": "1"}).json()[0]["id"]
            for n in range(args.edits):
                name = {"name": f"Edited {n}"}
                steps["edit"].append(timed(client, "PATCH", f"/{edited}", name))
        finally:
            api.close()
    return steps


def report(steps: dict[str, list[float]], args: argparse.Namespace) -> str:
    ms = {k: [v * 1000 for v in values] for k, values in steps.items()}
    rows = [
        (
            f"import ({BULK:,} new per request)",
            len(ms["import"]),
            f"{median(ms['import']):.0f}",
            "-",
        ),
        (f"rename ({BULK:,} existing)", len(ms["rename"]), f"{median(ms['rename']):.0f}", "-"),
        ("status/filtered (FREE, 30%)", len(ms["status"]), f"{median(ms['status']):.0f}", "-"),
        (
            "edit one contact (PATCH)",
            len(ms["edit"]),
            f"{median(ms['edit']):.1f}",
            f"{percentile(ms['edit'], 95):.1f}",
        ),
    ]
    return "\n".join(
        [
            environment(args.pg_url),
            f"{args.contacts:,} contacts on {args.db} before the writes",
            "",
            table(("write", "requests", "median ms", "p95 ms"), rows, right=(1, 2, 3)),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--contacts", type=int, default=200_000)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--edits", type=int, default=200)
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    args = parser.parse_args()
    stop_on_sigterm()
    steps = run(args)
    print(report(steps, args))


if __name__ == "__main__":
    main()
