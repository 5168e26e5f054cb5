"""Running crmsync: the API, workers, tokens and the database schema."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

from crmsync import __version__, auth
from crmsync.cli import common
from crmsync.cli.app import app, db_app
from crmsync.cli.common import CrmOption, exit_codes, fail, parse_crm_names, upgrade_schema
from crmsync.settings import Settings


@app.command(rich_help_panel="Set up")
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the schema of DATABASE_URL to the latest version.

    Example: DATABASE_URL=postgresql://crmsync:secret@db/crmsync crmsync db upgrade
    """
    settings = common.load_settings()
    with exit_codes(settings):
        asyncio.run(upgrade_schema(settings))
    typer.echo("database schema is up to date", err=True)


def _ensure_secret(settings: Settings) -> tuple[str, Path | None]:
    """`auth.ensure_secret`, with a secret file that is too short as a readable exit."""
    try:
        return auth.ensure_secret(settings)
    except auth.WeakSecret as exc:
        typer.echo(f"crmsync: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command(rich_help_panel="Set up")
def token(
    sub: Annotated[str, typer.Option(help="Subject (user name) put in the token.")] = "crmsync",
    ttl: Annotated[str, typer.Option(help="Lifetime, e.g. 30m, 1h, 7d.")] = "1h",
    read_only: Annotated[
        bool,
        typer.Option(
            "--read-only", help="A token that may read but not change anything (scope 'read')."
        ),
    ] = False,
) -> None:
    """Print a bearer token (only the token, on stdout) signed with the service's secret.

    The secret is JWT_SECRET_KEY, or the one `crmsync serve` generated in
    CRMSYNC_STATE_DIR/secret; without either this exits 1 (a token signed with a secret the
    service does not know would be refused).

    \b
    Examples:
      TOKEN=$(crmsync token --ttl 8h)
      crmsync token --read-only --sub dashboard-viewer --ttl 30d
    """
    settings = common.load_settings()
    try:
        lifetime = auth.parse_ttl(ttl)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ttl") from None
    try:
        secret = auth.load_secret(settings)
    except auth.WeakSecret as exc:
        raise fail(str(exc), 2) from None
    if secret is None:
        where = auth.secret_path(settings).absolute()
        raise fail(
            f"no JWT secret: JWT_SECRET_KEY is not set and {where} does not exist. "
            "Start `crmsync serve` once (it creates that file), or set JWT_SECRET_KEY to the "
            "secret the service uses",
            1,
        )
    scope = auth.READ if read_only else None
    typer.echo(
        auth.mint_token(
            secret,
            sub,
            lifetime,
            scope=scope,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
    )


@app.command(rich_help_panel="Run")
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
    migrate: Annotated[
        bool,
        typer.Option(
            "--migrate/--no-migrate",
            help="Upgrade the database schema first (default). With --no-migrate, refuse an "
            "outdated schema instead: for deployments that run `crmsync db upgrade` as a step.",
        ),
    ] = True,
) -> None:
    """Run the HTTP API and a sync worker (upgrading the database schema first).

    Without JWT_SECRET_KEY, the first start generates a secret in CRMSYNC_STATE_DIR/secret
    (mode 0600), which `crmsync token` then uses. Exits 1, naming the database, when
    DATABASE_URL cannot be reached.

    \b
    Examples:
      crmsync serve --print-token
      DATABASE_URL=postgresql://crmsync:secret@db/crmsync crmsync serve --host 0.0.0.0
      crmsync serve --host 0.0.0.0 --no-worker --no-migrate   # the API before separate workers
    """
    import uvicorn

    from crmsync.api.app import create_app

    settings = common.load_settings()
    # The database first: a service that cannot start leaves no new secret behind.
    with exit_codes(settings):
        asyncio.run(upgrade_schema(settings) if migrate else _check_schema(settings))
    secret, created = _ensure_secret(settings)
    if created is not None:
        typer.echo(
            f"JWT_SECRET_KEY is not set: generated a random secret in {created} (mode 0600)",
            err=True,
        )
    url = f"http://{host}:{port}"
    typer.echo(f"crmsync {__version__} on {url}  (API docs: {url}/docs)", err=True)
    if print_token:
        ready = auth.mint_token(
            secret,
            "crmsync",
            dt.timedelta(hours=12),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
        typer.echo(f"token (12 h): {ready}", err=True)
        typer.echo(f'try: curl -H "Authorization: Bearer $TOKEN" {url}/api/v3/contacts', err=True)
    application = create_app(settings, secret)
    if worker:
        from crmsync.runtime import embed_worker

        embed_worker(application, parse_crm_names(crm))
    uvicorn.run(application, host=host, port=port, log_config=None, access_log=False)


@app.command("worker", rich_help_panel="Run")
def worker_command(
    crm: CrmOption = None,
    health_port: Annotated[
        int | None,
        typer.Option(
            "--health-port",
            "--metrics-port",
            help="Serve /healthz, /readyz and this worker's Prometheus counters (/metrics) "
            "at http://HOST:PORT (--metrics-port is the older name).",
            min=1,
            max=65535,
        ),
    ] = None,
    health_host: Annotated[
        str, typer.Option("--health-host", "--metrics-host", help="Interface for --health-port.")
    ] = "127.0.0.1",
    until_empty: Annotated[
        bool,
        typer.Option(
            "--until-empty",
            help="Push everything selected, then exit (for cron and CI); see the exit codes above.",
        ),
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            metavar="SECONDS",
            help="With --until-empty: give up after this long (exit 3). Default: no limit.",
        ),
    ] = None,
) -> None:
    """Run a sync worker (no HTTP) until SIGTERM/SIGINT. Run several, on several hosts.

    With --until-empty it pushes every selected contact of its CRMs, showing progress per CRM,
    and exits once the queue is empty: no contact Selected, Queued or Processing. Contacts
    waiting for a retry (after a vendor error or a rate limit) are not done yet: it waits for
    them (until --timeout, if given; retries are finite, so the wait ends anyway). A CRM that
    cannot progress is not waited for: paused by an operator, paused because its vendor
    refused our credentials or configuration, or not configured (its contacts stay queued).

    \b
    Exit codes with --until-empty:
      0  every selected contact of these CRMs is Complete
      1  the queue is empty, but some selected contacts are in Error (`crmsync failed`);
         or the database could not be used
      2  bad usage, a --crm that is not configured, or a schema that needs `db upgrade`
      3  not done: --timeout reached (in-flight batches get CRMSYNC_SHUTDOWN_GRACE_SECONDS to
         finish), or a CRM that cannot progress still has contacts queued
      130  interrupted (SIGINT/SIGTERM); what is left stays queued

    \b
    Examples:
      crmsync worker                                  # run until stopped
      crmsync worker --health-port 9101               # with /readyz and /metrics on :9101
      crmsync worker --until-empty --timeout 600      # a cron job: push, then exit
      crmsync worker --until-empty --crm hubspot
    """
    from crmsync.ops.probes import ProbeServerError
    from crmsync.runtime import run_worker

    settings = common.load_settings()
    crms = parse_crm_names(crm)
    if timeout is not None and not until_empty:
        raise fail("--timeout needs --until-empty", 2)
    if until_empty:
        if health_port is not None:
            raise fail("--health-port is for a long-running worker, not --until-empty", 2)
        from crmsync.cli import drain

        drain.run(settings, crms, timeout)
        return
    address = None if health_port is None else (health_host, health_port)

    async def _run() -> None:
        engine = common.open_engine(settings)
        try:
            await run_worker(settings, engine, crms, address)
        finally:
            await engine.dispose()

    # An outdated schema exits 2; a database that cannot be reached, 1.
    with exit_codes(settings):
        try:
            asyncio.run(_run())
        except ProbeServerError as exc:
            raise fail(str(exc), 1) from None


async def _check_schema(settings: Settings) -> None:
    """`serve --no-migrate`: refuse an outdated schema (exit 2, as `crmsync worker` does)."""
    from crmsync.runtime import check_schema

    engine = common.open_engine(settings)
    try:
        await check_schema(engine)
    finally:
        await engine.dispose()
