"""Running crmsync: the API, workers, tokens and the database schema."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated

import typer

from crmsync import __version__, auth, db
from crmsync.cli import common
from crmsync.cli.app import app, db_app
from crmsync.cli.common import CrmOption, parse_crm_names, upgrade_schema


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the schema of DATABASE_URL to the latest version."""
    settings = common.load_settings()
    asyncio.run(upgrade_schema(settings))
    typer.echo("database schema is up to date", err=True)


@app.command()
def token(
    sub: Annotated[str, typer.Option(help="Subject (user name) put in the token.")] = "crmsync",
    ttl: Annotated[str, typer.Option(help="Lifetime, e.g. 30m, 1h, 7d.")] = "1h",
) -> None:
    """Print a bearer token (only the token, on stdout) signed with the service's secret."""
    settings = common.load_settings()
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

    Example, the API alone in front of separate workers:

        crmsync serve --host 0.0.0.0 --no-worker --no-migrate
    """
    import uvicorn

    from crmsync.api.app import create_app
    from crmsync.runtime import SchemaOutdated, check_schema

    settings = common.load_settings()
    secret, created = auth.ensure_secret(settings)
    if created is not None:
        typer.echo(
            f"JWT_SECRET_KEY is not set: generated a random secret in {created} (mode 0600)",
            err=True,
        )
    if migrate:
        asyncio.run(upgrade_schema(settings))
    else:

        async def _check() -> None:
            engine = db.engine_for(settings)
            try:
                await check_schema(engine)
            finally:
                await engine.dispose()

        try:
            asyncio.run(_check())
        except SchemaOutdated as exc:
            typer.echo(f"crmsync serve: {exc}", err=True)
            raise typer.Exit(2) from None
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
) -> None:
    """Run a sync worker (no HTTP API) until SIGTERM/SIGINT. Run several, on several hosts.

    Example, with probes for systemd or Kubernetes:

        crmsync worker --health-port 9101   # GET :9101/readyz, :9101/metrics
    """
    from crmsync.ops.probes import ProbeServerError
    from crmsync.runtime import SchemaOutdated, run_worker

    settings = common.load_settings()
    crms = parse_crm_names(crm)
    address = None if health_port is None else (health_host, health_port)

    async def _run() -> None:
        engine = db.engine_for(settings)
        try:
            await run_worker(settings, engine, crms, address)
        finally:
            await engine.dispose()

    try:
        asyncio.run(_run())
    except SchemaOutdated as exc:
        typer.echo(f"crmsync worker: {exc}", err=True)
        raise typer.Exit(2) from None
    except ProbeServerError as exc:
        typer.echo(f"crmsync worker: {exc}", err=True)
        raise typer.Exit(1) from None
