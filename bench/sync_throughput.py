"""Issue 4: sync throughput, from the select request to the last row Complete.

Target: at least 10,000 contacts/s on SQLite with one worker, on the 2-core machine, sandbox
included. Peer (drt-core 1.2.1) and baseline (the customer's one-by-one design) in the same run.

What runs:
- The sandbox in a subprocess (`SandboxServer(subprocess=True)`, `no_rate_limits=True`); HubSpot
  batch upsert, 100 contacts per request (the connector's default batch size).
- Per database, one template database with `--contacts` contacts (schema by Alembic, rows through
  the repository, analysed); every run works on a fresh copy of it.
- crmsync, per configuration:
  * 1 worker, `embedded` (default): `crmsync serve --crm hubspot`, the API with its worker, as
    deployed by default; the select wakes the worker directly;
  * N workers (or `--mode processes`): `crmsync serve --no-worker` plus N `crmsync worker
    --crm hubspot` processes; PostgreSQL wakes them by NOTIFY, SQLite workers see the commit
    (`PRAGMA data_version`, looked at 4 times a second; before it they polled every 5 s); the
    table also shows the drain rate (first claim to last Complete).
  Settings: the sandbox's HubSpot URL and token, `HUBSPOT_RATE_LIMIT_PER_SECOND=0` (no client
  pacing: the endpoint has no limit), plus any `--env KEY=VALUE`. Everything else is default.
  Once every process is up and idle, the sandbox is reset, the clock starts, and
  `PUT /crm/select/filtered {"all": true, "crms": ["hubspot"]}` is sent over HTTP. The run ends at
  the last row's `synced_at`; the benchmark polls the queue (4 times a second) to know when.
  Checked after each run: every row Complete, the sandbox holds exactly N contacts, no 429/5xx.
- Peer: `drt run` on the same SQLite contacts to the same sandbox endpoint (see `drt_peer.py`).
- Baseline: `naive_baseline.py` (one request and one commit per contact) on `--baseline-contacts`
  contacts; it starts before the select and works until all are done.

Repetitions are interleaved (run 1 of every configuration, then run 2, ...), and medians are
reported. The machine may be shared: each run waits for it to be quiet, measures the CPU other
work used meanwhile, and is repeated when that was over 10% (see `benchlib.least_disturbed`).

    .venv/bin/python bench/sync_throughput.py                      # everything
    .venv/bin/python bench/sync_throughput.py --db sqlite --workers 1 --contacts 50000 \
        --no-peer --no-baseline --repeats 1 --env HUBSPOT_SYNC_SCHEDULER_BATCH_SIZE=100
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import drt_peer
from benchlib import (
    DEFAULT_PG_URL,
    REPO,
    Api,
    CpuMeter,
    Database,
    Databases,
    Profiler,
    Service,
    check_run,
    descendants,
    environment,
    least_disturbed,
    median,
    others_share,
    postgres_backends,
    prepared_database,
    queue_summary,
    start_workers,
    stop_on_sigterm,
    table,
    utc_timestamp,
    wait_drained,
    wait_for_workers,
    wait_quiet,
)
from crmsync.sandbox import SandboxConfig, SandboxServer

TARGET = 10_000  # contacts/s, SQLite, one worker

# The vendors start with crmsync's custom fields, as after `crmsync setup`.
SANDBOX = SandboxConfig(no_rate_limits=True, custom_fields=True)


@dataclass
class Run:
    contacts: int
    seconds: float  # select sent -> last row Complete
    drain_seconds: float  # first claim -> last row Complete
    crmsync_cpu: float  # serve + workers, CPU seconds during the run
    sandbox_cpu: float
    database_cpu: float  # PostgreSQL server processes of this database (0 for SQLite)
    requests: int
    others: float  # share of the machine's CPUs used by other work during the run
    writer_cpu: float = 0.0  # of crmsync_cpu, its processes' children (SQLite writers)
    select_seconds: float = 0.0  # the select request, until its answer

    @property
    def rate(self) -> float:
        return self.contacts / self.seconds

    @property
    def drain_rate(self) -> float:
        return self.contacts / self.drain_seconds


@dataclass
class Config:
    label: str
    database: str
    workers: str
    deployment: str
    runner: Callable[[], Run]
    runs: list[Run] = field(default_factory=list)


# --- one crmsync run ---------------------------------------------------------------------------


def run_crmsync(
    databases: Databases,
    sb: SandboxServer,
    template: Database,
    workers: int,
    embedded: bool,
    args: argparse.Namespace,
) -> Run:
    database = databases.create(template.kind, "run", template=template)
    work = databases.tmp / f"{database.name}-work"
    work.mkdir()
    env = {
        "HUBSPOT_API_BASE_URL": sb.hubspot_url,
        "HUBSPOT_ACCESS_TOKEN": sb.config.hubspot_access_token,
        "HUBSPOT_RATE_LIMIT_PER_SECOND": "0",
        **args.env,
    }
    service = Service(database, work, env)
    api = Api(service, worker=embedded, crms=["hubspot"])
    processes = [api.process] + ([] if embedded else start_workers(service, workers, ["hubspot"]))
    try:
        asyncio.run(wait_for_workers(database, workers))
        sb.reset()
        wait_quiet()
        # crmsync's own children (the SQLite writer processes) count as crmsync.
        children = [pid for p in processes for pid in descendants(p.pid)]
        ours = [p.pid for p in processes] + children
        meter = CpuMeter()
        meter.start([*ours, sb.pid, os.getpid(), *postgres_backends(database)])
        label = f"{template.kind}-{workers}w-{'embedded' if embedded else 'processes'}"
        profiled = {p.name: p.pid for p in processes}
        profiled.update({f"child-{pid}": pid for pid in children})
        with Profiler(args.py_spy, args.profile_dir, label, profiled):
            started = time.time()
            _, answer = api.select(["hubspot"], all=True)
            selected = time.time()
            if answer["queued_count"] != args.contacts:
                raise RuntimeError(f"unexpected selection answer: {answer}")
            asyncio.run(wait_drained(database, "hubspot", processes, args.timeout))
        backends = postgres_backends(database)
        used, machine = meter.stop([*ours, sb.pid, os.getpid(), *backends])
        summary = asyncio.run(queue_summary(database, "hubspot"))
        hubspot = check_run(sb, "hubspot", summary, args.contacts)
    except BaseException:
        for process in processes:
            print(f"--- {process.name} log:\n{process.log_tail()}", file=sys.stderr)
        raise
    finally:
        for process in processes[1:]:
            process.stop()
        api.close()
        databases.drop(database)
    last = utc_timestamp(summary["last_synced"])
    wall = time.time() - started
    return Run(
        args.contacts,
        last - started,
        last - utc_timestamp(summary["first_claim"]),
        sum(used[pid] for pid in ours),
        used[sb.pid],
        sum(cpu for pid, cpu in used.items() if pid in backends),
        hubspot["requests"],
        others_share(machine, sum(used.values()), wall),
        writer_cpu=sum(used[pid] for pid in children),
        select_seconds=selected - started,
    )


# --- baseline and peer -------------------------------------------------------------------------


def run_baseline(
    databases: Databases, sb: SandboxServer, template: Database, args: argparse.Namespace
) -> Run:
    database = databases.create(template.kind, "naive", template=template)
    work = databases.tmp / f"{database.name}-work"
    work.mkdir()
    api = Api(Service(database, work), worker=False)
    baseline = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "bench" / "naive_baseline.py"),
            "--database-url",
            database.url,
            "--hubspot-url",
            sb.hubspot_url,
            "--token",
            sb.config.hubspot_access_token,
            "--expect",
            str(args.baseline_contacts),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        expect_line(baseline, "ready", 60)
        sb.reset()
        wait_quiet()
        ours = [baseline.pid, sb.pid, os.getpid(), *postgres_backends(database)]
        meter = CpuMeter()
        meter.start(ours)
        started = time.time()
        _, answer = api.select(["hubspot"], all=True)
        if answer["queued_count"] != args.baseline_contacts:
            raise RuntimeError(f"unexpected selection answer: {answer}")
        expect_line(baseline, "done", args.timeout)
        # Read while the baseline and its database connection are still alive.
        used, machine = meter.stop(ours)
        summary = asyncio.run(queue_summary(database, "hubspot"))
        hubspot = check_run(sb, "hubspot", summary, args.baseline_contacts)
    finally:
        if baseline.stdin is not None:
            baseline.stdin.close()
        try:
            baseline.wait(10)
        except subprocess.TimeoutExpired:
            baseline.kill()
        api.close()
        databases.drop(database)
    last = utc_timestamp(summary["last_synced"])
    wall = time.time() - started
    backends = set(ours[3:])
    return Run(
        args.baseline_contacts,
        last - started,
        last - utc_timestamp(summary["first_claim"]),
        used[baseline.pid],
        used[sb.pid],
        sum(cpu for pid, cpu in used.items() if pid in backends),
        hubspot["requests"],
        others_share(machine, sum(used.values()), wall),
    )


def expect_line(process: subprocess.Popen[str], line: str, limit: float) -> None:
    """Wait (at most `limit` s) for a child to print `line` on its standard output."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], limit)
    if not ready or process.stdout.readline().strip() != line:
        raise RuntimeError(f"the baseline did not say {line!r} (exit code {process.poll()})")


