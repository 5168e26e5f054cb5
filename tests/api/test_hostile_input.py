"""Text a database cannot store is a 422 naming the field, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import add_contacts

BASE = "/api/v3/contacts"
NUL = "a\x00b"
SURROGATE = "a\ud800b"


async def send(client: httpx.AsyncClient, method: str, url: str, body: object) -> httpx.Response:
    """JSON with every non-ASCII character escaped: a lone surrogate travels as `\\ud800`."""
    content = json.dumps(body, ensure_ascii=True)
    return await client.request(
        method, url, content=content, headers={"Content-Type": "application/json"}
    )


def _fields(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    return [".".join(str(p) for p in error["loc"]) for error in response.json()["detail"]]


@pytest.mark.parametrize("bad", [NUL, SURROGATE], ids=["nul", "surrogate"])
@pytest.mark.parametrize("field", ["name", "context", "source_url", "phone_number"])
async def test_create_refuses_unstorable_text(
    client: httpx.AsyncClient, field: str, bad: str
) -> None:
    r = await send(client, "POST", BASE, {"email": "x@example.com", field: bad})
    assert _fields(r) == [f"body.{field}"]
    # NUL: our reason; a lone surrogate: pydantic's ("not a valid string"). Both name the field.
    assert "cannot be stored" in r.json()["message"] or "valid string" in r.json()["message"]
    assert (await client.get(BASE)).json() == []  # nothing half-written


async def test_an_email_with_nul_is_refused(client: httpx.AsyncClient) -> None:
    assert _fields(await send(client, "POST", BASE, {"email": "a\x00b@example.com"})) == [
        "body.email"
    ]


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_edits_refuse_unstorable_text(client: httpx.AsyncClient, method: str) -> None:
    (contact_id,) = await add_contacts(client, 1)
    r = await send(client, method, f"{BASE}/{contact_id}", {"name": NUL})
    assert _fields(r) == ["body.name"]
    assert (await client.get(f"{BASE}/{contact_id}")).json()["name"] is None


async def test_bulk_rejects_only_the_rows_a_database_cannot_store(
    client: httpx.AsyncClient,
) -> None:
    rows = [
        {"email": "good@example.com", "name": "Good"},
        {"email": "nul@example.com", "name": NUL},
        {"email": "sur@example.com", "context": SURROGATE},
        {"email": "b\x00d@example.com"},
        {"email": "b\udc00d@example.com"},
    ]
    r = await send(client, "POST", f"{BASE}/bulk", {"contacts": rows})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["created_count"] == 1 and body["rejected_count"] == 4
    reasons = {row["index"]: row["reason"] for row in body["rejected"]}
    assert reasons[1].startswith("name:") and "NUL" in reasons[1]
    assert reasons[2].startswith("context:") and "valid string" in reasons[2]
    assert reasons[3].startswith("email:") and reasons[4].startswith("email:")
    # Not echoed back: an answer cannot carry a lone surrogate (encoding it was a 500).
    assert body["rejected"][3]["email"] is None
    assert [c["email"] for c in (await client.get(BASE)).json()] == ["good@example.com"]


@pytest.mark.parametrize("param", ["email_contains", "name_contains"])
async def test_list_filters_refuse_unstorable_text(client: httpx.AsyncClient, param: str) -> None:
    r = await client.get(BASE, params={param: NUL})
    assert _fields(r) == [f"query.{param}"]


async def test_filtered_actions_refuse_unstorable_text(client: httpx.AsyncClient) -> None:
    r = await send(
        client, "PUT", f"{BASE}/crm/select/filtered", {"name_contains": NUL, "crms": ["brevo"]}
    )
    assert _fields(r) == ["body.name_contains"]
    r = await send(
        client, "PUT", f"{BASE}/status/filtered", {"email_contains": NUL, "status": "New"}
    )
    assert _fields(r) == ["body.email_contains"]


async def test_crm_names_with_unstorable_text_are_refused(client: httpx.AsyncClient) -> None:
    (contact_id,) = await add_contacts(client, 1)
    r = await send(
        client, "PUT", f"{BASE}/crm/select", {"contact_ids": [contact_id], "crms": [SURROGATE]}
    )
    assert _fields(r) == ["body.crms.0"]
    r = await send(client, "POST", "/api/v3/crm/retry", {"crm": NUL, "all_failed": True})
    assert _fields(r) == ["body.crm"]


@pytest.mark.parametrize(
    ("field", "limit"),
    [("name", 10_000), ("context", 10_000), ("source_url", 10_000), ("phone_number", 100)],
)
async def test_each_text_field_has_its_documented_maximum(
    client: httpx.AsyncClient, field: str, limit: int
) -> None:
    ok = await send(client, "POST", BASE, {"email": "max@example.com", field: "x" * limit})
    assert ok.status_code == 201, ok.text
    too_long = await send(
        client, "POST", BASE, {"email": "over@example.com", field: "x" * (limit + 1)}
    )
    assert _fields(too_long) == [f"body.{field}"]
    assert _fields(await send(client, "POST", BASE, {"email": "a" * 310 + "@example.com"})) == [
        "body.email"
    ]


async def test_a_body_that_is_not_utf8_is_a_422_like_any_unreadable_json(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post(
        BASE, content=b'{"email": "\xff\xfe@x.io"}', headers={"Content-Type": "application/json"}
    )
    assert _fields(r) == ["body"]  # was a bare 400 the document did not list
    assert "UTF-8" in r.json()["message"]


async def test_an_edit_to_a_taken_email_is_a_documented_409(client: httpx.AsyncClient) -> None:
    first, second = await add_contacts(client, 2)
    taken = (await client.get(f"{BASE}/{first}")).json()["email"]
    for method in ("PUT", "PATCH"):
        r = await client.request(method, f"{BASE}/{second}", json={"email": taken})
        assert r.status_code == 409 and r.json()["existing_id"] == first
        documented = (await client.get("/openapi.json")).json()["paths"][f"{BASE}/{{contact_id}}"]
        assert "409" in documented[method.lower()]["responses"]
