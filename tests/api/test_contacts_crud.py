"""CRUD, list filters and pagination of /api/v3/contacts, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

import httpx

from tests.conftest import add_contacts

BASE = "/api/v3/contacts"


async def test_create_trims_email_and_returns_the_customer_keys(client: httpx.AsyncClient) -> None:
    domain = str(uuid.uuid4())
    r = await client.post(
        BASE,
        json={
            "email": "  Jane@Example.com ",
            "name": "Jane Doe",
            "email_type": "CORPORATE",
            "has_gmail": False,
            "domain_id": domain,
            "page_id": str(uuid.uuid4()),
            "phone_number": "+44 20 7946 0958",
        },
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["email"] == "Jane@Example.com"
    assert body["domain_id"] == domain
    assert body["contact_curation_status"] == "New"
    for crm in ("brevo", "hubspot", "mautic", "n8n"):
        assert body[f"{crm}_sync_status"] == "New"
        assert body[f"{crm}_processing_status"] is None
        assert body["sync"][crm]["attempts"] == 0
    assert body["retry_count"] == 0 and body["last_failed_crm"] is None
    assert body["created_at"].endswith("Z") or body["created_at"].endswith("+00:00")
    # The customer's key order, then our `sync` object.
    keys = list(body)
    assert keys[:3] == ["email", "email_type", "has_gmail"]
    assert keys.index("id") < keys.index("hubspot_sync_status") < keys.index("brevo_sync_status")
    assert keys[-5:] == ["retry_count", "last_retry_at", "next_retry_at", "last_failed_crm", "sync"]


async def test_create_with_trailing_slash_like_the_customer(client: httpx.AsyncClient) -> None:
    r = await client.post(BASE + "/", json={"email": "slash@example.com"})
    assert r.status_code == 201


async def test_duplicate_email_is_409_naming_the_existing_id(client: httpx.AsyncClient) -> None:
    first = (await client.post(BASE, json={"email": "dup@example.com"})).json()
    r = await client.post(BASE, json={"email": "DUP@example.COM"})
    assert r.status_code == 409
    body = r.json()
    assert first["id"] in body["detail"]
    assert body["message"] == body["detail"]
    assert body["existing_id"] == first["id"]
    assert body["status_code"] == 409


async def test_invalid_bodies_are_422_with_a_detail_list(client: httpx.AsyncClient) -> None:
    for payload in ({}, {"email": "not-an-email"}, {"email": "a@b.com", "email_type": "BOGUS"}):
        r = await client.post(BASE, json=payload)
        assert r.status_code == 422, payload
        body = r.json()
        assert isinstance(body["detail"], list) and body["detail"]
        assert body["message"].startswith("Invalid request")
    listed = await client.get(BASE)
    assert listed.json() == []


async def test_get_put_patch_delete(client: httpx.AsyncClient) -> None:
    created = (await client.post(BASE, json={"email": "e@example.com", "name": "Old"})).json()
    url = f"{BASE}/{created['id']}"
    assert (await client.get(url)).json()["name"] == "Old"

    r = await client.put(url, json={"name": "New Name", "phone_number": "123"})
    assert r.status_code == 200
    assert r.json()["name"] == "New Name" and r.json()["email"] == "e@example.com"

    r = await client.patch(url, json={"name": None})
    assert r.status_code == 200 and r.json()["name"] is None  # an explicit null is applied

    r = await client.put(url, json={"email": None})
    assert r.status_code == 422 and "email" in r.json()["detail"]

    other = (await client.post(BASE, json={"email": "taken@example.com"})).json()
    r = await client.put(url, json={"email": "Taken@example.com"})
    assert r.status_code == 409 and other["id"] in r.json()["detail"]

    r = await client.delete(url)
    assert r.status_code == 204 and r.content == b""
    assert (await client.get(url)).status_code == 404
    assert (await client.delete(url)).status_code == 404
    assert (await client.put(url, json={"name": "x"})).status_code == 404


async def test_unknown_and_malformed_ids(client: httpx.AsyncClient) -> None:
    r = await client.get(f"{BASE}/{uuid.uuid4()}")
    assert r.status_code == 404
    assert r.json()["detail"].endswith("not found")
    assert (await client.get(f"{BASE}/not-a-uuid")).status_code == 422


async def test_list_is_stable_paginated_and_counted(client: httpx.AsyncClient) -> None:
    ids = await add_contacts(client, 25)
    seen: list[str] = []
    for offset in (0, 10, 20):
        r = await client.get(BASE, params={"limit": 10, "offset": offset})
        assert r.status_code == 200
        assert r.headers["X-Total-Count"] == "25"
        seen += [c["id"] for c in r.json()]
    assert seen == ids  # (created_at, id) order, no gaps, no repeats
    # Past the end the page is empty, and the total is still counted, not read off the page.
    r = await client.get(BASE, params={"limit": 10, "offset": 30})
    assert r.json() == [] and r.headers["X-Total-Count"] == "25"
    r = await client.get(BASE, params={"limit": 25})  # a full page: counted
    assert len(r.json()) == 25 and r.headers["X-Total-Count"] == "25"
    r = await client.get(BASE + "/", params={"limit": 5})
    assert r.status_code == 200 and len(r.json()) == 5
    for bad in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"email_type": "nope"}):
        assert (await client.get(BASE, params=bad)).status_code == 422


async def test_list_filters(client: httpx.AsyncClient) -> None:
    domain = str(uuid.uuid4())
    rows = [
        {
            "email": "ann@corp.com",
            "name": "Ann Lee",
            "email_type": "CORPORATE",
            "domain_id": domain,
        },
        {"email": "bob@gmail.com", "name": "Bob 100%", "email_type": "FREE", "has_gmail": True},
        {"email": "cy_x@corp.com", "name": "Cy", "email_type": "CORPORATE", "has_gmail": False},
        # Matched by "100%" and "_x" only if % and _ were taken as LIKE wildcards.
        {"email": "dax@serv.io", "name": "Dan 1000", "email_type": "SERVICE"},
    ]
    assert (await client.post(f"{BASE}/bulk", json=rows)).json()["created_count"] == 4

    async def emails(**params: object) -> list[str]:
        r = await client.get(BASE, params=params)
        assert r.status_code == 200, r.text
        assert int(r.headers["X-Total-Count"]) == len(r.json())
        return sorted(c["email"] for c in r.json())

    assert await emails(email_type="CORPORATE") == ["ann@corp.com", "cy_x@corp.com"]
    assert await emails(has_gmail=True) == ["bob@gmail.com"]
    assert await emails(has_gmail=False) == ["cy_x@corp.com"]
    assert await emails(domain_id=domain) == ["ann@corp.com"]
    assert await emails(email_contains="CORP") == ["ann@corp.com", "cy_x@corp.com"]
    assert await emails(name_contains="lee") == ["ann@corp.com"]
    # LIKE wildcards in the search text are matched literally.
    assert await emails(name_contains="100%") == ["bob@gmail.com"]
    assert await emails(email_contains="_x") == ["cy_x@corp.com"]
    # In every substring filter (each one fails on its own when its escaping is removed).
    assert await emails(search="100%") == ["bob@gmail.com"]
    assert await emails(search="_x") == ["cy_x@corp.com"]
    assert await emails(name_contains="n 10_0") == []
    assert await emails(email_contains="%@") == []
    assert await emails(email_type="CORPORATE", name_contains="cy") == ["cy_x@corp.com"]
    assert await emails(contact_curation_status="New") == sorted(r["email"] for r in rows)
    assert await emails(brevo_sync_status="New") == sorted(r["email"] for r in rows)
    assert await emails(brevo_sync_status="Selected") == []


async def test_bulk_upsert_writes_valid_rows_and_explains_rejections(
    client: httpx.AsyncClient,
) -> None:
    existing = (await client.post(BASE, json={"email": "old@example.com", "name": "Old"})).json()
    rows = [
        {"email": "new1@example.com", "name": "One"},
        {"email": "OLD@example.com", "name": "Renamed"},
        {"email": "broken"},
        {"name": "no email"},
        {"email": "new1@EXAMPLE.com", "name": "dup in request"},
        {"email": "new2@example.com", "email_type": "WRONG"},
        "not an object",
    ]
    r = await client.post(f"{BASE}/bulk", json={"contacts": rows})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["created_count"] == 1 and body["updated_count"] == 1
    assert body["rejected_count"] == 5
    reasons = {item["index"]: item["reason"] for item in body["rejected"]}
    assert set(reasons) == {2, 3, 4, 5, 6}
    assert "email" in reasons[2] and "email" in reasons[3]
    assert "duplicate" in reasons[4] and "row 0" in reasons[4]
    assert "email_type" in reasons[5]
    updated = (await client.get(f"{BASE}/{existing['id']}")).json()
    assert updated["name"] == "Renamed" and updated["email"] == "OLD@example.com"
    listed = await client.get(BASE)
    assert listed.headers["X-Total-Count"] == "2"


async def test_bulk_limits(client: httpx.AsyncClient) -> None:
    rows = [{"email": f"u{i}@example.com"} for i in range(10_001)]
    r = await client.post(f"{BASE}/bulk", json=rows)
    assert r.status_code == 422
    assert "10,000" in r.json()["detail"]
    assert (await client.get(BASE)).headers["X-Total-Count"] == "0"
    r = await client.post(f"{BASE}/bulk", json=rows[:10_000])
    assert r.status_code == 200 and r.json()["created_count"] == 10_000
    again = await client.post(f"{BASE}/bulk", json={"contacts": rows[:10]})
    assert again.json() == {
        "created_count": 0,
        "updated_count": 10,
        "rejected_count": 0,
        "rejected": [],
    }


async def test_both_status_routes_are_reachable(client: httpx.AsyncClient) -> None:
    ids = await add_contacts(client, 3)
    r = await client.put(f"{BASE}/status", json={"contact_ids": ids[:2], "status": "Queued"})
    assert r.status_code == 200, r.text  # the customer's route answered 422 (shadowed)
    assert r.json() == {"updated_count": 2, "queued_count": 2}
    contact = (await client.get(f"{BASE}/{ids[0]}")).json()
    assert contact["contact_curation_status"] == "Queued"
    assert contact["contact_processing_status"] == "Queued"

    r = await client.put(f"{BASE}/status", json={"contact_ids": [], "status": "Skipped"})
    assert r.json() == {"updated_count": 0, "queued_count": 0}

    r = await client.put(f"{BASE}/status/filtered", json={"status": "Skipped"})
    assert r.status_code == 400
    assert '"all": true' in r.json()["detail"]

    r = await client.put(
        f"{BASE}/status/filtered",
        json={"status": "Complete", "contact_curation_status": "Queued"},
    )
    assert r.json() == {"updated_count": 2, "queued_count": 0}
    r = await client.put(f"{BASE}/status/filtered", json={"status": "Skipped", "all": True})
    assert r.json() == {"updated_count": 3, "queued_count": 0}
    r = await client.put(f"{BASE}/status", json={"contact_ids": ids, "status": "Bogus"})
    assert r.status_code == 422
