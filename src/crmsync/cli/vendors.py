"""Vendor commands: the local sandbox and HubSpot's custom properties."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from crmsync import logs
from crmsync.cli import common
from crmsync.cli.app import app, hubspot_app


@app.command(rich_help_panel="Run")
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
    custom_fields: Annotated[
        bool,
        typer.Option(
            "--custom-fields",
            help="Start with crmsync's custom fields, as after `crmsync setup` (default: a "
            "fresh account, like a new vendor account).",
        ),
    ] = False,
    write_env: Annotated[
        Path | None,
        typer.Option(
            "--write-env",
            metavar="FILE",
            help="Also write the settings that point crmsync here into this .env file: other "
            "lines are kept; a setting it has with another value is replaced only with --force.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="With --write-env: replace settings it already has.")
    ] = False,
) -> None:
    """Run local fakes of Brevo, HubSpot, Mautic and n8n (for tests, demos and benchmarks).

    Example: crmsync sandbox --write-env .env   (then, in another terminal: crmsync serve)
    """
    from crmsync.sandbox import SandboxConfig, parse_faults, sandbox_env
    from crmsync.sandbox import serve as serve_sandbox
    from crmsync.sandbox.envfile import EnvConflict
    from crmsync.sandbox.envfile import write_env as write_env_file

    try:
        config = SandboxConfig(
            seed=seed,
            faults=parse_faults(faults or []),
            no_rate_limits=no_rate_limits,
            custom_fields=custom_fields,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--faults") from None
    if write_env is not None:
        values = sandbox_env(f"http://{host}:{port}", config)
        try:
            written = write_env_file(write_env, values, force=force)
        except EnvConflict as exc:
            raise common.fail(str(exc), 1) from None
        except OSError as exc:
            raise common.fail(f"cannot write {write_env}: {exc.strerror}", 1) from None
        typer.echo(written.describe(write_env), err=True)
    logs.configure("text", "WARNING")
    serve_sandbox(host, port, config)


@hubspot_app.command("ensure-properties")
def hubspot_ensure_properties() -> None:
    """Create the custom contact properties crmsync sends to HubSpot (= crmsync setup hubspot)."""
    from crmsync.connectors.base import ConnectorError
    from crmsync.connectors.hubspot import ensure_properties, property_names

    settings = common.load_settings()
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
