"""`{crm}_sync_status` in `POST /contacts` and in each row of `/contacts/bulk` goes through the
state machine, as in PUT/PATCH: Selected or Queued queues the contact, New unselects it, Skipped
parks it, engine-owned statuses are refused; unknown keys are still ignored."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.api.app import create_app
from crmsync.enums import Crm
from crmsync.settings import Settings
from crmsync.tables import contacts, crm_sync_state
from tests.conftest import SECRET

BASE = "/api/v3/contacts"


@pytest.fixture
def app(settings: Settings, engine: AsyncEngine) -> FastAPI:
    return create_app(settings, SECRET, engine=engine)


@pytest.fixture
async def api(app: FastAPI, auth: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=auth) as http:
        yield http


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}@example.com"


async def states(engine: AsyncEngine, email: str) -> dict[str, tuple[str, str | None]]:
    """(sync status, processing status) per CRM that has a state row for this contact."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(
                crm_sync_state.c.crm,
                crm_sync_state.c.sync_status,
                crm_sync_state.c.processing_status,
            )
            .join(contacts, contacts.c.id == crm_sync_state.c.contact_id)
            .where(func.lower(contacts.c.email) == email.lower())
        )
        return {crm: (status, processing) for crm, status, processing in rows}


async def test_post_with_a_crm_status_queues_the_new_contact(
    api: httpx.AsyncClient, app: FastAPI, engine: AsyncEngine
) -> None:
    woken: list[list[Crm]] = []
    app.state.contacts.on_queued = lambda crms: woken.append(list(crms))
    email = unique("queued")
    body = {"email": email, "n8n_sync_status": "Selected", "hubspot_sync_status": "Skipped"}
    r = await api.post(BASE, json={**body, "debounce_result": "valid"})  # unknown: ignored
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["n8n_sync_status"] == "Selected"
    assert created["n8n_processing_status"] == "Queued"
    assert created["hubspot_sync_status"] == "Skipped"
    assert created["brevo_sync_status"] == "New"
    assert await states(engine, email) == {
        "n8n": ("Selected", "Queued"),
        "hubspot": ("Skipped", None),
    }
    assert len(woken) == 1 and sorted(woken[0]) == [Crm.hubspot, Crm.n8n]
    fetched = (await api.get(f"{BASE}/{created['id']}")).json()
    assert fetched["n8n_sync_status"] == "Selected"


async def test_post_refuses_an_engine_owned_status_and_creates_nothing(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    email = unique("complete")
    r = await api.post(BASE, json={"email": email, "brevo_sync_status": "Complete"})
    assert r.status_code == 422 and "brevo_sync_status" in r.text
    r = await api.get(BASE, params={"email_contains": email})
    assert r.json() == []
    # New is accepted and means "not selected": no state row.
    r = await api.post(BASE, json={"email": email, "brevo_sync_status": "New"})
    assert r.status_code == 201 and r.json()["brevo_sync_status"] == "New"
    assert await states(engine, email) == {}


async def test_each_bulk_row_goes_through_the_state_machine(
    api: httpx.AsyncClient, app: FastAPI, engine: AsyncEngine
) -> None:
    kept, skipped, unselected = unique("kept"), unique("skipped"), unique("unselected")
    r = await api.post(f"{BASE}/bulk", json=[{"email": kept}, {"email": unselected}])
    assert r.json()["created_count"] == 2
    first = await api.put(
        f"{BASE}/crm/select",
        json={"contact_ids": [c["id"] for c in (await api.get(BASE)).json()], "crms": ["brevo"]},
    )
    assert first.json()["updated_count"] == 2
    woken: list[list[Crm]] = []
    app.state.contacts.on_queued = lambda crms: woken.append(list(crms))

    fresh = unique("fresh")
    rows = [
        {"email": fresh, "hubspot_sync_status": "Selected", "color": "blue"},
        {"email": kept.upper(), "name": "Kept", "mautic_sync_status": "Queued"},
        {"email": unselected, "brevo_sync_status": "New"},
        {"email": skipped, "brevo_sync_status": "Skipped", "n8n_sync_status": None},
        {"email": unique("refused"), "hubspot_sync_status": "Error"},
    ]
    r = await api.post(f"{BASE}/bulk", json={"contacts": rows})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["created_count"], body["updated_count"], body["rejected_count"]) == (2, 2, 1)
    assert body["rejected"][0]["index"] == 4
    assert "hubspot_sync_status" in body["rejected"][0]["reason"]

    assert await states(engine, fresh) == {"hubspot": ("Selected", "Queued")}
    assert await states(engine, kept) == {
        "brevo": ("Selected", "Queued"),
        "mautic": ("Selected", "Queued"),
    }
    assert await states(engine, unselected) == {"brevo": ("New", None)}
    assert await states(engine, skipped) == {"brevo": ("Skipped", None)}
    assert len(woken) == 1 and sorted(woken[0]) == [Crm.brevo, Crm.hubspot, Crm.mautic]
    listed = await api.get(BASE, params={"hubspot_sync_status": "Selected"})
    assert [c["email"] for c in listed.json()] == [fresh]
