"""Vendor set-up commands: `crmsync setup CRM` (create the fields crmsync writes) and
`crmsync check` (settings, credentials and fields, read-only)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer

from crmsync.cli import common
from crmsync.cli.app import app
from crmsync.enums import Crm

if TYPE_CHECKING:
    from crmsync.connectors.check import Finding
    from crmsync.settings import Settings


@app.command(rich_help_panel="Set up")
def setup(
    crm: Annotated[str, typer.Argument(help="The CRM: brevo, hubspot or mautic.")],
) -> None:
    """Create the custom fields crmsync writes: Brevo attributes, HubSpot properties, Mautic fields.

    Idempotent: it lists the vendor's fields and creates only the missing ones, then prints
    what was created and what existed. Run it once per account before the first sync (the
    worker pauses a CRM whose fields are missing).

    Example: crmsync setup brevo
    """
    from crmsync.connectors.base import ConnectorError, make_client
    from crmsync.connectors.fields import FIELD_NOUN_PLURAL, VENDOR_NAME, HasFields, set_up
    from crmsync.connectors.registry import create_connector

    target = common.one_crm(crm)
    settings = common.load_settings()
    if missing := settings.crm(target).missing():
        raise common.fail(f"{target.value} is not configured: {missing}", 2)

    async def run() -> list[tuple[str, str, str]]:
        client = make_client()
        connector = create_connector(target, settings, client)
        try:
            if not isinstance(connector, HasFields):
                return []
            results = await set_up(connector.field_api())
            return [(r.field.name, r.field.kind, r.status) for r in results]
        finally:
            await connector.aclose()
            await client.aclose()

    try:
        rows = asyncio.run(run())
    except ConnectorError as exc:
        raise common.fail(exc.message, 1) from None
    if target is Crm.n8n:
        typer.echo("n8n has no fields to set up: the workflow receives every contact field.")
        return
    from rich.console import Console
    from rich.table import Table

    noun = FIELD_NOUN_PLURAL[target]
    table = Table(title=f"{VENDOR_NAME[target]} {noun}")
    for column in ("name", "kind", "result"):
        table.add_column(column)
    for name, kind, status in rows:
        table.add_row(name, kind, status)
    Console().print(table)
    created = sum(status == "created" for _, _, status in rows)
    typer.echo(f"{created} created, {len(rows) - created} existed.")


@app.command(rich_help_panel="Set up")
def check() -> None:
    """Check the settings and, for every configured CRM, its credentials and custom fields.

    One cheap read call per CRM, nothing written: Brevo lists its contact attributes, HubSpot its
    contact properties, Mautic its contact fields; n8n's webhook is probed with a GET (its
    credentials cannot be checked without running the workflow). Prints ok / problem / not
    checked with the fix for each problem. Exits 0 when nothing is a problem, else 1.

    Example: crmsync check
    """
    from rich.console import Console
    from rich.table import Table

    from crmsync.connectors.check import Finding

    settings, problems = common.read_settings()
    findings: list[Finding] = [
        Finding("settings", "values", "problem", problem, "correct it in the environment or .env")
        for problem in problems
    ]
    if settings is not None:
        findings += asyncio.run(_check_all(settings))
    table = Table(title="crmsync check")
    for column in ("", "check", "result", "detail", "fix"):
        table.add_column(column, overflow="fold")
    style = {"ok": "green", "problem": "bold red", "not checked": "yellow"}
    for finding in findings:
        verdict = f"[{style[finding.verdict]}]{finding.verdict}[/]"
        table.add_row(finding.subject, finding.item, verdict, finding.detail, finding.fix)
    Console(width=160).print(table)
    failed = sum(finding.verdict == "problem" for finding in findings)
    typer.echo(f"{failed} problem(s)." if failed else "All checks passed.")
    if failed:
        raise typer.Exit(1)


async def _check_all(settings: Settings) -> list[Finding]:
    from crmsync.connectors.base import make_client
    from crmsync.connectors.check import Finding, check_crm

    findings = [Finding("settings", "values", "ok", "read from the environment and .env")]
    findings.append(await _check_database(settings))
    client = make_client()
    try:
        configured = 0
        for crm in Crm:
            missing = settings.crm(crm).missing()
            if missing:
                findings.append(Finding(crm.value, "configured", "not checked", missing))
                continue
            configured += 1
            findings += await check_crm(crm, settings, client)
    finally:
        await client.aclose()
    if not configured:
        findings.append(
            Finding(
                "crms",
                "configured",
                "problem",
                "no CRM is configured: nothing would be synced",
                "set the credentials of at least one CRM (README: Configuration)",
            )
        )
    return findings


async def _check_database(settings: Settings) -> Finding:
    from sqlalchemy.exc import SQLAlchemyError

    from crmsync import db
    from crmsync.connectors.check import Finding
    from crmsync.runtime import SchemaOutdated, check_schema

    engine = db.engine_for(settings)
    where = engine.url.render_as_string(hide_password=True)
    try:
        await check_schema(engine)
    except SchemaOutdated as exc:
        return Finding("database", "schema", "problem", str(exc), "crmsync db upgrade")
    except (SQLAlchemyError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return Finding(
            "database",
            "connection",
            "problem",
            f"{where}: {type(exc).__name__}: {first}",
            "check DATABASE_URL and that the database is up",
        )
    finally:
        await engine.dispose()
    return Finding("database", "schema", "ok", f"{where} is at the current schema")