def run_peer(project: drt_peer.DrtProject, sb: SandboxServer, contacts: int) -> Run:
    sb.reset()
    wait_quiet()
    meter = CpuMeter()
    meter.start([sb.pid, os.getpid()])
    result = project.run()
    used, machine = meter.stop([sb.pid, os.getpid()])
    hubspot: dict[str, Any] = sb.stats()["hubspot"]
    if result.rows_synced != contacts or hubspot["contacts_stored"] != contacts:
        raise RuntimeError(
            f"drt synced {result.rows_synced} (failed {result.rows_failed}), "
            f"sandbox holds {hubspot['contacts_stored']}, expected {contacts}"
        )
    # drt's CPU is that of our reaped child: the whole `drt run` command.
    ours = result.cpu_seconds + sum(used.values())
    # drt's own duration (its CLI start-up excluded), the fairest against running workers.
    return Run(
        contacts,
        result.drt_seconds,
        result.drt_seconds,
        result.cpu_seconds,
        used[sb.pid],
        0.0,
        hubspot["requests"],
        others_share(machine, ours, result.wall_seconds),
    )


# --- the whole benchmark -----------------------------------------------------------------------


def build_configs(
    databases: Databases, sb: SandboxServer, args: argparse.Namespace
) -> list[Config]:
    configs: list[Config] = []
    templates: dict[str, Database] = {}
    for kind in args.db:
        print(f"{kind}: loading {args.contacts:,} contacts ...", flush=True)
        template, _ = prepared_database(databases, kind, args.contacts)
        templates[kind] = template
        for workers in args.workers:
            embedded = workers == 1 and args.mode == "embedded"
            deployment = (
                "serve (embedded worker)"
                if embedded
                else f"serve --no-worker + {workers} x crmsync worker"
            )
            configs.append(
                Config(
                    f"crmsync {template.label} {workers}w",
                    template.label,
                    str(workers),
                    deployment,
                    lambda t=template, w=workers, e=embedded: run_crmsync(
                        databases, sb, t, w, e, args
                    ),
                )
            )
        if args.baseline:
            naive, _ = prepared_database(databases, kind, args.baseline_contacts, "naivetmpl")
            configs.append(
                Config(
                    f"baseline {template.label}",
                    template.label,
                    "1",
                    "BASELINE: naive one-by-one (bench/naive_baseline.py)",
                    lambda t=naive: run_baseline(databases, sb, t, args),
                )
            )
    if args.peer:
        source = templates.get("sqlite")
        if source is None:
            print(f"sqlite (drt source): loading {args.contacts:,} contacts ...", flush=True)
            source, _ = prepared_database(databases, "sqlite", args.contacts)
        drt = drt_peer.ensure_venv(Path(args.drt_venv))
        assert source.path is not None
        project = drt_peer.DrtProject(
            drt, databases.tmp / "drt", source.path, sb.hubspot_url, sb.config.hubspot_access_token
        )
        configs.append(
            Config(
                "peer drt",
                "SQLite (source)",
                "1",
                f"PEER: drt-core {drt_peer.DRT_VERSION} rest_api batch",
                lambda: run_peer(project, sb, args.contacts),
            )
        )
    return configs


