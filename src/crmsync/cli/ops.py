"""Operator commands: status, retry, reset, pause and resume."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from crmsync.cli import common
from crmsync.cli.app import app
from crmsync.cli.common import (
    OpsCrm,
    exit_codes,
    fail,
    one_crm,
    read_id_file,
    run_ops,
)
from crmsync.enums import SyncStatus


@app.command(rich_help_panel="Operate")
def status(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print health and summary as JSON.")
    ] = False,
    max_lag_seconds: Annotated[
        float, typer.Option(min=0.001, help="Lag above which a CRM counts as degraded.")
    ] = 900.0,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Refresh the tables in place until Ctrl-C.")
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, metavar="SECONDS", help="With --watch: refresh period.")
    ] = 2.0,
) -> None:
    """Show each CRM: configured, paused, workers, due rows, lag, error rate, status counts.

    Exits 1 when the database cannot be read (the status is then down). With --watch the
    tables are refreshed in place (a database that stops answering shows as down) until
    Ctrl-C, which exits 0.

    \b
    Examples:
      crmsync status
      crmsync status --watch --interval 5
      crmsync status --json | jq '.health.status'
    """
    from rich.console import Console

    from crmsync.ops.render import render_status

    if watch and as_json:
        raise fail("--watch shows the tables; for JSON, poll `crmsync status --json`", 2)
    settings = common.load_settings()
    if watch:
        from crmsync.cli import watch as watching

        watching.run(settings, max_lag_seconds, interval)
        return
    health, summary = run_ops(settings, lambda ops: ops.overview(max_lag_seconds))
    if as_json:
        out = {
            "health": health.model_dump(mode="json"),
            "summary": summary.model_dump(mode="json") if summary else None,
        }
        typer.echo(json.dumps(out, indent=2))
    else:
        render_status(Console(), health, summary)
    if health.database != "ok":
        raise typer.Exit(1)


@app.command(rich_help_panel="Operate")
def retry(
    crm: OpsCrm,
    all_failed: Annotated[
        bool, typer.Option("--all-failed", help="Retry every contact in Error for the CRM.")
    ] = False,
    ids: Annotated[
        str | None,
        typer.Option(
            "--ids", metavar="FILE", help="Retry these contacts: one UUID per line (- = stdin)."
        ),
    ] = None,
) -> None:
    """Put contacts in Error back to Selected, attempts reset, due now.

    \b
    Examples:
      crmsync retry --crm hubspot --all-failed
      crmsync failed --crm hubspot --format ids | crmsync retry --crm hubspot --ids -
    """
    target = one_crm(crm)
    if all_failed == (ids is not None):
        raise fail("give exactly one of --all-failed and --ids FILE", 2)
    with exit_codes():
        contact_ids = read_id_file(ids) if ids is not None else None
    settings = common.load_settings()
    count = run_ops(settings, lambda ops: ops.retry(target.value, contact_ids, all_failed))
    if contact_ids is None:
        typer.echo(f"{target.value}: requeued {count} failed contact(s)")
    else:
        skipped = len(set(contact_ids)) - count
        note = f" ({skipped} listed were not in Error and were left alone)" if skipped else ""
        typer.echo(f"{target.value}: requeued {count} contact(s){note}")


@app.command(rich_help_panel="Operate")
def reset(
    crm: OpsCrm,
    from_: Annotated[
        list[str],
        typer.Option(
            "--from",
            help="Status to reset from (repeatable): Selected, Queued, Error, Complete, "
            "Skipped; Processing needs --force.",
        ),
    ],
    to: Annotated[str, typer.Option("--to", help="New (forget) or Selected (queue again).")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Allow --from Processing (rows in flight).")
    ] = False,
) -> None:
    """Move one CRM's rows from some statuses to New or Selected (the work order's rollback).

    To New: sync status New; processing status, error, attempts, next attempt and lease cleared
    (the external id is kept). To Selected: queued again, due now, attempts reset, and pushed
    even if unchanged. Shows the counts and asks before changing anything.

    \b
    Examples:
      crmsync reset --crm brevo --from Error --from Queued --to New
      crmsync reset --crm hubspot --from Complete --to Selected --yes
    """
    from crmsync.ops.service import check_reset, parse_status

    target = one_crm(crm)
    with exit_codes():
        sources = list(dict.fromkeys(parse_status(name) for name in from_))
        goal = parse_status(to)
        check_reset(sources, goal, force)
    settings = common.load_settings()
    counts = run_ops(settings, lambda ops: ops.reset_preview(target, sources))
    total = sum(counts.values())
    for status_, n in counts.items():
        typer.echo(f"{target.value}: {n} row(s) in {status_.value}")
    if total == 0:
        typer.echo("nothing to reset")
        return
    effect = (
        "sync status New; processing status, error, attempts, next attempt and lease cleared"
        if goal is SyncStatus.New
        else "queued again (Selected), due now, attempts reset, pushed even if unchanged"
    )
    typer.echo(f"{total} row(s) -> {goal.value}: {effect}")
    if not yes and not typer.confirm(f"Reset {total} row(s) of {target.value}?", default=False):
        raise fail("aborted; nothing was changed", 1)
    done = run_ops(settings, lambda ops: ops.reset(target, sources, goal, force=force))
    typer.echo(f"{target.value}: reset {done} row(s) to {goal.value}")


@app.command(rich_help_panel="Operate")
def pause(crm: OpsCrm) -> None:
    """Pause a CRM for every worker (until `crmsync resume`). Batches in flight finish.

    Example: crmsync pause --crm brevo
    """
    target = one_crm(crm)
    settings = common.load_settings()
    run_ops(settings, lambda ops: ops.pause(target))
    typer.echo(
        f"{target.value} paused: workers stop claiming its rows within a few seconds; "
        f"`crmsync resume --crm {target.value}` continues"
    )


@app.command(rich_help_panel="Operate")
def resume(crm: OpsCrm) -> None:
    """Resume a CRM; also lifts an auth or configuration pause so it is retried at once.

    Example: crmsync resume --crm brevo
    """
    target = one_crm(crm)
    settings = common.load_settings()
    done = run_ops(settings, lambda ops: ops.resume(target))
    parts = []
    if done.was_manual:
        parts.append("operator pause lifted")
    if done.cleared_pause:
        parts.append(f"{done.cleared_pause} pause cleared, {done.released} held row(s) due now")
    if not parts:
        typer.echo(f"{target.value} was not paused (a rate-limit pause, if any, stays)")
        return
    typer.echo(f"{target.value} resumed: " + "; ".join(parts))
