"""Throughput of the sandbox fakes: can the sandbox keep up with the sync engine?

Starts the sandbox in a subprocess (its own interpreter and core) with every rate limit off,
then drives it with one `httpx.AsyncClient` running `--concurrency` requests at once, each a
full batch of distinct contacts (HubSpot batch upsert of 100, Mautic batch/new of 200, n8n
webhook of 100). Each run sends `--requests` requests; runs are repeated `--repeats` times with
a sandbox reset in between (every run creates its contacts), and the median is reported.

Besides wall-clock contacts/s (which includes the client's own cost: httpx on the other core)
it reports the sandbox process's CPU time per run, read from /proc, and from it the contacts
per sandbox CPU-second: the sandbox's capacity if the client were free.

    .venv/bin/python bench/sandbox_throughput.py [--requests 1000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from crmsync.sandbox import SandboxConfig, SandboxServer

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def contact(i: int) -> dict[str, Any]:
    return {
        "email": f"lead{i}@example{i % 97}.com",
        "first": f"First{i}",
        "last": f"Last{i}",
        "phone": f"+4420{i:08d}",
        "domain_id": str(uuid.UUID(int=i)),
        "page_id": str(uuid.UUID(int=i + 10**9)),
        "email_type": "CORPORATE",
        "source_url": f"https://example{i % 97}.com/contact/{i}",
        "has_gmail": i % 3 == 0,
    }


def hubspot_body(contacts: list[dict[str, Any]]) -> Any:
    return {
        "inputs": [
            {
                "id": c["email"],
                "idProperty": "email",
                "properties": {
                    "email": c["email"],
                    "firstname": c["first"],
                    "lastname": c["last"],
                    "phone": c["phone"],
                    "scrapersky_domain_id": c["domain_id"],
                    "scrapersky_page_id": c["page_id"],
                    "scrapersky_email_type": c["email_type"],
                    "scrapersky_source_url": c["source_url"],
                    "scrapersky_has_gmail": "true" if c["has_gmail"] else "false",
                },
            }
            for c in contacts
        ]
    }


def mautic_body(contacts: list[dict[str, Any]]) -> Any:
    return [
        {
            "email": c["email"],
            "firstname": c["first"],
            "lastname": c["last"],
            "phone": c["phone"],
            "scrapersky_domain_id": c["domain_id"],
            "scrapersky_page_id": c["page_id"],
            "scrapersky_email_type": c["email_type"],
            "scrapersky_source_url": c["source_url"],
            "scrapersky_has_gmail": c["has_gmail"],
        }
        for c in contacts
    ]


def n8n_body(contacts: list[dict[str, Any]]) -> Any:
    return {"contacts": contacts}


@dataclass
class Target:
    name: str
    path: str
    batch: int
    ok: int
    body: Callable[[list[dict[str, Any]]], Any]
    headers: dict[str, str]
    vendor: str


def targets(sb: SandboxServer) -> dict[str, Target]:
    c = sb.config
    return {
        "hubspot": Target(
            "HubSpot batch upsert",
            f"{sb.hubspot_url}/crm/v3/objects/contacts/batch/upsert",
            100,
            200,
            hubspot_body,
            {"Authorization": f"Bearer {c.hubspot_access_token}"},
            "hubspot",
        ),
        "mautic": Target(
            "Mautic batch/new",
            f"{sb.mautic_url}/api/contacts/batch/new",
            200,
            201,
            mautic_body,
            {"Authorization": "Basic " + _basic(c.mautic_username, c.mautic_password)},
            "mautic",
        ),
        "n8n": Target(
            "n8n webhook",
            sb.n8n_webhook_url,
            100,
            200,
            n8n_body,
            {"Authorization": c.n8n_expected_header},
            "n8n",
        ),
    }


def _basic(user: str, password: str) -> str:
    import base64

    return base64.b64encode(f"{user}:{password}".encode()).decode()


async def one_run(
    client: httpx.AsyncClient, target: Target, bodies: list[bytes], concurrency: int
) -> float:
    """Send every body once with `concurrency` requests in flight; return elapsed seconds."""
    next_index = 0
    headers = {**target.headers, "Content-Type": "application/json"}

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(bodies):
            body = bodies[next_index]
            next_index += 1
            response = await client.post(target.path, content=body, headers=headers)
            if response.status_code != target.ok:
                raise RuntimeError(f"{target.name}: {response.status_code} {response.text[:200]}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def bench(args: argparse.Namespace) -> None:
    config = SandboxConfig(no_rate_limits=True, custom_fields=True)
    with SandboxServer(config, subprocess=True) as sb:
        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=64)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            rows = []
            for key in args.vendors:
                target = targets(sb)[key]
                bodies = [
                    orjson.dumps(
                        target.body([contact(r * target.batch + i) for i in range(target.batch)])
                    )
                    for r in range(args.requests)
                ]
                await one_run(client, target, bodies[:20], args.concurrency)  # warm up
                runs = []
                for _ in range(args.repeats):
                    sb.reset()
                    cpu_before = cpu_seconds(sb.pid)
                    elapsed = await one_run(client, target, bodies, args.concurrency)
                    cpu = cpu_seconds(sb.pid) - cpu_before
                    stored = sb.stats()[target.vendor]["contacts_stored"]
                    expected = args.requests * target.batch
                    if stored != expected:
                        raise RuntimeError(f"{target.name}: stored {stored}, expected {expected}")
                    runs.append((elapsed, cpu))
                    print(
                        f"  {target.name}: {expected / elapsed:>9,.0f} contacts/s "
                        f"{args.requests / elapsed:>7,.0f} req/s  sandbox CPU {cpu:.2f} s",
                        file=sys.stderr,
                    )
                elapsed = statistics.median(r[0] for r in runs)
                cpu = statistics.median(r[1] for r in runs)
                contacts = args.requests * target.batch
                rows.append(
                    (
                        target.name,
                        target.batch,
                        contacts / elapsed,
                        args.requests / elapsed,
                        contacts / cpu if cpu else float("nan"),
                        min(contacts / r[0] for r in runs),
                        max(contacts / r[0] for r in runs),
                    )
                )
    print(environment(args))
    print()
    print(
        "| endpoint | batch | contacts/s (median) | requests/s | contacts per sandbox CPU-s "
        "| min-max contacts/s |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, batch, cps, rps, per_cpu, low, high in rows:
        print(
            f"| {name} | {batch} | {cps:,.0f} | {rps:,.0f} | {per_cpu:,.0f} "
            f"| {low:,.0f}-{high:,.0f} |"
        )


def environment(args: argparse.Namespace) -> str:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return (
        f"nproc={os.cpu_count()}, CPU: {model}, Python {platform.python_version()}, "
        f"{args.requests} requests x {args.repeats} runs, concurrency {args.concurrency}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--vendors",
        type=lambda s: s.split(","),
        default=["hubspot", "mautic", "n8n"],
        help="comma-separated subset of hubspot,mautic,n8n",
    )
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
