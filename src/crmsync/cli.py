"""The `crmsync` command: thin wrappers that read settings and call the library."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from pydantic import ValidationError

from crmsync import __version__, auth, db, logs
from crmsync.enums import CRM_NAMES, Crm, SyncStatus
from crmsync.errors import BadRequest
from crmsync.migrate import upgrade
from crmsync.settings import Settings

if TYPE_CHECKING:
    from crmsync.ops.service import OpsService

T = TypeVar("T")

app = typer.Typer(
    help="crmsync: push selected contacts to Brevo, HubSpot, Mautic and n8n.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")
hubspot_app = typer.Typer(help="HubSpot set-up commands.", no_args_is_help=True)
app.add_typer(hubspot_app, name="hubspot")

CrmOption = Annotated[
    list[str] | None,
    typer.Option("--crm", help="Only this CRM (repeatable): brevo, hubspot, mautic, n8n."),
]


def parse_crm_names(names: list[str] | None) -> list[Crm] | None:
    if not names:
        return None
    try:
        return [Crm(name.strip().lower()) for name in names]
    except ValueError:
        valid = ", ".join(CRM_NAMES)
        raise typer.BadParameter(
            f"unknown CRM in {names}; valid: {valid}", param_hint="--crm"
        ) from None


def load_settings() -> Settings:
    """Settings from the environment and .env, or a readable exit on a bad value."""
    try:
        settings = Settings()
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            where = ".".join(str(p) for p in error["loc"])
            lines.append(f"  {where}: {error['msg']}")
        typer.echo("crmsync: invalid configuration:\n" + "\n".join(lines), err=True)
        raise typer.Exit(2) from None
    logs.configure(settings.log_format, settings.log_level)
    return settings


async def _upgrade(settings: Settings) -> None:
    engine = db.create_engine(settings.database_url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the schema of DATABASE_URL to the latest version."""
    settings = load_settings()
    asyncio.run(_upgrade(settings))
    typer.echo("database schema is up to date", err=True)


@app.command()
def token(
    sub: Annotated[str, typer.Option(help="Subject (user name) put in the token.")] = "crmsync",
    ttl: Annotated[str, typer.Option(help="Lifetime, e.g. 30m, 1h, 7d.")] = "1h",
) -> None:
    """Print a bearer token (only the token, on stdout) signed with the service's secret."""
    settings = load_settings()
    try:
        lifetime = auth.parse_ttl(ttl)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ttl") from None
    secret, created = auth.ensure_secret(settings)
    if created is not None:
        typer.echo(f"generated a JWT secret in {created} (mode 0600)", err=True)
    typer.echo(auth.mint_token(secret, sub, lifetime))


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    print_token: Annotated[
        bool, typer.Option("--print-token", help="Print a ready 12-hour token at start.")
    ] = False,
    worker: Annotated[
        bool, typer.Option("--worker/--no-worker", help="Run a sync worker in this process.")
    ] = True,
    crm: CrmOption = None,
) -> None:
    """Run the HTTP API and a sync worker (upgrading the database schema first)."""
    import uvicorn

    from crmsync.api.app import create_app

    settings = load_settings()
    secret, created = auth.ensure_secret(settings)
    if created is not None:
        typer.echo(
            f"JWT_SECRET_KEY is not set: generated a random secret in {created} (mode 0600)",
            err=True,
        )
    asyncio.run(_upgrade(settings))
    url = f"http://{host}:{port}"
    typer.echo(f"crmsync {__version__} on {url}  (API docs: {url}/docs)", err=True)
    if print_token:
        ready = auth.mint_token(secret, "crmsync", dt.timedelta(hours=12))
        typer.echo(f"token (12 h): {ready}", err=True)
        typer.echo(f'try: curl -H "Authorization: Bearer $TOKEN" {url}/api/v3/contacts', err=True)
    application = create_app(settings, secret)
    if worker:
        from crmsync.runtime import embed_worker

        embed_worker(application, parse_crm_names(crm))
    uvicorn.run(application, host=host, port=port, log_config=None, access_log=False)