def run_all(configs: list[Config], repeats: int, profiling: bool) -> None:
    for repeat in range(repeats):
        for config in configs:
            if profiling:  # py-spy's own CPU would look like other work: no repeats
                run = config.runner()
            else:
                run = least_disturbed(config.runner, lambda r: r.others, config.label)
            config.runs.append(run)
            print(
                f"  run {repeat + 1} {config.label}: {run.rate:>8,.0f} contacts/s "
                f"({run.contacts:,} in {run.seconds:.2f} s; drain {run.drain_rate:,.0f}/s; "
                f"CPU s: crmsync {run.crmsync_cpu:.1f}, sandbox {run.sandbox_cpu:.1f}, "
                f"PostgreSQL {run.database_cpu:.1f}; {run.requests} requests; "
                f"others used {run.others:.0%} of the CPUs)",
                flush=True,
            )


def report(configs: list[Config], args: argparse.Namespace) -> str:
    rows = []
    for c in configs:
        rates = [r.rate for r in c.runs]
        verdict = "-"
        if c.label == "crmsync SQLite 1w":
            verdict = f"{'met' if median(rates) >= TARGET else 'MISSED'} (>= {TARGET:,}/s)"
        rows.append(
            (
                c.deployment,
                c.database,
                c.workers,
                f"{c.runs[0].contacts:,}",
                f"{median(rates):,.0f}",
                f"{min(rates):,.0f}-{max(rates):,.0f}",
                f"{median([r.drain_rate for r in c.runs]):,.0f}",
                f"{median([r.seconds for r in c.runs]):.2f}",
                _cpu_cell(c),
                f"{max(r.others for r in c.runs):.0%}",
                verdict,
            )
        )
    headers = (
        "what",
        "database",
        "workers",
        "contacts",
        "contacts/s (median)",
        "min-max",
        "drain contacts/s",
        "seconds",
        "CPU s: tool / sandbox / PostgreSQL",
        "others' CPU (max)",
        "target",
    )
    lines = [
        environment(args.pg_url),
        f"{args.repeats} runs per configuration, interleaved; extra env: {args.env or 'none'}",
        "",
        table(headers, rows, right=(2, 3, 4, 5, 6, 7, 9)),
        "",
    ]
    lines += ratios(configs)
    return "\n".join(lines)


