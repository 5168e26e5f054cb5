"""Issues 4 and 20: sync against the sandbox's vendor-like rate limits, with crmsync's defaults.

Target (issue 20, section 3): per vendor, with its default limit counted as a fixed window and,
in another run, as a rolling one, at least 95% of the allowance used and at most 1% of the
requests answered 429 (counted by the sandbox), over at least 300 requests.

What runs: the sandbox in a subprocess with its default limits (HubSpot: 100 requests per 10 s,
i.e. 10/s; Brevo: 10 requests/s on /contacts), the window kind set per run (`rate_window`).
crmsync runs as `crmsync serve --crm X` (API and embedded worker, default deployment) with only
that vendor's URL and credentials: every pacing and batching setting stays at its default
(HubSpot: HUBSPOT_RATE_LIMIT_PER_SECOND=10, batches of 100; Brevo: BREVO_RATE_LIMIT_PER_SECOND=10).
Brevo runs without BREVO_LIST_ID, so each contact is one `POST /contacts` (with a list, crmsync
would use Brevo's import and send few requests, and the limit would not be what bounds it).

Per vendor and window kind: a fresh SQLite database with `--hubspot-contacts` (default 30,000 =
300 requests, at least 30 s) or `--brevo-contacts` (default 600 = 600 requests, at least 60 s);
sandbox reset (its limiter windows too), then `PUT /crm/select/filtered {"all": true}` for that
vendor, and the run ends at the last row's `synced_at`. Allowance used = requests answered 2xx /
(limit x (last Complete - select sent)). Checked: every row Complete, the sandbox holds exactly N
contacts.

Mautic (`--vendor mautic`): its limiter is off by default and counts per hour when on
(`--mautic-limit`, default 300 per hour), so 300 requests are one window's allowance, used in
a burst: `MAUTIC_BATCH_SIZE=1` (one contact per request) and 40 contacts more than the limit.
The run ends once the service has paused Mautic until the hour's reset; allowance used = contacts
stored / limit.

    .venv/bin/python bench/sync_rate_limited.py [--vendor hubspot] [--window rolling] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import (
    DEFAULT_PG_URL,
    Api,
    Databases,
    Service,
    check_run,
    environment,
    median,
    prepared_database,
    queue_summary,
    stop_on_sigterm,
    table,
    utc_timestamp,
    wait_drained,
    wait_for_workers,
    wait_quiet,
)
from crmsync.sandbox import SandboxConfig, SandboxServer

# Requests per second each fake allows by default (HubSpot: 100 per 10 s); Mautic: per hour.
LIMITS = {"hubspot": 10.0, "brevo": 10.0, "mautic": 0.0}
WINDOWS = ("fixed", "rolling")
MIN_SHARE = 0.95
MAX_429 = 0.01


@dataclass
class Run:
    contacts: int
    seconds: float
    ok_requests: int
    requests: int
    rejected_429: int
    # Mautic: the hour's limit (the allowance is one window's, not a rate).
    hour_limit: int = 0

    @property
    def rate(self) -> float:
        return self.ok_requests / self.seconds

    def share(self, limit: float) -> float:
        """Share of the allowance used."""
        return self.ok_requests / self.hour_limit if self.hour_limit else self.rate / limit

    @property
    def share_429(self) -> float:
        return self.rejected_429 / self.requests


@dataclass
class Vendor:
    name: str
    window: str
    contacts: int
    runs: list[Run] = field(default_factory=list)


def vendor_env(sb: SandboxServer, vendor: str) -> dict[str, str]:
    """Only this vendor's URL and credentials (the others stay unconfigured)."""
    keys = {
        "hubspot": ("HUBSPOT_API_BASE_URL", "HUBSPOT_ACCESS_TOKEN"),
        "brevo": ("BREVO_API_BASE_URL", "BREVO_API_KEY"),
        "mautic": ("MAUTIC_BASE_URL", "MAUTIC_USERNAME", "MAUTIC_PASSWORD"),
    }[vendor]
    env = sb.env()
    chosen = {key: env[key] for key in keys}
    if vendor == "mautic":
        chosen["MAUTIC_BATCH_SIZE"] = "1"  # one request per contact
    return chosen


def one_run(
    databases: Databases, sb: SandboxServer, vendor: Vendor, args: argparse.Namespace
) -> Run:
    database, _ = prepared_database(databases, args.db, vendor.contacts, vendor.name)
    work = databases.tmp / f"{database.name}-work"
    work.mkdir()
    api = Api(Service(database, work, vendor_env(sb, vendor.name)), worker=True, crms=[vendor.name])
    try:
        asyncio.run(wait_for_workers(database, 1))
        sb.reset()  # forgets contacts, statistics and the limiter windows
        limits: dict[str, object] = {"rate_window": vendor.window}
        if vendor.name == "mautic":
            limits["rate_limit_per_hour"] = args.mautic_limit
        sb.set_faults(vendor.name, **limits)
        wait_quiet()
        started = time.time()
        api.select([vendor.name], all=True)
        if vendor.name == "mautic":
            return mautic_run(sb, api, vendor, args, started)
        asyncio.run(wait_drained(database, vendor.name, [api.process], args.timeout))
        summary = asyncio.run(queue_summary(database, vendor.name))
        stats = check_run(sb, vendor.name, summary, vendor.contacts, limited=True)
        report_pauses(api.process.log_path)
    except BaseException:
        print(api.process.log_tail())
        raise
    finally:
        api.close()
        databases.drop(database)
    return Run(
        vendor.contacts,
        utc_timestamp(summary["last_synced"]) - started,
        stats["2xx"],
        stats["requests"],
        stats["429"],
    )


