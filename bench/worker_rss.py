"""Issue 4: peak resident memory of a `crmsync worker` process syncing 200,000 contacts.

Target: peak RSS under 200 MB (200 x 10^6 bytes; the table also shows MiB).

What runs: the sandbox in a subprocess without rate limits; a fresh database with `--contacts`
contacts; `crmsync serve --no-worker` for the select request and one `crmsync worker --crm ...`
process, the one measured, with `HUBSPOT_RATE_LIMIT_PER_SECOND=0` (no pacing against an
unlimited endpoint) and any `--env KEY=VALUE`. Once the worker is idle its RSS is read, every
contact is selected, and while it drains the worker's VmRSS is sampled 5 times a second; at the
end its VmHWM (the kernel's own peak RSS of the process) is read from /proc/<pid>/status before
it is stopped. On SQLite the worker's writer process (`crmsync.writer_process`) is part of it:
every figure is the sum over the worker and its children (for VmHWM, an upper bound).
Checked: every row Complete and the sandbox holds exactly N contacts per CRM.

    .venv/bin/python bench/worker_rss.py [--db sqlite] [--contacts 200000] [--crm hubspot]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field

from benchlib import (
    DEFAULT_PG_URL,
    Api,
    Database,
    Databases,
    Service,
    check_run,
    descendants,
    environment,
    median,
    memory_kib,
    prepared_database,
    queue_summary,
    start_workers,
    stop_on_sigterm,
    table,
    utc_timestamp,
    wait_drained,
    wait_for_workers,
)
from crmsync.sandbox import SandboxConfig, SandboxServer

TARGET_BYTES = 200 * 10**6

# The vendors start with crmsync's custom fields, as after `crmsync setup`.
SANDBOX = SandboxConfig(no_rate_limits=True, custom_fields=True)


@dataclass
class Run:
    idle_kib: int
    sampled_peak_kib: int
    hwm_kib: int
    seconds: float


@dataclass
class Config:
    database: str
    runs: list[Run] = field(default_factory=list)


def tree_kib(pid: int, key: str) -> int:
    """`key` (VmRSS, VmHWM) of a process plus its children's: a SQLite worker's writer process
    is part of the worker. Summed peaks may not have coincided: an upper bound."""
    total = 0
    for member in (pid, *descendants(pid)):
        with contextlib.suppress(OSError):
            total += memory_kib(member)[key]
    return total


class Sampler(threading.Thread):
    """Reads the VmRSS of a process and its children every `interval` s and keeps the largest."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            try:
                self.peak_kib = max(self.peak_kib, tree_kib(self.pid, "VmRSS"))
            except OSError:
                return


def crm_env(sb: SandboxServer, crms: list[str]) -> dict[str, str]:
    prefixes = tuple(crm.upper() + "_" for crm in crms)
    env = {k: v for k, v in sb.env().items() if k.startswith(prefixes)}
    if "brevo" in crms:
        env["BREVO_LIST_ID"] = "2"  # bulk through the import endpoint, as a user would
    return env


def one_run(
    databases: Databases, sb: SandboxServer, template: Database, args: argparse.Namespace
) -> Run:
    database = databases.create(template.kind, "rss", template=template)
    work = databases.tmp / f"{database.name}-work"
    work.mkdir()
    env = {**crm_env(sb, args.crm), "HUBSPOT_RATE_LIMIT_PER_SECOND": "0", **args.env}
    service = Service(database, work, env)
    api = Api(service, worker=False)
    (worker,) = start_workers(service, 1, args.crm)
    try:
        asyncio.run(wait_for_workers(database, 1))
        time.sleep(1.0)  # settle: the idle figure is the worker ready and waiting
        idle = tree_kib(worker.pid, "VmRSS")
        sb.reset()
        sampler = Sampler(worker.pid)
        sampler.start()
        started = time.time()
        api.select(args.crm, all=True)
        last = 0.0
        for crm in args.crm:
            asyncio.run(wait_drained(database, crm, [worker, api.process], args.timeout))
            summary = asyncio.run(queue_summary(database, crm))
            check_run(sb, crm, summary, args.contacts)
            last = max(last, utc_timestamp(summary["last_synced"]))
        hwm = tree_kib(worker.pid, "VmHWM")
        sampler.done.set()
        sampler.join()
    except BaseException:
        print(worker.log_tail())
        raise
    finally:
        worker.stop()
        api.close()
        databases.drop(database)
    return Run(idle, sampler.peak_kib, hwm, last - started)


def mb(kib: float) -> str:
    return f"{kib * 1024 / 10**6:.0f} MB ({kib / 1024:.0f} MiB)"


def report(configs: list[Config], args: argparse.Namespace) -> str:
    rows = []
    for c in configs:
        hwm = median([r.hwm_kib for r in c.runs])
        rows.append(
            (
                c.database,
                ", ".join(args.crm),
                f"{args.contacts:,}",
                mb(median([r.idle_kib for r in c.runs])),
                mb(hwm),
                mb(max(r.hwm_kib for r in c.runs)),
                mb(median([r.sampled_peak_kib for r in c.runs])),
                f"{median([r.seconds for r in c.runs]):.1f}",
                "met" if max(r.hwm_kib for r in c.runs) * 1024 < TARGET_BYTES else "MISSED",
            )
        )
    headers = (
        "database",
        "CRMs",
        "contacts",
        "idle RSS",
        "peak RSS, VmHWM (median)",
        "VmHWM max",
        "sampled VmRSS max (median)",
        "sync seconds",
        "< 200 MB",
    )
    return "\n".join(
        [
            environment(args.pg_url),
            f"{args.repeats} runs per database; extra env: {args.env or 'none'}",
            "",
            table(headers, rows, right=(2, 3, 4, 5, 6, 7)),
        ]
    )


def parse_env(items: list[str]) -> dict[str, str]:
    pairs = [item.partition("=") for item in items]
    bad = [key for key, sep, _ in pairs if not sep or not key]
    if bad:
        raise SystemExit(f"--env wants KEY=VALUE, got {items}")
    return {key: value for key, _, value in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", action="append", choices=("sqlite", "postgresql"))
    parser.add_argument("--contacts", type=int, default=200_000)
    parser.add_argument("--crm", action="append", help="CRM(s) to sync (default hubspot)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for crmsync")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    args = parser.parse_args()
    stop_on_sigterm()
    args.db = args.db or ["sqlite", "postgresql"]
    args.crm = args.crm or ["hubspot"]
    args.env = parse_env(args.env)
    configs = []
    with (
        SandboxServer(SANDBOX, subprocess=True) as sb,
        Databases(args.pg_url) as databases,
    ):
        templates = {}
        for kind in args.db:
            print(f"{kind}: loading {args.contacts:,} contacts ...", flush=True)
            templates[kind], _ = prepared_database(databases, kind, args.contacts)
            configs.append(Config(templates[kind].label))
        for repeat in range(args.repeats):
            for kind, config in zip(args.db, configs, strict=True):
                run = one_run(databases, sb, templates[kind], args)
                config.runs.append(run)
                print(
                    f"  run {repeat + 1} {config.database}: idle {mb(run.idle_kib)}, "
                    f"peak {mb(run.hwm_kib)} (sampled {mb(run.sampled_peak_kib)}), "
                    f"synced in {run.seconds:.1f} s",
                    flush=True,
                )
    print()
    print(report(configs, args))


if __name__ == "__main__":
    main()