@app.command("worker")
def worker_command(
    crm: CrmOption = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve this worker's Prometheus counters at http://HOST:PORT/metrics.",
            min=1,
            max=65535,
        ),
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Interface for --metrics-port.")] = "127.0.0.1",
) -> None:
    """Run a sync worker (no HTTP) until SIGTERM/SIGINT. Run several, on several hosts."""
    from crmsync.runtime import SchemaOutdated, run_worker

    settings = load_settings()
    crms = parse_crm_names(crm)
    if metrics_port is not None:
        # Pushes, vendor latency, 429s and lease losses are counted in the worker's own process;
        # the queue gauges come from the API's /metrics (they are read from the database).
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=metrics_host)

    async def _run() -> None:
        engine = db.create_engine(settings.database_url)
        try:
            await run_worker(settings, engine, crms)
        finally:
            await engine.dispose()

    try:
        asyncio.run(_run())
    except SchemaOutdated as exc:
        typer.echo(f"crmsync worker: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def sandbox(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8900,
    faults: Annotated[
        list[str] | None,
        typer.Option(
            "--faults",
            help="Faults and limits per vendor, e.g. hubspot:error_rate=0.2,latency_ms=50 "
            "(repeatable).",
        ),
    ] = None,
    no_rate_limits: Annotated[
        bool, typer.Option("--no-rate-limits", help="Turn every vendor rate limit off.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed for injected faults.")] = 0,
) -> None:
    """Run local fakes of Brevo, HubSpot, Mautic and n8n (for tests, demos and benchmarks)."""
    from crmsync.sandbox import SandboxConfig, parse_faults
    from crmsync.sandbox import serve as serve_sandbox

    try:
        config = SandboxConfig(
            seed=seed, faults=parse_faults(faults or []), no_rate_limits=no_rate_limits
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--faults") from None
    logs.configure("text", "WARNING")
    serve_sandbox(host, port, config)


@hubspot_app.command("ensure-properties")
def hubspot_ensure_properties() -> None:
    """Create the custom contact properties crmsync sends (domain id, page id, ...) in HubSpot."""
    from crmsync.connectors.base import ConnectorError
    from crmsync.connectors.hubspot import ensure_properties, property_names

    settings = load_settings()
    if missing := settings.hubspot.missing():
        typer.echo(f"crmsync: {missing}", err=True)
        raise typer.Exit(2)
    try:
        created = asyncio.run(ensure_properties(settings.hubspot))
    except ConnectorError as exc:
        typer.echo(f"crmsync: HubSpot refused: {exc.message}", err=True)
        raise typer.Exit(1) from None
    wanted = sorted(property_names(settings.hubspot).values())
    for name in wanted:
        typer.echo(f"{'created' if name in created else 'exists '}  {name}")


# -- operator commands -----------------------------------------------------------------------

OpsCrm = Annotated[str, typer.Option("--crm", help="The CRM: brevo, hubspot, mautic or n8n.")]


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"crmsync: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def exit_codes() -> Iterator[None]:
    """Turn operations errors into a message on stderr and an exit code.

    2 for bad input (unknown CRM or status, an outdated schema); 1 for a request refused for
    safety, or a database that cannot be used.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from crmsync.ops.service import Refused
    from crmsync.runtime import SchemaOutdated

    try:
        yield
    except Refused as exc:
        raise _fail(exc.message, 1) from None
    except (BadRequest, SchemaOutdated) as exc:
        raise _fail(str(exc), 2) from None
    except (SQLAlchemyError, OSError) as exc:
        # The first line only: SQLAlchemy appends the statement and a link.
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise _fail(f"the database could not be used ({type(exc).__name__}: {first})", 1) from None


def run_ops(settings: Settings, action: Callable[[OpsService], Awaitable[T]]) -> T:
    """Run one operations call against DATABASE_URL (after checking its schema version)."""
    from crmsync.ops.service import OpsService
    from crmsync.runtime import check_schema

    # The schema check reads alembic's version table; its INFO lines are noise here.
    logging.getLogger("alembic").setLevel(logging.WARNING)

    async def _run() -> T:
        engine = db.create_engine(settings.database_url)
        try:
            await check_schema(engine)
            return await action(OpsService(engine, settings))
        finally:
            await engine.dispose()

    with exit_codes():
        return asyncio.run(_run())


def _one_crm(name: str) -> Crm:
    from crmsync.ops.service import parse_crm

    try:
        return parse_crm(name)
    except BadRequest as exc:
        raise _fail(exc.message, 2) from None


def read_id_file(path: str) -> list[uuid.UUID]:
    """Contact ids, one per line (blank lines and # comments skipped); "-" reads stdin.

    Any line that is not a UUID fails the whole file, so nothing is changed by half a list.
    """
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadRequest(f"cannot read {path}: {exc}") from None
    ids: list[uuid.UUID] = []
    bad: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            ids.append(uuid.UUID(line))
        except ValueError:
            bad.append(f"line {number}: {line[:80]!r}")
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise BadRequest(f"{path}: not a contact id (UUID) on {shown}. Nothing was changed.")
    if not ids:
        raise BadRequest(f"{path}: no contact ids in it (one UUID per line)")
    return ids


@app.command()
def status(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print health and summary as JSON.")
    ] = False,
    max_lag_seconds: Annotated[
        float, typer.Option(min=0.001, help="Lag above which a CRM counts as degraded.")
    ] = 900.0,
) -> None:
    """Show each CRM: configured, paused, workers, due rows, lag, error rate, status counts.

    Exits 1 when the database cannot be read (the status is then down).
    """
    from rich.console import Console

    from crmsync.ops.render import render_status

    settings = load_settings()
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


@app.command()
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
    """Put contacts in Error back to Selected, attempts reset, due now."""
    target = _one_crm(crm)
    if all_failed == (ids is not None):
        raise _fail("give exactly one of --all-failed and --ids FILE", 2)
    with exit_codes():
        contact_ids = read_id_file(ids) if ids is not None else None
    settings = load_settings()
    count = run_ops(settings, lambda ops: ops.retry(target.value, contact_ids, all_failed))
    if contact_ids is None:
        typer.echo(f"{target.value}: requeued {count} failed contact(s)")
    else:
        skipped = len(set(contact_ids)) - count
        note = f" ({skipped} listed were not in Error and were left alone)" if skipped else ""
        typer.echo(f"{target.value}: requeued {count} contact(s){note}")


@app.command()
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
    """
    from crmsync.ops.service import check_reset, parse_status

    target = _one_crm(crm)
    with exit_codes():
        sources = list(dict.fromkeys(parse_status(name) for name in from_))
        goal = parse_status(to)
        check_reset(sources, goal, force)
    settings = load_settings()
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
        raise _fail("aborted; nothing was changed", 1)
    done = run_ops(settings, lambda ops: ops.reset(target, sources, goal, force=force))
    typer.echo(f"{target.value}: reset {done} row(s) to {goal.value}")


@app.command()
def pause(crm: OpsCrm) -> None:
    """Pause a CRM for every worker (until `crmsync resume`). Batches in flight finish."""
    target = _one_crm(crm)
    settings = load_settings()
    run_ops(settings, lambda ops: ops.pause(target))
    typer.echo(
        f"{target.value} paused: workers stop claiming its rows within a few seconds; "
        f"`crmsync resume --crm {target.value}` continues"
    )


@app.command()
def resume(crm: OpsCrm) -> None:
    """Resume a CRM; also lifts an auth or configuration pause so it is retried at once."""
    target = _one_crm(crm)
    settings = load_settings()
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


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive interrupt
        sys.exit(130)


if __name__ == "__main__":
    main()
