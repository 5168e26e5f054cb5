"""CRM selection: the work order's Phase 1 tests (1.4) and manual steps 1-6, through the API."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.tables import crm_sync_state
from tests.conftest import add_contacts

BASE = "/api/v3/contacts"
SELECT = f"{BASE}/crm/select"


async def _states(engine: AsyncEngine, contact_id: str) -> dict[str, dict[str, object]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(crm_sync_state).where(crm_sync_state.c.contact_id == uuid.UUID(contact_id))
        )
        return {row.crm: dict(row._mapping) for row in rows}


async def test_select_contacts_for_brevo(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    ids = await add_contacts(client, 3)
    r = await client.put(
        SELECT, json={"contact_ids": ids[:2], "crms": ["brevo"], "action": "select"}
    )
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["updated_count"] == 2 and data["queued_count"] == 2
    assert data["crms"] == ["brevo"] and data["action"] == "select"
    assert data["message"].startswith("Selected 2 contacts for 1 CRM(s), 2 queued for processing")
    # Manual step 2: the database holds the dual status.
    state = (await _states(engine, ids[0]))["brevo"]
    assert state["sync_status"] == "Selected" and state["processing_status"] == "Queued"
    assert state["processing_error"] is None and state["attempts"] == 0
    assert await _states(engine, ids[2]) == {}
    contact = (await client.get(f"{BASE}/{ids[0]}")).json()
    assert contact["brevo_sync_status"] == "Selected"
    assert contact["brevo_processing_status"] == "Queued"
    assert contact["hubspot_sync_status"] == "New"


async def test_select_contacts_for_multiple_crms(client: httpx.AsyncClient) -> None:
    ids = await add_contacts(client, 2)
    r = await client.put(
        SELECT, json={"contact_ids": ids[:1], "crms": ["brevo", "hubspot", "mautic"]}
    )
    data = r.json()
    assert data["updated_count"] == 1 and data["queued_count"] == 3 and len(data["crms"]) == 3
    contact = (await client.get(f"{BASE}/{ids[0]}")).json()
    for crm in ("brevo", "hubspot", "mautic"):
        assert contact[f"{crm}_sync_status"] == "Selected"
    assert contact["n8n_sync_status"] == "New"


async def test_unselect_contacts(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    ids = await add_contacts(client, 2)
    await client.put(SELECT, json={"contact_ids": ids, "crms": ["brevo", "n8n"]})
    r = await client.put(
        SELECT, json={"contact_ids": ids[:1], "crms": ["brevo"], "action": "unselect"}
    )
    data = r.json()
    assert r.status_code == 200
    assert data == {
        "updated_count": 1,
        "queued_count": 0,
        "crms": ["brevo"],
        "action": "unselect",
        "message": "Unselected 1 contacts for 1 CRM(s)",
    }
    states = await _states(engine, ids[0])
    assert states["brevo"]["sync_status"] == "New"
    assert states["brevo"]["processing_status"] is None
    assert states["n8n"]["sync_status"] == "Selected"


async def test_filter_contacts_by_crm_status(client: httpx.AsyncClient) -> None:
    ids = await add_contacts(client, 4)
    await client.put(SELECT, json={"contact_ids": ids[:3], "crms": ["brevo"]})
    await client.put(SELECT, json={"contact_ids": ids[:1], "crms": ["brevo"], "action": "unselect"})
    r = await client.get(BASE, params={"brevo_sync_status": "Selected"})
    assert sorted(c["id"] for c in r.json()) == sorted(ids[1:3])
    assert r.headers["X-Total-Count"] == "2"
    r = await client.get(BASE, params={"brevo_sync_status": "New"})
    assert sorted(c["id"] for c in r.json()) == sorted([ids[0], ids[3]])
    # ids[0] has a state row back in New, ids[3] none: both count as New.
    assert r.headers["X-Total-Count"] == "2"
    r = await client.get(BASE, params={"brevo_sync_status": "New", "limit": 1})
    assert len(r.json()) == 1 and r.headers["X-Total-Count"] == "2"
    r = await client.get(BASE, params={"brevo_sync_status": "Selected", "email_contains": "zzz"})
    assert r.json() == [] and r.headers["X-Total-Count"] == "0"
    r = await client.get(BASE, params={"hubspot_sync_status": "Selected"})
    assert r.json() == []


async def test_invalid_crm_name_is_400(client: httpx.AsyncClient) -> None:
    ids = await add_contacts(client, 1)
    r = await client.put(SELECT, json={"contact_ids": ids, "crms": ["invalid_crm"]})
    assert r.status_code == 400
    body = r.json()
    assert "Invalid CRM names" in body["detail"] and "invalid_crm" in body["detail"]
    assert body["message"] == body["detail"]
    contact = (await client.get(f"{BASE}/{ids[0]}")).json()
    assert contact["brevo_sync_status"] == "New"  # nothing half-written


async def test_bad_action_empty_lists_missing_ids_and_limits(client: httpx.AsyncClient) -> None:
    ids = await add_contacts(client, 1)
    r = await client.put(SELECT, json={"contact_ids": ids, "crms": ["brevo"], "action": "sync"})
    assert r.status_code == 400 and "action" in r.json()["detail"]
    r = await client.put(SELECT, json={"contact_ids": [], "crms": ["brevo"]})
    assert r.status_code == 200 and r.json()["updated_count"] == 0
    assert r.json()["message"] == "No contact IDs provided"
    r = await client.put(SELECT, json={"contact_ids": ids, "crms": []})
    assert r.status_code == 200 and r.json()["updated_count"] == 0
    assert r.json()["message"] == "No CRMs specified"
    r = await client.put(SELECT, json={"contact_ids": [str(uuid.uuid4())], "crms": ["brevo"]})
    assert r.status_code == 404
    assert r.json()["detail"] == "No contacts found with provided IDs"
    too_many = [str(uuid.uuid4()) for _ in range(10_001)]
    r = await client.put(SELECT, json={"contact_ids": too_many, "crms": ["brevo"]})
    assert r.status_code == 422 and "10000" in r.json()["message"]
    r = await client.put(SELECT, json={"contact_ids": ["nope"], "crms": ["brevo"]})
    assert r.status_code == 422


async def test_unknown_ids_mixed_with_known_are_ignored(client: httpx.AsyncClient) -> None:
    ids = await add_contacts(client, 1)
    r = await client.put(
        SELECT, json={"contact_ids": [*ids, str(uuid.uuid4())], "crms": ["brevo", "brevo"]}
    )
    assert r.json()["updated_count"] == 1 and r.json()["queued_count"] == 1
    assert r.json()["crms"] == ["brevo"]  # a repeated CRM counts once


async def test_message_says_when_a_crm_is_not_configured(client: httpx.AsyncClient) -> None:
    ids = await add_contacts(client, 1)
    r = await client.put(SELECT, json={"contact_ids": ids, "crms": ["hubspot"]})
    message = r.json()["message"]
    assert "hubspot is not configured" in message and "HUBSPOT_ACCESS_TOKEN" in message


async def test_reselect_resets_attempts_and_clears_errors(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    ids = await add_contacts(client, 1)
    await client.put(SELECT, json={"contact_ids": ids, "crms": ["brevo"]})
    async with engine.begin() as conn:
        await conn.execute(
            crm_sync_state.update().values(
                sync_status="Error", processing_status="Error", processing_error="boom", attempts=3
            )
        )
    r = await client.put(SELECT, json={"contact_ids": ids, "crms": ["brevo"]})
    assert r.json()["queued_count"] == 1
    state = (await _states(engine, ids[0]))["brevo"]
    assert (state["sync_status"], state["attempts"], state["processing_error"]) == (
        "Selected",
        0,
        None,
    )


async def test_filtered_selection_is_a_segment(client: httpx.AsyncClient) -> None:
    await add_contacts(client, 3, email_type="FREE")
    await add_contacts(client, 2, email_type="CORPORATE")
    url = f"{SELECT}/filtered"
    r = await client.put(url, json={"crms": ["brevo", "mautic"]})
    assert r.status_code == 400 and '"all": true' in r.json()["detail"]
    r = await client.put(url, json={"crms": ["brevo", "mautic"], "email_type": "FREE"})
    assert r.status_code == 200
    assert r.json()["updated_count"] == 3 and r.json()["queued_count"] == 6
    r = await client.get(BASE, params={"mautic_sync_status": "Selected"})
    assert r.headers["X-Total-Count"] == "3"
    r = await client.put(url, json={"crms": ["n8n"], "all": True})
    assert r.json()["updated_count"] == 5
    r = await client.put(url, json={"crms": ["zoho"], "all": True})
    assert r.status_code == 400
    r = await client.put(
        url, json={"crms": ["brevo"], "action": "unselect", "brevo_sync_status": "Selected"}
    )
    assert r.json()["updated_count"] == 3
    r = await client.get(BASE, params={"brevo_sync_status": "Selected"})
    assert r.headers["X-Total-Count"] == "0"
    r = await client.put(url, json={"crms": ["brevo"], "email_type": "UNKNOWN"})
    assert r.status_code == 200 and r.json()["updated_count"] == 0


async def test_put_with_crm_status_goes_through_the_state_machine(
    client: httpx.AsyncClient,
) -> None:
    ids = await add_contacts(client, 1)
    url = f"{BASE}/{ids[0]}"
    r = await client.put(url, json={"n8n_sync_status": "Selected"})
    assert r.status_code == 200
    assert r.json()["n8n_sync_status"] == "Selected"
    assert r.json()["n8n_processing_status"] == "Queued"
    r = await client.patch(url, json={"n8n_sync_status": "New"})
    assert r.json()["n8n_sync_status"] == "New" and r.json()["n8n_processing_status"] is None
    r = await client.put(url, json={"brevo_sync_status": "Complete"})
    assert r.status_code == 422 and "brevo_sync_status" in r.json()["message"]
    r = await client.put(url, json={"hubspot_sync_status": "Skipped"})
    assert r.json()["hubspot_sync_status"] == "Skipped"


async def test_manual_steps_1_to_6(client: httpx.AsyncClient) -> None:
    """The work order's manual checklist, end to end through the API."""
    ids = await add_contacts(client, 2)
    # 1. select two contacts for Brevo
    r = await client.put(SELECT, json={"contact_ids": ids, "crms": ["brevo"], "action": "select"})
    assert r.json()["updated_count"] == 2 and r.json()["crms"] == ["brevo"]
    # 2. both show Selected
    for cid in ids:
        assert (await client.get(f"{BASE}/{cid}")).json()["brevo_sync_status"] == "Selected"
    # 3. one contact for three CRMs
    await client.put(SELECT, json={"contact_ids": ids[:1], "crms": ["brevo", "hubspot", "mautic"]})
    one = (await client.get(f"{BASE}/{ids[0]}")).json()
    assert {one[f"{c}_sync_status"] for c in ("brevo", "hubspot", "mautic")} == {"Selected"}
    # 4. filter by Brevo status
    r = await client.get(BASE, params={"brevo_sync_status": "Selected"})
    assert sorted(c["id"] for c in r.json()) == sorted(ids)
    # 5. unselect
    await client.put(SELECT, json={"contact_ids": ids[:1], "crms": ["brevo"], "action": "unselect"})
    assert (await client.get(f"{BASE}/{ids[0]}")).json()["brevo_sync_status"] == "New"
    # 6. invalid CRM name
    r = await client.put(SELECT, json={"contact_ids": ids[:1], "crms": ["invalid"]})
    assert r.status_code == 400 and "Invalid CRM names" in r.json()["detail"]


async def test_a_crm_status_page_is_in_list_order(client: httpx.AsyncClient) -> None:
    """Filtered on one CRM status, pages come from the state rows: the same order as the list.

    Contacts of one bulk request share `created_at`, so the order within one is by id.
    """
    ids = await add_contacts(client, 7) + await add_contacts(client, 6)
    single = await client.post(BASE, json={"email": f"solo-{uuid.uuid4().hex[:8]}@example.com"})
    ids.append(single.json()["id"])
    chosen = set(ids[::2]) | {ids[-1]}
    r = await client.put(SELECT, json={"contact_ids": sorted(chosen), "crms": ["hubspot"]})
    assert r.json()["updated_count"] == len(chosen)
    listed = (await client.get(BASE, params={"limit": 1000})).json()
    expected = [c["id"] for c in listed if c["id"] in chosen]
    assert len(expected) == len(chosen)
    paged: list[str] = []
    for offset in range(0, len(chosen) + 3, 3):
        r = await client.get(
            BASE, params={"hubspot_sync_status": "Selected", "limit": 3, "offset": offset}
        )
        assert r.status_code == 200
        assert r.headers["X-Total-Count"] == str(len(chosen))
        paged += [c["id"] for c in r.json()]
    assert paged == expected
