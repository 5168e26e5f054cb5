"""Running crmsync: the API, workers, tokens and the database schema."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

from crmsync import __version__, auth, db
from crmsync.cli import common
from crmsync.cli.app import app, db_app
from crmsync.cli.common import CrmOption, parse_crm_names, upgrade_schema
from crmsync.settings import Settings


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


def _ensure_secret(settings: Settings) -> tuple[str, Path | None]:
    """`auth.ensure_secret`, with a secret file that is too short as a readable exit."""
    try:
        return auth.ensure_secret(settings)
    except auth.WeakSecret as exc:
        typer.echo(f"crmsync: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
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
    """Print a bearer token (only the token, on stdout) signed with the service's secret."""
    settings = common.load_settings()
    try:
        lifetime = auth.parse_ttl(ttl)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ttl") from None
    secret, created = _ensure_secret(settings)
    if created is not None:
        typer.echo(f"generated a JWT secret in {created} (mode 0600)", err=True)
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

    settings = common.load_settings()
    secret, created = _ensure_secret(settings)
    if created is not None:
        typer.echo(
            f"JWT_SECRET_KEY is not set: generated a random secret in {created} (mode 0600)",
            err=True,
        )
    asyncio.run(upgrade_schema(settings))
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

    settings = common.load_settings()
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