def mautic_run(
    sb: SandboxServer, api: Api, vendor: Vendor, args: argparse.Namespace, started: float
) -> Run:
    """Until the service paused Mautic for its hourly limit; the hour's allowance used."""
    deadline = time.monotonic() + args.timeout
    log = api.process.log_path
    while "paused until" not in log.read_text():
        if time.monotonic() > deadline:
            raise RuntimeError("mautic: the service never paused for the hourly limit")
        api.process.check_alive()
        time.sleep(0.2)
    stats = sb.stats()["mautic"]
    seconds = time.time() - started
    report_pauses(log)
    return Run(
        stats["contacts_stored"],
        seconds,
        stats["contacts_stored"],
        stats["by_endpoint"].get("POST /api/contacts/batch/new", 0),
        stats["429"],
        hour_limit=args.mautic_limit,
    )


def report_pauses(log: Path) -> None:
    """What the service logged about rate limits: how often it paused, and the first times."""
    lines = [line for line in log.read_text().splitlines() if "paused until" in line]
    print(f"    the service paused {len(lines)} time(s) for a rate limit", flush=True)
    for line in lines[:3]:
        print(f"      {line[:240]}", flush=True)


def report(vendors: list[Vendor], args: argparse.Namespace) -> str:
    rows = []
    for v in vendors:
        limit = LIMITS[v.name]
        share = median([r.share(limit) for r in v.runs])
        share_429 = median([r.share_429 for r in v.runs])
        met = share >= MIN_SHARE and max(r.share_429 for r in v.runs) <= MAX_429
        hourly = v.name == "mautic"
        shares = [r.share(limit) for r in v.runs]
        rows.append(
            (
                v.name,
                v.window,
                f"{v.contacts:,}",
                f"{args.mautic_limit}/h" if hourly else f"{limit:g}/s",
                "-" if hourly else f"{median([r.rate for r in v.runs]):.2f}",
                f"{min(shares):.1%}-{max(shares):.1%}",
                f"{share:.1%}",
                f"{median([r.seconds for r in v.runs]):.1f}",
                f"{median([r.rejected_429 for r in v.runs]):.0f} of "
                f"{median([r.requests for r in v.runs]):.0f} ({share_429:.1%})",
                "met" if met else "MISSED",
            )
        )
    headers = (
        "vendor",
        "window",
        "contacts",
        "limit",
        "achieved req/s (median)",
        "of allowance min-max",
        "of allowance (median)",
        "seconds",
        "429 answers (median)",
        ">= 95%, <= 1% 429",
    )
    return "\n".join(
        [
            environment(args.pg_url),
            f"{args.repeats} runs per vendor and window on {args.db}, interleaved",
            "",
            table(headers, rows, right=(2, 3, 4, 5, 6, 7, 8)),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vendor", action="append", choices=sorted(LIMITS))
    parser.add_argument("--window", action="append", choices=WINDOWS)
    parser.add_argument("--hubspot-contacts", type=int, default=30_000)
    parser.add_argument("--brevo-contacts", type=int, default=600)
    parser.add_argument("--mautic-limit", type=int, default=300, help="requests per hour")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    args = parser.parse_args()
    stop_on_sigterm()
    counts = {
        "hubspot": args.hubspot_contacts,
        "brevo": args.brevo_contacts,
        "mautic": args.mautic_limit + 40,
    }
    vendors = [
        Vendor(name, window, counts[name])
        for name in (args.vendor or ["hubspot", "brevo", "mautic"])
        for window in (args.window or WINDOWS)
    ]
    with (
        SandboxServer(SandboxConfig(custom_fields=True), subprocess=True) as sb,
        Databases(args.pg_url) as databases,
    ):
        for repeat in range(args.repeats):
            for vendor in vendors:
                run = one_run(databases, sb, vendor, args)
                vendor.runs.append(run)
                print(
                    f"  run {repeat + 1} {vendor.name} {vendor.window}: "
                    f"{run.share(LIMITS[vendor.name]):.1%} of the allowance, {run.rate:.2f} req/s "
                    f"({run.ok_requests} ok of {run.requests}, {run.rejected_429} x 429) "
                    f"in {run.seconds:.1f} s",
                    flush=True,
                )
    print()
    print(report(vendors, args))


if __name__ == "__main__":
    main()
