"""Changing a contact's email updates the same vendor record (issue 20, section 4).

A real worker syncs to the sandbox over HTTP, on SQLite and PostgreSQL. Without the update by id
the new email is upserted as a second record and the old one is orphaned: each vendor would hold
the person twice.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.sandbox import SandboxServer
from crmsync.settings import Settings
from tests.conftest import add_contacts
from tests.ops.conftest import drained, running_worker, select_for, state_rows

RECORDS = ("brevo", "hubspot", "mautic")
CRMS = (*RECORDS, "n8n")


async def _sync_then_move(
    client: httpx.AsyncClient, engine: AsyncEngine, sb: SandboxServer, forget: bool
) -> tuple[str, str, dict[str, str | None], list[dict[str, Any]]]:
    """Sync 3 contacts everywhere, change one's email (after the vendors forgot it, with
    `forget`), sync again. Returns the old and new email, the external ids before, and the
    state rows after."""
    ids = await add_contacts(client, 3, name="Ann Lee", has_gmail=True)
    for crm in CRMS:
        await select_for(client, crm, ids)
    await drained(engine)
    before = {
        r["crm"]: r["external_id"]
        for r in await state_rows(engine)
        if r["contact_id"] == uuid.UUID(ids[0])
    }
    assert all(r["sync_status"] == "Complete" for r in await state_rows(engine))
    old = (await client.get(f"/api/v3/contacts/{ids[0]}")).json()["email"]
    if forget:
        for crm in RECORDS:
            sb.control.post(f"/{crm}/reset").raise_for_status()
    new = f"moved-{uuid.uuid4().hex[:8]}@example.org"
    changed = await client.put(f"/api/v3/contacts/{ids[0]}", json={"email": new})
    assert changed.status_code == 200, changed.text
    await drained(engine)
    return old, new, before, await state_rows(engine)


async def test_an_email_change_updates_the_same_record_at_every_vendor(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    app: FastAPI,
    sb: SandboxServer,
) -> None:
    async with running_worker(engine, settings, app):
        old, new, before, rows = await _sync_then_move(client, engine, sb, forget=False)

    assert all(r["sync_status"] == "Complete" for r in rows)
    moved = {r["crm"]: r for r in rows if r["synced_email"] == new}
    assert set(moved) == set(CRMS)  # each CRM's state row records the email it accepted
    for crm in RECORDS:
        stored = sb.contacts(crm)
        emails = [c["email"] for c in stored]
        assert len(stored) == 3, (crm, emails)
        assert old not in emails and emails.count(new) == 1, (crm, emails)
        record = next(c for c in stored if c["email"] == new)
        # The same record, updated by its id: the id crmsync knew before is the one holding it.
        assert str(record["id"]) == before[crm] == moved[crm]["external_id"], crm
    brevo = next(c for c in sb.contacts("brevo") if c["email"] == new)
    assert brevo["fields"]["attributes"]["FIRSTNAME"] == "Ann"  # the update kept its data
    # n8n cannot update a record by id: the workflow is told which email the contact had.
    n8n = next(c for c in sb.contacts("n8n") if c["email"] == new)
    assert n8n["fields"]["previous_email"] == old


async def test_a_record_the_vendor_no_longer_has_is_upserted_by_email(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    app: FastAPI,
    sb: SandboxServer,
) -> None:
    async with running_worker(engine, settings, app):
        _, new, _, rows = await _sync_then_move(client, engine, sb, forget=True)

    moved = {r["crm"]: r for r in rows if r["synced_email"] == new}
    assert set(moved) == set(CRMS)
    assert all(moved[crm]["sync_status"] == "Complete" for crm in CRMS)
    for crm in RECORDS:
        stored = sb.contacts(crm)
        assert [c["email"] for c in stored] == [new], crm  # the vendors had forgotten the rest
        # The id the vendor gave the new record replaces the one it no longer has.
        assert moved[crm]["external_id"] == str(stored[0]["id"]), crm
    stats = sb.stats()
    assert stats["brevo"]["by_endpoint"]["PUT /contacts/{identifier}"] == 1
    assert stats["hubspot"]["by_endpoint"]["POST /crm/v3/objects/contacts/batch/update"] == 1
    assert stats["mautic"]["by_endpoint"]["PATCH /api/contacts/{id}/edit"] == 1
