"""The exporter on SQLite and PostgreSQL: every column, the list filters, keyset paging, formula
cells neutralised, and the round trip (importing an export changes nothing)."""

from __future__ import annotations

import csv
import io
import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.clock import utcnow
from crmsync.contacts import importer
from crmsync.contacts.columns import EXPORT_COLUMNS
from crmsync.contacts.exporter import Export, export_contacts
from crmsync.contacts.importer import ImportOptions
from crmsync.contacts.schemas import ContactFilters
from crmsync.enums import SyncStatus
from crmsync.settings import Settings
from crmsync.tables import contacts, crm_sync_state

BASE = "/api/v3/contacts"
DOMAIN = str(uuid.uuid4())
# Values a spreadsheet, a CSV parser or a careless importer would get wrong.
TRICKY = [
    {
        "email": "Jose.Muller@Example.com",
        "name": "José Müller",
        "phone_number": "+34 612 345 678",
        "email_type": "CORPORATE",
        "has_gmail": False,
        "source_url": 'https://example.com/a,b?c="d"',
        "context": 'line one\nline two, "quoted"\r\nline three',
        "domain_id": DOMAIN,
        "page_id": str(uuid.uuid4()),
        "source_job_id": str(uuid.uuid4()),
    },
    {"email": "formula@example.com", "name": '=HYPERLINK("http://evil")', "context": "@SUM(A1)"},
    {"email": "minus@example.com", "name": "-1", "phone_number": "\t+1 555 0100"},
    {"email": "quote@example.com", "name": "'=already quoted", "context": "\rcarriage"},
    {"email": "spaces@example.com", "name": "  Bob  ", "has_gmail": True, "email_type": "FREE"},
    {"email": "empty@example.com", "name": "", "context": None},
    {"email": "plain@example.com"},
]


async def snapshot(engine: AsyncEngine) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    async with engine.connect() as conn:
        people = (await conn.execute(select(contacts).order_by(contacts.c.email))).mappings()
        people_rows = [dict(row) for row in people]
        states = await conn.execute(
            select(crm_sync_state).order_by(crm_sync_state.c.contact_id, crm_sync_state.c.crm)
        )
        return people_rows, [dict(row) for row in states.mappings()]


async def world(client: httpx.AsyncClient, engine: AsyncEngine) -> dict[str, str]:
    """The tricky contacts, some selected, one failed in Brevo and one synced; ids by email."""
    r = await client.post(f"{BASE}/bulk", json=TRICKY)
    assert r.json()["created_count"] == len(TRICKY), r.text
    listed = (await client.get(BASE, params={"limit": 100})).json()
    ids = {c["email"]: c["id"] for c in listed}
    chosen = [ids["Jose.Muller@Example.com"], ids["formula@example.com"]]
    r = await client.put(f"{BASE}/crm/select", json={"contact_ids": chosen, "crms": ["brevo"]})
    assert r.json()["updated_count"] == 2
    s = crm_sync_state.c
    async with engine.begin() as conn:
        await conn.execute(
            update(crm_sync_state)
            .where(s.contact_id == uuid.UUID(chosen[0]))
            .values(
                sync_status="Error",
                processing_status="Error",
                processing_error="=Invalid email (vendor said so)",
                attempts=3,
                last_attempt_at=utcnow(),
            )
        )
        await conn.execute(
            update(crm_sync_state)
            .where(s.contact_id == uuid.UUID(chosen[1]))
            .values(
                sync_status="Complete",
                processing_status="Complete",
                external_id="12345",
                synced_at=utcnow(),
            )
        )
    return ids


async def export_text(engine: AsyncEngine, fmt: str, **filters: Any) -> str:
    out = io.StringIO()
    await export_contacts(engine, ContactFilters(**filters), out, fmt)  # type: ignore[arg-type]
    return out.getvalue()


