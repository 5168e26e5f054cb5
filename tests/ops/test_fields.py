"""Vendor fields exist before data goes to them (issue 20, section 7; issue 19's `check`).

The sandbox here starts as a fresh account (no crmsync custom fields), as real vendors do:
Brevo and Mautic silently drop values for fields that do not exist, HubSpot refuses them.
Everything runs over HTTP against it, with a real worker, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import Result

from crmsync.enums import Crm
from crmsync.sandbox import SandboxConfig, SandboxServer
from crmsync.settings import Settings
from crmsync.tables import crm_control
from tests.conftest import add_contacts
from tests.ops.conftest import eventually, running_worker, select_for, state_rows

RunCli = Callable[..., Awaitable[Result]]
VENDORS = ("brevo", "hubspot", "mautic")
# The one field each test leaves missing, and where its value shows in the sandbox.
MISSING = {
    "brevo": "DOMAIN_ID",
    "hubspot": "scrapersky_domain_id",
    "mautic": "scrapersky_domain_id",
}
OTHERS = {
    "brevo": ["PAGE_ID", "EMAIL_TYPE", "SOURCE_URL", "HAS_GMAIL"],
    "hubspot": [
        "scrapersky_page_id",
        "scrapersky_email_type",
        "scrapersky_source_url",
        "scrapersky_has_gmail",
    ],
    "mautic": [
        "scrapersky_page_id",
        "scrapersky_email_type",
        "scrapersky_source_url",
        "scrapersky_has_gmail",
    ],
}
# Fields crmsync writes that a fresh account already has (Brevo's FIRSTNAME, LASTNAME, SMS).
BUILT_IN = {"brevo": 3, "hubspot": 0, "mautic": 0}
REASONS = {
    "brevo": "Brevo attribute DOMAIN_ID does not exist: run crmsync setup brevo",
    "hubspot": "HubSpot property scrapersky_domain_id does not exist: run crmsync setup hubspot "
    "(or set HUBSPOT_CUSTOM_PROPERTY_DOMAIN_ID to an existing one, or empty to leave it out)",
    "mautic": "Mautic field scrapersky_domain_id does not exist: run crmsync setup mautic "
    "(or set MAUTIC_FIELD_DOMAIN_ID to an existing one, or empty to leave it out)",
}


@pytest.fixture(scope="module")
def fresh_server() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(no_rate_limits=True)) as server:
        yield server


@pytest.fixture
def sb(fresh_server: SandboxServer) -> SandboxServer:
    """Overrides the shared sandbox: a fresh account for every test."""
    fresh_server.reset(faults=True)
    return fresh_server


def create_directly(sb: SandboxServer, crm: str, name: str) -> None:
    """Create one field through the vendor's own API (as a person would in its UI)."""
    headers = sb.auth_headers(crm)
    with httpx.Client(base_url=sb.url, headers=headers) as http:
        if crm == "brevo":
            made = http.post(f"/brevo/v3/contacts/attributes/normal/{name}", json={"type": "text"})
        elif crm == "hubspot":
            body = {"name": name, "label": name, "type": "string", "fieldType": "text"}
            made = http.post("/hubspot/crm/v3/properties/contacts", json={**body, "groupName": "x"})
        else:
            made = http.post("/mautic/api/fields/contact/new", json={"label": name, "alias": name})
        assert made.status_code == 201, made.text


def field_names(sb: SandboxServer, crm: str) -> set[str]:
    with httpx.Client(base_url=sb.url, headers=sb.auth_headers(crm)) as http:
        if crm == "brevo":
            found = http.get("/brevo/v3/contacts/attributes").json()["attributes"]
            return {a["name"] for a in found}
        if crm == "hubspot":
            return {
                p["name"] for p in http.get("/hubspot/crm/v3/properties/contacts").json()["results"]
            }
        found = http.get("/mautic/api/fields/contact", params={"limit": 500}).json()["fields"]
        return {f["alias"] for f in found}


def domain_value(contact: dict[str, Any], crm: str) -> Any:
    fields = contact["fields"]
    return (
        fields.get("attributes", {}).get("DOMAIN_ID")
        if crm == "brevo"
        else fields.get(MISSING[crm])
    )


async def pause_of(engine: AsyncEngine, crm: str) -> tuple[str | None, str | None]:
    async with engine.connect() as conn:
        query = select(crm_control.c.pause_kind, crm_control.c.pause_reason).where(
            crm_control.c.crm == crm
        )
        row = (await conn.execute(query)).first()
    return (row[0], row[1]) if row is not None else (None, None)


