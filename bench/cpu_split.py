"""Issue 24: what a synced contact costs on PostgreSQL, in CPU-seconds per 10,000 contacts.

Contacts per second on two shared cores say little about a deployment; CPU seconds per contact,
split by who spends them, say how many worker hosts and PostgreSQL cores a daily volume needs.

What runs: the sync benchmark's PostgreSQL runs (`sync_throughput.py`: 1 worker embedded in
`crmsync serve`, and `serve --no-worker` + 3 `crmsync worker` processes; HubSpot, sandbox with
no rate limits, `--contacts` contacts selected and synced per run, every run on a fresh copy of
the loaded database), interleaved, `--repeats` times. Per run, from /proc:

- worker: the crmsync processes (the API process that takes the select request included),
- PostgreSQL: the server processes serving the run's database (its backends),
- PostgreSQL shared: the server's walwriter, background writer and checkpointer, which serve
  every database on the server (other sessions' work on this shared machine can show there),
- sandbox: the fake vendor's process (what a real vendor spends is not ours to count).

    .venv/bin/python bench/cpu_split.py                 # --contacts 50000 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import Any

import benchlib
import sync_throughput
from benchlib import (
    DEFAULT_PG_URL,
    Databases,
    cpu_seconds,
    environment,
    median,
    stop_on_sigterm,
    table,
)
from crmsync.sandbox import SandboxServer

SHARED = ("walwriter", "background writer", "checkpointer")


def shared_postgres_pids() -> list[int]:
    """The PostgreSQL server's own processes that write for every database."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            if cmdline.startswith("postgres: ") and any(name in cmdline for name in SHARED):
                found.append(int(entry.name))
    return found


def _shared_cpu() -> float:
    total = 0.0
    for pid in shared_postgres_pids():
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def _backends_only(database: Any) -> list[int]:
    """The run database's backends, without the postmaster's reaped children.

    `benchlib.postgres_backends` adds those to count parallel query workers, but on a shared
    server they include every backend of any database that exited during the run (other
    sessions' test suites): seconds of CPU that were not ours. The sync's statements run no
    parallel workers (their plans show none), so nothing of ours is left out.
    """
    return [pid for pid in benchlib.postgres_backends(database) if pid > 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", action="append", type=int, help="default: 1 and 3")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for crmsync")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    stop_on_sigterm()
    # What `sync_throughput.build_configs` reads.
    args.db = ["postgresql"]
    args.workers = args.workers or [1, 3]
    args.mode = "embedded"
    args.peer = False
    args.baseline = False
    args.py_spy = None
    args.profile_dir = Path("/tmp/crmsync-bench-profiles")
    args.env = sync_throughput.parse_env(args.env)
    sync_throughput.postgres_backends = _backends_only  # type: ignore[attr-defined]
    shared: dict[str, list[float]] = {}
    with (
        SandboxServer(sync_throughput.SANDBOX, subprocess=True) as sb,
        Databases(args.pg_url) as databases,
    ):
        configs = sync_throughput.build_configs(databases, sb, args)
        for config in configs:
            runner = config.runner

            def measured(runner: Any = runner, label: str = config.label) -> Any:
                before = _shared_cpu()
                run = runner()
                shared.setdefault(label, []).append(_shared_cpu() - before)
                return run

            config.runner = measured
        sync_throughput.run_all(configs, args.repeats, profiling=False)
    print()
    print(environment(args.pg_url))
    print(f"{args.repeats} runs per configuration, interleaved; extra env: {args.env or 'none'}")
    print()
    rows = []
    for c in configs:
        per = [10_000 / r.contacts for r in c.runs]
        worker = median([r.crmsync_cpu * p for r, p in zip(c.runs, per, strict=True)])
        pg = median([r.database_cpu * p for r, p in zip(c.runs, per, strict=True)])
        # Shared processes: only the runs that finished (a repeated run measured twice).
        extra = median([s * p for s, p in zip(shared[c.label][-len(c.runs) :], per, strict=True)])
        sandbox = median([r.sandbox_cpu * p for r, p in zip(c.runs, per, strict=True)])
        rows.append(
            (
                c.workers,
                f"{median([r.rate for r in c.runs]):,.0f}",
                f"{worker:.2f}",
                f"{pg:.2f}",
                f"{extra:.2f}",
                f"{worker + pg + extra:.2f}",
                f"{sandbox:.2f}",
                f"{max(r.others for r in c.runs):.0%}",
            )
        )
    headers = (
        "workers",
        "contacts/s (median)",
        "worker CPU-s / 10k",
        "PostgreSQL backends CPU-s / 10k",
        "PostgreSQL shared CPU-s / 10k",
        "crmsync + PostgreSQL CPU-s / 10k",
        "sandbox CPU-s / 10k",
        "others' CPU (max)",
    )
    print(table(headers, rows, right=tuple(range(len(headers)))))
    print(f"\n(per 10,000 contacts, medians of {args.repeats}; {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