def _cpu_cell(config: Config) -> str:
    """Median CPU seconds per run of the measured tool, the sandbox and PostgreSQL."""
    runs = config.runs
    parts = [median([r.crmsync_cpu for r in runs]), median([r.sandbox_cpu for r in runs])]
    text = " / ".join(f"{p:.1f}" for p in parts)
    if config.database == "PostgreSQL":
        text += f" / {median([r.database_cpu for r in runs]):.1f}"
    return text


def ratios(configs: list[Config]) -> list[str]:
    """crmsync with one worker against the peer and against the baseline on the same database."""
    rate = {c.label: median([r.rate for r in c.runs]) for c in configs}
    lines = []
    ours = rate.get("crmsync SQLite 1w")
    if ours is not None and "peer drt" in rate:
        lines.append(f"crmsync (SQLite, 1 worker) / drt: {ours / rate['peer drt']:.2f}x")
    for label in ("SQLite", "PostgreSQL"):
        if f"crmsync {label} 1w" in rate and f"baseline {label}" in rate:
            ratio = rate[f"crmsync {label} 1w"] / rate[f"baseline {label}"]
            lines.append(f"crmsync ({label}, 1 worker) / naive baseline ({label}): {ratio:,.0f}x")
    return lines


def parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--env wants KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", action="append", choices=("sqlite", "postgresql"))
    parser.add_argument("--workers", action="append", type=int, help="default: 1 and 3")
    parser.add_argument("--contacts", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--mode",
        choices=("embedded", "processes"),
        default="embedded",
        help="1 worker inside `crmsync serve` (default) or as a `crmsync worker` process",
    )
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for crmsync")
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--baseline-contacts", type=int, default=5_000)
    parser.add_argument("--drt-venv", default=str(drt_peer.DEFAULT_VENV))
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    parser.add_argument("--py-spy", help="path to py-spy: profile the crmsync processes")
    parser.add_argument("--profile-dir", type=Path, default=Path("/tmp/crmsync-bench-profiles"))
    args = parser.parse_args()
    stop_on_sigterm()
    args.db = args.db or ["sqlite", "postgresql"]
    args.workers = args.workers or [1, 3]
    args.env = parse_env(args.env)
    with (
        SandboxServer(SANDBOX, subprocess=True) as sb,
        Databases(args.pg_url) as databases,
    ):
        configs = build_configs(databases, sb, args)
        run_all(configs, args.repeats, bool(args.py_spy))
    print()
    print(report(configs, args))


if __name__ == "__main__":
    main()
