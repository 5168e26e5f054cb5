"""Interleaved A/B of crmsync revisions on the sync benchmark, in one process, with the peer.

Each revision is a `crmsync` executable of its own (a worktree's `.venv/bin/crmsync`, so its
code). One template database is loaded once per database kind; every round then runs each
revision on a fresh copy, in turn (the order reversed every other round, so that drift hits
every revision alike), and, on SQLite, drt on the same contacts: the same run as
`sync_throughput.py --workers 1` (embedded worker, HubSpot, no rate limit).

Unlike `sync_throughput.py` it does not rerun a disturbed run: on a machine others share, that
could take hours. It waits at most `--patience` seconds for a quiet machine before each run and
records how much of the CPUs other work used meanwhile; compare medians over many rounds.

    .venv/bin/python bench/ab_revisions.py --db sqlite --rounds 7 \
        --rev before=/work/wt-base/.venv/bin/crmsync --rev after=.venv/bin/crmsync
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from pathlib import Path

import benchlib
import drt_peer
import sync_throughput
from benchlib import DEFAULT_PG_URL, Databases, prepared_database, stop_on_sigterm
from crmsync.sandbox import SandboxServer

SANDBOX = sync_throughput.SANDBOX


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--rev", action="append", required=True, help="LABEL=path/to/crmsync")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--contacts", type=int, default=50_000)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for crmsync")
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--patience", type=float, default=20.0, help="seconds to wait for quiet")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    parser.add_argument(
        "--schema", default="head", help="migrate the template only this far (an older --rev)"
    )
    parser.add_argument("--drt-venv", default=str(drt_peer.DEFAULT_VENV))
    parser.add_argument("--py-spy", help="path to py-spy: profile every crmsync run")
    parser.add_argument("--profile-dir", type=Path, default=Path("/tmp/crmsync-ab-profiles"))
    args = parser.parse_args()
    stop_on_sigterm()
    revisions = dict(item.split("=", 1) for item in args.rev)
    benchlib.SCHEMA = args.schema
    args.env = sync_throughput.parse_env(args.env)
    profiles = args.profile_dir
    quiet = functools.partial(benchlib.wait_quiet, patience=args.patience)
    sync_throughput.wait_quiet = quiet  # type: ignore[attr-defined]
    rates: dict[str, list[float]] = {label: [] for label in [*revisions, "drt"]}
    cpus: dict[str, list[float]] = {label: [] for label in [*revisions, "drt"]}
    with SandboxServer(SANDBOX, subprocess=True) as sb, Databases(args.pg_url) as databases:
        print(f"{args.db}: loading {args.contacts:,} contacts ...", flush=True)
        template, _ = prepared_database(databases, args.db, args.contacts)
        project = None
        if args.peer:
            source = template
            if args.db != "sqlite":
                source, _ = prepared_database(databases, "sqlite", args.contacts)
            assert source.path is not None
            drt = drt_peer.ensure_venv(Path(args.drt_venv))
            project = drt_peer.DrtProject(
                drt, databases.tmp / "drt", source.path, sb.hubspot_url,
                sb.config.hubspot_access_token,
            )  # fmt: skip
        for round_ in range(args.rounds):
            order = list(revisions) if round_ % 2 == 0 else list(reversed(revisions))
            for label in order:
                benchlib.CRMSYNC = revisions[label]
                args.profile_dir = profiles / f"{label}-{round_ + 1}"
                run = sync_throughput.run_crmsync(databases, sb, template, 1, True, args)
                rates[label].append(run.rate)
                cpus[label].append(run.crmsync_cpu)
                _show(round_, label, run)
            if project is not None:
                quiet()
                run = sync_throughput.run_peer(project, sb, args.contacts)
                rates["drt"].append(run.rate)
                cpus["drt"].append(run.crmsync_cpu)
                _show(round_, "drt", run)
    print()
    print(benchlib.environment(args.pg_url))
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.db}, {args.rounds} rounds")
    first = next(iter(revisions))
    for label, values in rates.items():
        if not values:
            continue
        line = f"{label}: median {statistics.median(values):,.0f} contacts/s"
        line += f" ({', '.join(f'{v:,.0f}' for v in values)})"
        if label != first and label in revisions:
            ratio = statistics.median(values) / statistics.median(rates[first])
            wins = sum(b > a for a, b in zip(rates[first], values, strict=True))
            line += f"; {ratio:.3f}x {first}, ahead in {wins} of {len(values)} rounds"
        line += f"; CPU s per run median {statistics.median(cpus[label]):.2f}"
        if label != first and label in revisions:
            less = sum(b < a for a, b in zip(cpus[first], cpus[label], strict=True))
            line += f", less than {first} in {less} of {len(values)}"
        print(line)


def _show(round_: int, label: str, run: sync_throughput.Run) -> None:
    print(
        f"  round {round_ + 1} {label}: {run.rate:>8,.0f} contacts/s ({run.seconds:.2f} s, "
        f"select {run.select_seconds:.2f} s; "
        f"CPU s: crmsync {run.crmsync_cpu:.2f} (writer {run.writer_cpu:.2f}), "
        f"sandbox {run.sandbox_cpu:.1f}, "
        f"PostgreSQL {run.database_cpu:.1f}; others used {run.others:.0%} of the CPUs)",
        flush=True,
    )


if __name__ == "__main__":
    main()
