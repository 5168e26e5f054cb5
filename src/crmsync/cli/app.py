"""The `crmsync` command's Typer apps; each command module registers itself on them."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="crmsync: push selected contacts to Brevo, HubSpot, Mautic and n8n.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema commands.", no_args_is_help=True)
app.add_typer(db_app, name="db", rich_help_panel="Set up")
hubspot_app = typer.Typer(help="HubSpot set-up commands.", no_args_is_help=True)
app.add_typer(hubspot_app, name="hubspot", rich_help_panel="Set up")
config_app = typer.Typer(help="Show the settings crmsync runs with.", no_args_is_help=True)
app.add_typer(config_app, name="config", rich_help_panel="Set up")
