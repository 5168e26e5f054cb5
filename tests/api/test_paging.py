"""`offset` is bounded; the `after` cursor pages through any number of contacts."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import add_contacts

BASE = "/api/v3/contacts"


async def _walk(client: httpx.AsyncClient, **params: object) -> list[str]:
    """Every contact matching `params`, page by page along X-Next-Cursor."""
    seen: list[str] = []
    query: dict[str, object] = {"limit": 7, **params}
    while True:
        r = await client.get(BASE, params=query)
        assert r.status_code == 200, r.text
        seen += [c["id"] for c in r.json()]
        following = r.headers.get("X-Next-Cursor")
        if following is None:
            assert len(r.json()) < 7
            return seen
        query["after"] = following


async def test_the_cursor_walks_every_contact_once_in_list_order(
    client: httpx.AsyncClient,
) -> None:
    ids = await add_contacts(client, 30)
    assert await _walk(client) == ids
    # Filters too, on both list paths (contacts' own columns; one CRM status's state rows).
    selected = ids[::2]
    body = {"contact_ids": selected, "crms": ["brevo"]}
    assert (await client.put(f"{BASE}/crm/select", json=body)).status_code == 200
    assert await _walk(client, brevo_sync_status="Selected") == selected
    assert await _walk(client, brevo_sync_status="New") == ids[1::2]


async def test_a_cursor_survives_its_contact_being_deleted(client: httpx.AsyncClient) -> None:
    ids = await add_contacts(client, 10)
    first = await client.get(BASE, params={"limit": 4})
    cursor = first.headers["X-Next-Cursor"]
    assert (await client.delete(f"{BASE}/{ids[3]}")).status_code == 204
    rest = await client.get(BASE, params={"limit": 100, "after": cursor})
    assert [c["id"] for c in rest.json()] == ids[4:]
    assert int(rest.headers["X-Total-Count"]) == 9  # all matches, not only those after
    assert "X-Next-Cursor" not in rest.headers


@pytest.mark.parametrize("bad", ["nonsense", "bm9wZQ", "MjAyNHxub3QtYS11dWlk"])
async def test_a_bad_cursor_is_a_422_naming_it(client: httpx.AsyncClient, bad: str) -> None:
    r = await client.get(BASE, params={"after": bad})
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["detail"]] == [["query", "after"]]


@pytest.mark.parametrize(
    "path",
    [
        BASE,
        "/api/v3/crm/status/failed",
        f"{BASE}/00000000-0000-0000-0000-000000000001/sync-history",
    ],
)
async def test_offset_is_bounded(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path, params={"offset": 100_001})).status_code == 422
    assert (await client.get(path, params={"offset": 100_000})).status_code in (200, 404)
