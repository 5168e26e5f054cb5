"""The `crmsync` command: thin wrappers that read settings and call the library."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from typing import Annotated

import typer
from pydantic import ValidationError

from crmsync import __version__, auth, db, logs
from crmsync.enums import CRM_NAMES, Crm
from crmsync.migrate import upgrade
from crmsync.settings import Settings

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
def worker_command(crm: CrmOption = None) -> None:
    """Run a sync worker (no HTTP) until SIGTERM/SIGINT. Run several, on several hosts."""
    from crmsync.runtime import SchemaOutdated, run_worker

    settings = load_settings()
    crms = parse_crm_names(crm)

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


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive interrupt
        sys.exit(130)


if __name__ == "__main__":
    main()
