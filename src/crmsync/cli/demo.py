"""`crmsync demo`: the whole tool on this machine, against the sandbox, in one command."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from crmsync.cli.app import app
from crmsync.demo.options import DEFAULT_DB, DemoOptions


@app.command(rich_help_panel="Run")
def demo(
    host: Annotated[str, typer.Option(help="Interface the API listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the API.", min=1, max=65535)] = 8000,
    sandbox_port: Annotated[
        int, typer.Option(help="Port of the sandbox CRMs (always on 127.0.0.1).", min=1, max=65535)
    ] = 8900,
    db: Annotated[
        Path, typer.Option(help="The demo's own SQLite database (never DATABASE_URL).")
    ] = DEFAULT_DB,
    contacts: Annotated[
        int,
        typer.Option(help="Contacts generated into a new database.", min=0, max=1_000_000),
    ] = 500,
) -> None:
    """Run the API, a worker and sandbox Brevo, HubSpot, Mautic and n8n, with sample contacts.

    The first start generates the contacts; every start selects a segment for each CRM and
    shows the sync progress. The demo reads no .env and no environment settings: it never
    touches your database or a real CRM. Stop it with Ctrl-C.

    Example: crmsync demo --port 8080 --contacts 2000
    """
    from rich.console import Console

    from crmsync.demo.run import DemoError, run

    options = DemoOptions(host=host, port=port, sandbox_port=sandbox_port, db=db, contacts=contacts)
    try:
        # Long lines (the token, URLs) stay whole, for copying.
        code = run(options, Console(soft_wrap=True))
    except DemoError as exc:
        typer.echo(f"crmsync demo: {exc}", err=True)
        raise typer.Exit(1) from None
    # Everything is closed by now: the API, the worker and its writer process, the database,
    # the sandbox. Python's teardown of the app's objects would add a second or more to a Ctrl-C
    # on a busy machine, for nothing.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
