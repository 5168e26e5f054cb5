"""The `crmsync` command: thin wrappers that read settings and call the library."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from typing import Annotated

import typer
from pydantic import ValidationError

from crmsync import __version__, auth, db, logs
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
) -> None:
    """Run the HTTP API (upgrading the database schema first)."""
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
    uvicorn.run(application, host=host, port=port, log_config=None, access_log=False)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive interrupt
        sys.exit(130)


if __name__ == "__main__":
    main()
