"""Vendor commands: the local sandbox and HubSpot's custom properties."""

from __future__ import annotations

import asyncio
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
