"""`crmsync config show`: every setting's effective value and where it came from."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from dotenv import dotenv_values
from pydantic import AliasChoices, SecretStr
from pydantic_settings import BaseSettings
from rich import box
from rich.console import Console
from rich.table import Table

from crmsync import auth
from crmsync.cli import common
from crmsync.cli.app import config_app
from crmsync.enums import Crm
from crmsync.settings import Settings

REDACTED = "********"
# URLs whose path is the secret (whoever knows it can post to it): only the host is shown.
SECRET_URLS = {"N8N_WEBHOOK_URL", "CRMSYNC_ALERT_WEBHOOK_URL"}


@dataclass(frozen=True, slots=True)
class Row:
    setting: str
    value: str
    source: str  # default, environment, or .env


def _env_names(model: type[BaseSettings], name: str) -> list[str]:
    """The variables pydantic-settings reads for a field, as they would be written."""
    field = model.model_fields[name]
    alias = field.validation_alias
    if isinstance(alias, str):
        return [alias.upper()]
    if isinstance(alias, AliasChoices):
        return [choice.upper() for choice in alias.choices if isinstance(choice, str)]
    prefix = str(model.model_config.get("env_prefix") or "")
    return [f"{prefix}{name}".upper()]


def _shown(setting: str, value: Any) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, SecretStr):
        return REDACTED if value.get_secret_value() else "(empty)"
    text = str(value)
    if setting in SECRET_URLS:
        parts = urlsplit(text)
        return f"{parts.scheme}://{parts.hostname or ''}{_port(parts.port)}/{REDACTED}"
    if setting == "DATABASE_URL":
        return common.database_name(text)
    if "://" in text and "@" in text:  # a URL with credentials in it: hide the password
        return common.database_name(text)
    return text


def _port(port: int | None) -> str:
    return f":{port}" if port else ""


def rows(settings: Settings, environ: dict[str, str], dotenv: dict[str, str]) -> Iterator[Row]:
    """One row per setting, in the order of the settings classes."""
    env = {key.upper(): value for key, value in environ.items()}
    from_file = {key.upper(): value for key, value in dotenv.items()}
    models: list[BaseSettings] = [settings, *(settings.crm(crm) for crm in Crm)]
    for model in models:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, BaseSettings):
                continue  # a CRM's settings: listed after the general ones
            names = _env_names(type(model), name)
            source, setting = "default", names[0]
            for candidate in names:
                if candidate in env:
                    source, setting = "environment", candidate
                    break
                if candidate in from_file:
                    source, setting = ".env", candidate
                    break
            yield Row(setting, _shown(names[0], value), source)


@config_app.command("show")
def show(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per setting, in a list.")
    ] = False,
    only_set: Annotated[
        bool, typer.Option("--only-set", help="Leave out settings at their default.")
    ] = False,
) -> None:
    """Show every setting's effective value and where it came from: default, environment, or
    the .env file of the working directory (the environment wins over .env).

    Secrets are never shown: API keys, tokens and passwords as ********, the n8n and alert
    webhook URLs by their host only, and DATABASE_URL with its password as ***.

    \b
    Examples:
      crmsync config show
      crmsync config show --only-set
      crmsync config show --json | jq '.[] | select(.source == "environment")'
    """
    settings = common.load_settings()
    env_file = Path(".env")
    dotenv = {k: v or "" for k, v in dotenv_values(env_file).items()} if env_file.is_file() else {}
    found = [
        r for r in rows(settings, dict(os.environ), dotenv) if not only_set or r.source != "default"
    ]
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in found], indent=2))
        return
    console = Console()
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("setting", "value", "source"):
        table.add_column(column, overflow="fold")
    for row in found:
        table.add_row(row.setting, row.value, row.source)
    console.print(table)
    where = env_file.absolute()
    typer.echo(f".env file: {where}" + ("" if env_file.is_file() else " (none)"))
    typer.echo(f"token secret: {_secret_source(settings)}")


def _secret_source(settings: Settings) -> str:
    if settings.jwt_secret_key is not None:
        return "JWT_SECRET_KEY"
    path = auth.secret_path(settings)
    if path.exists():
        return f"generated, in {path}"
    return f"none yet (`crmsync serve` generates one in {path})"