@pytest.mark.parametrize("crm", VENDORS)
async def test_the_worker_pauses_on_a_missing_field_and_resumes_after_setup(
    crm: str,
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    app: FastAPI,
    sb: SandboxServer,
    run_cli: RunCli,
) -> None:
    for name in OTHERS[crm]:
        create_directly(sb, crm, name)
    domain = uuid.uuid4()
    async with running_worker(engine, settings, app, [Crm(crm)]):
        ids = await add_contacts(client, 3, domain_id=str(domain))
        await select_for(client, crm, ids)

        async def paused() -> bool:
            return (await pause_of(engine, crm))[0] == "configuration"

        await eventually(paused, f"{crm} paused for its missing field")
        assert (await pause_of(engine, crm))[1] == REASONS[crm]
        # Nothing was sent and nothing counts as Complete with the field's data missing.
        assert sb.contacts(crm) == []
        rows = [r for r in await state_rows(engine) if r["crm"] == crm]
        assert {r["sync_status"] for r in rows} <= {"Selected", "Queued"}
        assert all(r["attempts"] == 0 for r in rows)

        made = await run_cli("setup", crm)
        assert made.exit_code == 0, made.output
        assert f"1 created, {4 + BUILT_IN[crm]} existed." in made.stdout
        resumed = await run_cli("resume", "--crm", crm)
        assert resumed.exit_code == 0, resumed.output

        async def synced() -> bool:
            rows = [r for r in await state_rows(engine) if r["crm"] == crm]
            return [r["sync_status"] for r in rows] == ["Complete"] * 3

        await eventually(synced, f"{crm} to sync right after setup and resume")
    stored = sb.contacts(crm)
    assert len(stored) == 3
    assert all(domain_value(contact, crm) == str(domain) for contact in stored)


@pytest.mark.parametrize("crm", VENDORS)
async def test_setup_creates_the_fields_once(crm: str, sb: SandboxServer, run_cli: RunCli) -> None:
    wanted = {MISSING[crm], *OTHERS[crm]}
    assert not wanted & field_names(sb, crm)  # a fresh account

    first = await run_cli("setup", crm)
    assert first.exit_code == 0, first.output
    assert f"5 created, {BUILT_IN[crm]} existed." in first.stdout
    assert wanted <= field_names(sb, crm)
    count = len(field_names(sb, crm))

    again = await run_cli("setup", crm)
    assert again.exit_code == 0, again.output
    assert f"0 created, {5 + BUILT_IN[crm]} existed." in again.stdout
    assert len(field_names(sb, crm)) == count  # nothing created twice (Mautic would: alias1)


async def test_setup_refuses_an_unconfigured_crm(settings: Settings, run_cli: RunCli) -> None:
    settings.brevo.api_key = None
    result = await run_cli("setup", "brevo")
    assert result.exit_code == 2
    assert "brevo is not configured: BREVO_API_KEY is not set" in result.stderr
    unknown = await run_cli("setup", "zoho")
    assert unknown.exit_code == 2


# -- crmsync check ---------------------------------------------------------------------------


@pytest.fixture
def check_env(db_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """`check` reads the environment itself (the `settings` fixture set the sandbox's)."""
    monkeypatch.setenv("DATABASE_URL", db_url)


async def test_check_passes_with_good_credentials_and_every_field(
    check_env: None, run_cli: RunCli
) -> None:
    for crm in VENDORS:
        assert (await run_cli("setup", crm)).exit_code == 0
    result = await run_cli("check")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "All checks passed." in out
    assert out.count("problem") == 0
    for crm in VENDORS:
        assert f"{crm}" in out
    assert "registered" in out  # n8n's webhook answered the GET probe
    assert "not checked" in out  # ... but its credentials cannot be checked


async def test_check_finds_missing_fields(check_env: None, run_cli: RunCli) -> None:
    result = await run_cli("check")
    assert result.exit_code == 1, result.output
    for crm in VENDORS:
        assert f"crmsync setup {crm}" in result.stdout
    assert "DOMAIN_ID" in result.stdout and "scrapersky_has_gmail" in result.stdout
    assert "problem(s)." in result.stdout


async def test_check_finds_bad_credentials_without_showing_them(
    check_env: None, settings: Settings, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {
        "BREVO_API_KEY": "xkeysib-wrong-1234",
        "HUBSPOT_ACCESS_TOKEN": "pat-na1-wrong-5678",
        "MAUTIC_PASSWORD": "wrong-pass-9012",
    }
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    webhook = settings.n8n.webhook_url
    assert webhook is not None
    monkeypatch.setenv("N8N_WEBHOOK_URL", webhook.rsplit("/", 1)[0] + "/not-a-webhook")
    result = await run_cli("check")
    assert result.exit_code == 1, result.output
    out = result.stdout
    assert out.count("credentials") >= 3
    assert "refused the credentials (401)" in out
    assert "BREVO_API_KEY" in out and "HUBSPOT_ACCESS_TOKEN" in out and "MAUTIC_USERNAME" in out
    assert "n8n has no webhook at N8N_WEBHOOK_URL" in out
    for value in secrets.values():
        assert value not in result.output


async def test_check_reports_invalid_settings(
    check_env: None, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BREVO_LIST_ID", "newsletter")
    result = await run_cli("check")
    assert result.exit_code == 1, result.output
    assert "BREVO_LIST_ID must be the numeric id of a Brevo list" in result.stdout
