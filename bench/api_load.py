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
  moment `--clients` asyncio clients (one `httpx.AsyncClient`, a connection each) start, each
  step one of:
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
- Two modes (`--mode`), each on a fresh database and a fresh sync:
  * `paced` (the latency at a stated load): each client sends on a schedule of its own, one
    request per `1 / --rate` seconds on average (exponential gaps, i.e. the 50 clients together
    are a Poisson stream of `clients x rate` requests/s), and a request's latency runs from the
    moment the schedule meant to send it: a server that falls behind is charged for the
    requests that waited in the client (no coordinated omission);
  * `saturation` (the throughput): each client sends its next request as soon as the last
    answered; the requests answered per second is the API's capacity beside the sync, and the
    latency is only clients / throughput (Little's law).
- Then the queue drains, and the checks: every answer 2xx (else an error), each edited
  contact's stored name is its client's last acknowledged edit, and so is the name HubSpot (the
  sandbox) holds for it (a lost update either way is counted).

Latency is measured in the client process (it shares the two cores with the API, the worker, the
sandbox and PostgreSQL). Beside it: the API process's CPU-seconds per request answered, the
worker's CPU-seconds per 1,000 contacts synced, and the share of the CPUs other work used.
`--variant LABEL:KEY=VALUE,...` (repeatable) runs the same under other crmsync settings,
interleaved round by round (`--rounds`, the order reversed every other round) for an A/B.

    .venv/bin/python bench/api_load.py                                  # both databases
    .venv/bin/python bench/api_load.py --db sqlite --contacts 20000 --mode paced
    .venv/bin/python bench/api_load.py --db sqlite --mode saturation --rounds 3 \
        --variant lane: --variant nolane:CRMSYNC_SQLITE_WRITE_LANE=false
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import sys
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select, text

from benchlib import (
    DEFAULT_PG_URL,
    Api,
    CpuMeter,
    Database,
    Databases,
    Profiler,
    Service,
    cpu_seconds,
    descendants,
    environment,
    git_revision,
    others_share,
    percentile,
    postgres_backends,
    prepared_database,
    start_workers,
    stop_on_sigterm,
    table,
    wait_for_workers,
    wait_quiet,
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


@dataclass
class Run:
    """One run's figures: the table rows and the summary line's numbers."""

    database: str
    variant: str
    mode: str
    rows: list[list[Any]]
    answered: int
    load_seconds: float
    api_cpu: float
    worker_cpu: float
    synced: int
    others: float
    errors: int
    lost_db: int
    lost_vendor: int
    edited: int
    conflicts: int
    p95: float
    maximum: float

    @property
    def throughput(self) -> float:
        return self.answered / self.load_seconds


async def client_loop(
    http: httpx.AsyncClient, n: int, stop: asyncio.Event, results: Results, rate: float
) -> None:
    """One client. `rate` > 0: requests on a Poisson schedule of `rate`/s, latency from the
    scheduled moment; 0: the next request as soon as the last answered."""
    rnd = random.Random(n)
    own = [contact_id(n * OWN + k) for k in range(OWN)]
    kinds = [k for k, weight in KINDS for _ in range(weight)]
    step = 0
    scheduled = time.perf_counter() + (rnd.expovariate(rate) if rate else 0.0)
    while not stop.is_set():
        if rate:
            delay = scheduled - time.perf_counter()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    break
            started = scheduled
            scheduled += rnd.expovariate(rate)
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
        if not rate:
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


async def drive(
    api: Api, database: Database, args: argparse.Namespace, rate: float, on_load: Any
) -> tuple[Results, float, int]:
    """Start the sync and the clients; (results, seconds of load, contacts synced meanwhile).
    `on_load(starting)` is called as the clients start (True) and stop (False)."""
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
        on_load(True)
        load_started = time.perf_counter()
        clients = [
            asyncio.create_task(client_loop(http, n, stop, results, rate))
            for n in range(args.clients)
        ]
        deadline = started + args.timeout
        left = args.contacts
        while time.perf_counter() < deadline:
            await asyncio.sleep(1.0)
            # The clients keep re-queueing the shared contacts: the sync is through once every
            # other contact is.
            if time.perf_counter() - started >= args.min_seconds:
                left = await queue_left(database, "hubspot")
                if left <= SHARED:
                    break
        stop.set()
        await asyncio.gather(*clients)
        loaded = time.perf_counter() - load_started
        on_load(False)
    # The edits made last are synced once the queue drains again.
    for _ in range(int(args.timeout * 2)):
        if not await queue_left(database, "hubspot"):
            break
        await asyncio.sleep(0.5)
    return results, loaded, args.contacts - left


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


def run(
    kind: str,
    mode: str,
    variant: tuple[str, dict[str, str]],
    databases: Databases,
    sb: SandboxServer,
    args: argparse.Namespace,
) -> Run:
    label, settings = variant
    database, _ = prepared_database(databases, kind, args.contacts, "apiload")
    work = databases.tmp / f"{database.name}-work"
    work.mkdir()
    env = {
        **sb.env(),
        "HUBSPOT_RATE_LIMIT_PER_SECOND": "0",
        "N8N_RATE_LIMIT_PER_SECOND": "0",
        **settings,
    }
    service = Service(database, work, env)
    api = Api(service, worker=False)
    workers = start_workers(service, 1, ["hubspot"])
    rate = args.rate if mode == "paced" else 0.0
    meter = CpuMeter()
    cpu: dict[str, float] = {}
    ours: list[int] = []

    def on_load(starting: bool) -> None:
        worker_pids = [pid for p in workers for pid in (p.pid, *descendants(p.pid))]
        # `postgres_backends` runs its own event loop: in a thread, as this runs inside one.
        with ThreadPoolExecutor(1) as pool:
            backends = pool.submit(postgres_backends, database).result()
        pids = [api.process.pid, *worker_pids, sb.pid, os.getpid(), *backends]
        if starting:
            ours[:] = pids
            cpu["api"] = cpu_seconds(api.process.pid)
            cpu["worker"] = sum(cpu_seconds(pid) for pid in worker_pids)
            meter.start(pids)
            cpu["wall"] = time.perf_counter()
        else:
            used, machine = meter.stop(sorted(set(ours + pids)))
            wall = time.perf_counter() - cpu["wall"]
            cpu["others"] = others_share(machine, sum(used.values()), wall)
            cpu["api"] = cpu_seconds(api.process.pid) - cpu["api"]
            cpu["worker"] = sum(cpu_seconds(pid) for pid in worker_pids) - cpu["worker"]

    try:
        asyncio.run(wait_for_workers(database, 1))
        sb.reset()
        wait_quiet()
        profile = Profiler(
            args.py_spy, args.profile_dir, f"{kind}-{label}-{mode}", {"api": api.process.pid}
        )
        with profile:
            results, loaded, synced = asyncio.run(drive(api, database, args, rate, on_load))
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
    name = f"{database.label} {mode}" + (f" ({label})" if label else "")
    rows = []
    for request, values in [("all", every), *sorted(results.latencies.items())]:
        rows.append(
            [
                name,
                request,
                len(values),
                f"{percentile(values, 50) * 1000:.0f}",
                f"{percentile(values, 95) * 1000:.0f}",
                f"{max(values) * 1000:.0f}",
            ]
        )
    result = Run(
        database=database.label,
        variant=label,
        mode=mode,
        rows=rows,
        answered=len(every),
        load_seconds=loaded,
        api_cpu=cpu["api"],
        worker_cpu=cpu["worker"],
        synced=synced,
        others=cpu["others"],
        errors=len(results.errors),
        lost_db=lost_db,
        lost_vendor=lost_vendor,
        edited=len(results.last_edit),
        conflicts=conflicts,
        p95=percentile(every, 95),
        maximum=max(every),
    )
    offered = f"offered {args.clients * rate:.0f} requests/s, " if rate else ""
    print(
        f"{name}: {offered}answered {result.throughput:.1f} requests/s for "
        f"{loaded:.1f} s while {synced:,} contacts synced to HubSpot; API "
        f"{1000 * result.api_cpu / max(1, result.answered):.1f} CPU-ms per request, worker "
        f"{1000 * result.worker_cpu / max(1, synced):.2f} CPU-ms per contact; others' CPU "
        f"{result.others:.0%}; errors {result.errors}; lost updates: {lost_db} in the "
        f"database, {lost_vendor} at HubSpot (of {result.edited} edited contacts); "
        f"{conflicts} transactions run again after a deadlock",
        flush=True,
    )
    for error in results.errors[:10]:
        print("  error:", error)
    print(
        table(["run", "request", "n", "p50 ms", "p95 ms", "max ms"], rows, right=[2, 3, 4, 5]),
        flush=True,
    )
    return result


def parse_variant(text_: str) -> tuple[str, dict[str, str]]:
    label, _, assignments = text_.partition(":")
    settings = {}
    for item in filter(None, assignments.split(",")):
        key, _, value = item.partition("=")
        settings[key.strip()] = value.strip()
    return label.strip(), settings


def summary(runs: list[Run]) -> str:
    """Medians per (database, mode, variant) over the rounds."""
    groups: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for one in runs:
        groups[(one.database, one.mode, one.variant)].append(one)
    rows = []
    for (database, mode, variant), group in groups.items():

        def med(values: list[float]) -> float:
            return statistics.median(values)

        rows.append(
            [
                database,
                mode,
                variant or "-",
                len(group),
                f"{med([r.throughput for r in group]):.1f}",
                f"{med([1000 * r.api_cpu / max(1, r.answered) for r in group]):.1f}",
                f"{med([r.p95 * 1000 for r in group]):.0f}",
                f"{med([r.maximum * 1000 for r in group]):.0f}",
                f"{med([r.others for r in group]):.0%}",
                sum(r.errors for r in group),
                sum(r.lost_db + r.lost_vendor for r in group),
            ]
        )
    headers = ["database", "mode", "variant", "runs", "requests/s", "API CPU-ms/request"]
    headers += ["p95 ms", "max ms", "others' CPU", "errors", "lost updates"]
    return table(headers, rows, right=[3, 4, 5, 6, 7, 8, 9, 10])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--contacts", type=int, default=50_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--mode", choices=["paced", "saturation", "both"], default="both")
    parser.add_argument(
        "--rate", type=float, default=1.0, help="requests/s of each client in the paced mode"
    )
    parser.add_argument("--min-seconds", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--variant",
        action="append",
        type=parse_variant,
        help="LABEL:KEY=VALUE,... crmsync settings of one variant (repeatable)",
    )
    parser.add_argument("--py-spy", help="path of py-spy: profile the API (diagnosis only)")
    parser.add_argument("--profile-dir", type=Path, default=Path("api_load_profiles"))
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    args = parser.parse_args()
    if args.clients * OWN > SHARED:
        parser.error(f"at most {SHARED // OWN} clients")
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    modes = ["paced", "saturation"] if args.mode == "both" else [args.mode]
    variants = args.variant or [("", {})]
    stop_on_sigterm()
    print(environment(args.pg_url), flush=True)
    print(f"started {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC", flush=True)
    runs: list[Run] = []
    with Databases(args.pg_url) as databases, SandboxServer(SANDBOX, subprocess=True) as sb:
        for kind in kinds:
            for mode in modes:
                for round_ in range(args.rounds):
                    order = variants if round_ % 2 == 0 else variants[::-1]
                    for variant in order:
                        runs.append(run(kind, mode, variant, databases, sb, args))
    print(f"ended {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC at {git_revision()}")
    print(
        table(
            ["run", "request", "n", "p50 ms", "p95 ms", "max ms"],
            [row for one in runs for row in one.rows],
            right=[2, 3, 4, 5],
        )
    )
    print(summary(runs))


if __name__ == "__main__":
    main()
