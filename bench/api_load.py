"""Issue 23: the API under load while a large selection syncs.

Target: 50 concurrent API clients listing, editing, selecting and retrying overlapping sets
while 50,000 contacts sync: API p95 under 200 ms and max under 2 s, on SQLite and on
PostgreSQL, zero errors, no lost update.

What runs, per database:
- a database with `--contacts` contacts (`benchlib.prepared_database`: schema by Alembic, rows
  through the repository, analysed);
- the sandbox in a subprocess (no rate limits, crmsync's custom fields), `crmsync serve
  --no-worker` (the API) and one `crmsync worker --crm hubspot` (the sync), as separate
  processes, with `HUBSPOT_RATE_LIMIT_PER_SECOND=0`;
- `PUT /crm/select/filtered {"all": true, "crms": ["hubspot"]}` starts the sync; at the same
  moment `--clients` asyncio clients (one `httpx.AsyncClient`, a connection each) start, each in
  a loop without pause, each step one of:
  * list (40%): `GET /contacts` with `hubspot_sync_status` (New, Selected, Complete), an
    `email_type`, or a `search`, limit 50, random offset up to 500;
  * edit (30%): `PUT /contacts/{id}` of a new name for one of the client's own 20 contacts (so
    the last edit of each is known); the first 1,000 contacts, which the selections also touch;
  * select (20%): `PUT /crm/select` of 50 random contacts among the first 2,000, for HubSpot and
    n8n in random order, `force` half the time (overlapping sets, re-queueing rows in flight);
  * retry (10%): `POST /crm/retry` of 50 such contacts for HubSpot (none in Error: a write that
    finds nothing to do, as an operator's retry mostly is).
  The clients run until at most the 2,000 shared contacts are left in the HubSpot queue (the
  rest synced) and at least `--min-seconds` passed.
- Then the queue drains, and the checks: every answer 2xx (else an error), each edited
  contact's stored name is its client's last acknowledged edit, and so is the name HubSpot (the
  sandbox) holds for it (a lost update either way is counted).

Latency is from send to the full answer, measured in the client process (it shares the two cores
with the API, the worker, the sandbox and PostgreSQL).

    .venv/bin/python bench/api_load.py                                  # both databases
    .venv/bin/python bench/api_load.py --db sqlite --contacts 20000 --clients 50
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import select, text

from benchlib import (
    DEFAULT_PG_URL,
    Api,
    Database,
    Databases,
    Service,
    environment,
    percentile,
    prepared_database,
    start_workers,
    table,
    wait_for_workers,
)
from crmsync.sandbox import SandboxConfig, SandboxServer
from crmsync.tables import contacts

SANDBOX = SandboxConfig(no_rate_limits=True, custom_fields=True)
OWN = 20  # contacts each client edits
SHARED = 2_000  # contacts the selections and retries pick from
KINDS = (("list", 40), ("edit", 30), ("select", 20), ("retry", 10))


def contact_id(i: int) -> str:
    return str(uuid.UUID(int=(7 << 120) + i))  # as benchlib.contact_row


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    last_edit: dict[str, str] = field(default_factory=dict)


async def client_loop(
    http: httpx.AsyncClient, n: int, stop: asyncio.Event, results: Results
) -> None:
    rnd = random.Random(n)
    own = [contact_id(n * OWN + k) for k in range(OWN)]
    kinds = [k for k, weight in KINDS for _ in range(weight)]
    step = 0
    while not stop.is_set():
        step += 1
        kind = rnd.choice(kinds)
        sample = [contact_id(rnd.randrange(SHARED)) for _ in range(50)]
        if kind == "list":
            params: dict[str, Any] = rnd.choice(
                [
                    {"hubspot_sync_status": rnd.choice(["New", "Selected", "Complete"])},
                    {"email_type": rnd.choice(["CORPORATE", "FREE"])},
                    {"search": f"lead{rnd.randrange(100)}"},
                ]
            )
            request = http.build_request(
                "GET",
                "/api/v3/contacts",
                params={**params, "limit": 50, "offset": rnd.randrange(500)},
            )
        elif kind == "edit":
            target = rnd.choice(own)
            name = f"Edit{n}x{step} Load{rnd.randrange(10**6)}"
            request = http.build_request("PUT", f"/api/v3/contacts/{target}", json={"name": name})
        elif kind == "select":
            crms = rnd.sample(["hubspot", "n8n"], 2)
            body = {"contact_ids": sample, "crms": crms, "force": rnd.random() < 0.5}
            request = http.build_request("PUT", "/api/v3/contacts/crm/select", json=body)
        else:
            body = {"crm": "hubspot", "contact_ids": sample}
            request = http.build_request("POST", "/api/v3/crm/retry", json=body)
        started = time.perf_counter()
        try:
            response = await http.send(request)
            elapsed = time.perf_counter() - started
        except httpx.HTTPError as exc:
            results.errors.append(f"{kind}: {type(exc).__name__} {exc}")
            continue
        results.latencies[kind].append(elapsed)
        if response.status_code >= 300:
            results.errors.append(f"{kind}: {response.status_code} {response.text[:300]}")
        elif kind == "edit":
            results.last_edit[target] = name


async def queue_left(database: Database, crm: str) -> int:
    engine = database.engine()
    try:
        async with engine.connect() as conn:
            query = text(
                "SELECT count(*) FROM crm_sync_state WHERE crm = :crm"
                " AND sync_status IN ('Selected', 'Queued', 'Processing')"
            )
            return int((await conn.execute(query, {"crm": crm})).scalar_one())
    finally:
        await engine.dispose()


async def stored(database: Database, ids: list[str]) -> dict[str, tuple[str, str]]:
    """(email, name) of these contacts."""
    engine = database.engine()
    wanted = [uuid.UUID(i) for i in ids]
    try:
        async with engine.connect() as conn:
            query = select(contacts.c.id, contacts.c.email, contacts.c.name).where(
                contacts.c.id.in_(wanted)
            )
            return {str(r.id): (r.email, r.name) for r in await conn.execute(query)}
    finally:
        await engine.dispose()


async def drive(api: Api, database: Database, args: argparse.Namespace) -> tuple[Results, float]:
    results = Results()
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(
        base_url=api.url,
        headers=dict(api.client.headers),
        timeout=httpx.Timeout(60.0),
        limits=limits,
    ) as http:
        started = time.perf_counter()
        answer = await http.put(
            "/api/v3/contacts/crm/select/filtered",
            json={"all": True, "crms": ["hubspot"]},
            timeout=600,
        )
        if answer.status_code != 200:
            raise RuntimeError(f"select answered {answer.status_code}: {answer.text[:300]}")
        clients = [
            asyncio.create_task(client_loop(http, n, stop, results)) for n in range(args.clients)
        ]
        deadline = started + args.timeout
        while time.perf_counter() < deadline:
            await asyncio.sleep(1.0)
            # The clients keep re-queueing the shared contacts: the sync is through once every
            # other contact is.
            if time.perf_counter() - started >= args.min_seconds:
                if await queue_left(database, "hubspot") <= SHARED:
                    break
        stop.set()
        await asyncio.gather(*clients)
        loaded = time.perf_counter() - started
    # The edits made last are synced once the queue drains again.
    for _ in range(int(args.timeout * 2)):
        if not await queue_left(database, "hubspot"):
            break
        await asyncio.sleep(0.5)
    return results, loaded


def lost_updates(results: Results, database: Database, sb: SandboxServer) -> tuple[int, int]:
    """(edits lost in the database, edits HubSpot does not hold) among the edited contacts."""
    rows = asyncio.run(stored(database, list(results.last_edit)))
    lost_db = sum(1 for cid, name in results.last_edit.items() if rows[cid][1] != name)
    by_email: dict[str, dict[str, Any]] = {}
    for record in sb.contacts("hubspot"):
        by_email[str(record["email"]).lower()] = record["fields"]
    lost_vendor = 0
    for cid, name in results.last_edit.items():
        props = by_email.get(rows[cid][0].lower(), {})
        first, _, last = name.partition(" ")
        if props.get("firstname") != first or props.get("lastname") != last:
            lost_vendor += 1
    return lost_db, lost_vendor


def run(kind: str, databases: Databases, sb: SandboxServer, args: argparse.Namespace) -> list[Any]:
    database, _ = prepared_database(databases, kind, args.contacts, "apiload")
    work = databases.tmp / f"{database.name}-work"
    work.mkdir()
    env = {
        **sb.env(),
        "HUBSPOT_RATE_LIMIT_PER_SECOND": "0",
        "N8N_RATE_LIMIT_PER_SECOND": "0",
    }
    service = Service(database, work, env)
    api = Api(service, worker=False)
    workers = start_workers(service, 1, ["hubspot"])
    try:
        asyncio.run(wait_for_workers(database, 1))
        sb.reset()
        results, loaded = asyncio.run(drive(api, database, args))
        lost_db, lost_vendor = lost_updates(results, database, sb)
        served = api.process.log_path.read_text(errors="replace")
        conflicts = served.count("conflict with another transaction")
    except BaseException:
        for process in [api.process, *workers]:
            print(f"--- {process.name} log:\n{process.log_tail()}", file=sys.stderr)
        raise
    finally:
        for process in workers:
            process.stop()
        api.close()
        databases.drop(database)
    every = [x for values in results.latencies.values() for x in values]
    rows = []
    for name, values in [("all", every), *sorted(results.latencies.items())]:
        rows.append(
            [
                database.label,
                name,
                len(values),
                f"{percentile(values, 50) * 1000:.0f}",
                f"{percentile(values, 95) * 1000:.0f}",
                f"{max(values) * 1000:.0f}",
            ]
        )
    print(
        f"{database.label}: {args.contacts:,} contacts synced to HubSpot under {args.clients} "
        f"clients for {loaded:.1f} s; errors {len(results.errors)}; lost updates: "
        f"{lost_db} in the database, {lost_vendor} at HubSpot (of {len(results.last_edit)} "
        f"edited contacts); {conflicts} transactions run again after a deadlock"
    )
    for error in results.errors[:10]:
        print("  error:", error)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--contacts", type=int, default=50_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--min-seconds", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    args = parser.parse_args()
    if args.clients * OWN > SHARED:
        parser.error(f"at most {SHARED // OWN} clients")
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    print(environment(args.pg_url))
    rows: list[Any] = []
    with Databases(args.pg_url) as databases, SandboxServer(SANDBOX, subprocess=True) as sb:
        for kind in kinds:
            rows += run(kind, databases, sb, args)
    print(
        table(["database", "request", "n", "p50 ms", "p95 ms", "max ms"], rows, right=[2, 3, 4, 5])
    )


if __name__ == "__main__":
    main()