async def test_csv_has_every_column_and_neutralises_formulas(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    ids = await world(client, engine)
    rows = list(csv.DictReader(io.StringIO(await export_text(engine, "csv"))))
    assert list(rows[0]) == list(EXPORT_COLUMNS)
    assert len(rows) == len(TRICKY)
    by_email = {row["email"]: row for row in rows}
    jose = by_email["Jose.Muller@Example.com"]
    assert jose["id"] == ids["Jose.Muller@Example.com"]
    assert jose["phone_number"] == "'+34 612 345 678"
    assert jose["context"] == TRICKY[0]["context"]
    assert (jose["has_gmail"], jose["domain_id"]) == ("false", DOMAIN)
    assert (jose["brevo_sync_status"], jose["brevo_attempts"]) == ("Error", "3")
    assert jose["brevo_processing_error"] == "'=Invalid email (vendor said so)"
    assert jose["brevo_last_attempt_at"].endswith("+00:00")
    assert jose["hubspot_sync_status"] == "New" and jose["hubspot_attempts"] == "0"
    formula = by_email["formula@example.com"]
    assert formula["name"] == '\'=HYPERLINK("http://evil")'
    assert formula["context"] == "'@SUM(A1)"
    assert (formula["brevo_contact_id"], formula["brevo_sync_status"]) == ("12345", "Complete")
    assert by_email["minus@example.com"]["name"] == "'-1"
    assert by_email["minus@example.com"]["phone_number"] == "'\t+1 555 0100"
    assert by_email["quote@example.com"]["name"] == "''=already quoted"
    assert by_email["quote@example.com"]["context"] == "'\rcarriage"
    for row in rows:  # no cell a spreadsheet would evaluate
        assert not any(cell[:1] in ("=", "+", "-", "@", "\t", "\r") for cell in row.values())


async def test_jsonl_values_are_exact(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await world(client, engine)
    records = [json.loads(line) for line in (await export_text(engine, "jsonl")).splitlines()]
    assert [list(r) for r in records] == [list(EXPORT_COLUMNS)] * len(TRICKY)
    by_email = {r["email"]: r for r in records}
    assert by_email["formula@example.com"]["name"] == TRICKY[1]["name"]
    assert by_email["formula@example.com"]["brevo_synced_at"] is not None
    assert by_email["spaces@example.com"]["has_gmail"] is True
    assert by_email["plain@example.com"]["name"] is None


async def test_the_list_filters_apply(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await world(client, engine)

    async def emails(**filters: Any) -> list[str]:
        text = await export_text(engine, "jsonl", **filters)
        return sorted(json.loads(line)["email"] for line in text.splitlines())

    assert await emails(brevo_sync_status=SyncStatus.Complete) == ["formula@example.com"]
    assert await emails(brevo_sync_status=SyncStatus.Error) == ["Jose.Muller@Example.com"]
    assert len(await emails(brevo_sync_status=SyncStatus.New)) == len(TRICKY) - 2
    assert await emails(email_type="FREE") == ["spaces@example.com"]
    assert await emails(email_contains="MINUS") == ["minus@example.com"]
    assert await emails(domain_id=DOMAIN, has_gmail=False) == ["Jose.Muller@Example.com"]
    assert await emails(name_contains="nobody") == []


async def test_pages_follow_the_list_order_across_equal_creation_times(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Contacts of one bulk request share created_at: the key (created_at, id) still pages
    through each exactly once, in the API's list order."""
    for batch in range(3):
        rows = [{"email": f"b{batch}-{i}@example.com"} for i in range(7)]
        assert (await client.post(f"{BASE}/bulk", json=rows)).status_code == 200
    listed = [c["id"] for c in (await client.get(BASE, params={"limit": 100})).json()]
    export = Export(engine, None, "jsonl", page_size=3)
    chunks = [chunk async for chunk in export.chunks()]
    exported = [json.loads(line)["id"] for chunk in chunks for line in chunk.splitlines()]
    assert exported == listed and len(exported) == 21
    assert export.count == 21 and len(chunks) == 7


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_importing_an_export_changes_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, fmt: str
) -> None:
    await world(client, engine)
    before = await snapshot(engine)
    exported = await export_text(engine, fmt)
    summary = await importer.import_contacts(
        engine,
        settings,
        io.BytesIO(exported.encode()),
        ImportOptions(format=fmt),  # type: ignore[arg-type]
    )
    assert (summary.rows, summary.unchanged) == (len(TRICKY), len(TRICKY))
    assert (summary.created, summary.updated, summary.rejected) == (0, 0, 0)
    assert summary.unknown_columns == []
    assert await snapshot(engine) == before
