"""Filtered actions over many contacts run range by range: no transaction holds the write lock
for long, and the answer counts what one transaction would have counted."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.contacts import service
from tests.conftest import add_contacts

BASE = "/api/v3/contacts"
CHUNK = 7
COUNT = 40  # 6 ranges of 7, the last one shorter


@pytest.fixture
def writes(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Rows each write transaction changed, statement by statement, from now on."""
    monkeypatch.setattr(service, "CHUNK", CHUNK)
    transactions: list[list[int]] = []

    def begin(_conn: object) -> None:
        transactions.append([])

    def after(_conn: object, cursor: object, statement: str, *_: object) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE")) and transactions:
            transactions[-1].append(int(getattr(cursor, "rowcount", 0)))

    event.listen(engine.sync_engine, "begin", begin)
    event.listen(engine.sync_engine, "after_cursor_execute", after)
    yield transactions
    event.remove(engine.sync_engine, "begin", begin)
    event.remove(engine.sync_engine, "after_cursor_execute", after)


async def test_select_over_all_runs_in_ranges_with_the_same_counts(
    client: httpx.AsyncClient, writes: list[list[int]]
) -> None:
    await add_contacts(client, COUNT // 2, email_type="CORPORATE")
    await add_contacts(client, COUNT // 2, email_type="FREE")
    writes.clear()
    body = {"email_type": "CORPORATE", "crms": ["brevo", "hubspot"]}
    r = await client.put(f"{BASE}/crm/select/filtered", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["updated_count"] == COUNT // 2 and r.json()["queued_count"] == COUNT
    # One transaction per range of CHUNK contacts; none wrote more than CHUNK rows at once.
    assert len(writes) == -(-COUNT // CHUNK)
    assert max(n for statements in writes for n in statements) <= CHUNK

    selected = await client.get(BASE, params={"brevo_sync_status": "Selected", "limit": 1000})
    assert int(selected.headers["X-Total-Count"]) == COUNT // 2
    assert {c["email_type"] for c in selected.json()} == {"CORPORATE"}

    # Re-selecting counts the same; unselecting "all" counts every contact and clears them.
    again = await client.put(f"{BASE}/crm/select/filtered", json=body)
    assert again.json()["updated_count"] == COUNT // 2
    unselect = {"all": True, "crms": ["brevo", "hubspot"], "action": "unselect"}
    r = await client.put(f"{BASE}/crm/select/filtered", json=unselect)
    assert r.json()["updated_count"] == COUNT
    left = await client.get(BASE, params={"brevo_sync_status": "Selected"})
    assert left.json() == []


async def test_filtered_status_runs_in_ranges_with_the_same_count(
    client: httpx.AsyncClient, writes: list[list[int]]
) -> None:
    await add_contacts(client, COUNT)
    writes.clear()
    r = await client.put(f"{BASE}/status/filtered", json={"all": True, "status": "Queued"})
    assert r.status_code == 200, r.text
    assert r.json() == {"updated_count": COUNT, "queued_count": COUNT}
    assert len(writes) == -(-COUNT // CHUNK)
    assert max(n for statements in writes for n in statements) <= CHUNK
    queued = await client.get(BASE, params={"contact_curation_status": "Queued", "limit": 1000})
    assert int(queued.headers["X-Total-Count"]) == COUNT


async def test_a_filter_matching_nothing_writes_nothing(
    client: httpx.AsyncClient, writes: list[list[int]]
) -> None:
    await add_contacts(client, 10)
    writes.clear()
    body = {"email_contains": "nobody-has-this", "crms": ["n8n"]}
    r = await client.put(f"{BASE}/crm/select/filtered", json=body)
    assert r.json()["updated_count"] == 0 and r.json()["queued_count"] == 0
    assert all(n == 0 for statements in writes for n in statements)
