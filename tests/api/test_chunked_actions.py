"""Filtered actions over many contacts run range by range: no transaction holds the write lock
for long, and the answer counts what one transaction would have counted."""

from __future__ import annotations

import asyncio
from functools import partial

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


async def test_postgresql_runs_ranges_side_by_side_and_sqlite_one_by_one(
    client: httpx.AsyncClient, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_contacts(client, COUNT, email_type="CORPORATE")
    monkeypatch.setattr(service, "CHUNK", CHUNK)
    open_now, most = 0, 0

    def begin(_conn: object) -> None:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)

    def end(_conn: object) -> None:
        nonlocal open_now
        open_now -= 1

    event.listen(engine.sync_engine, "begin", begin)
    event.listen(engine.sync_engine, "commit", end)
    event.listen(engine.sync_engine, "rollback", end)
    try:
        body = {"email_type": "CORPORATE", "crms": ["brevo", "hubspot"]}
        r = await client.put(f"{BASE}/crm/select/filtered", json=body)
    finally:
        event.remove(engine.sync_engine, "begin", begin)
        event.remove(engine.sync_engine, "commit", end)
        event.remove(engine.sync_engine, "rollback", end)
    assert r.json()["updated_count"] == COUNT and r.json()["queued_count"] == 2 * COUNT
    sqlite = engine.dialect.name == "sqlite"
    assert most == (1 if sqlite else service.PARALLEL_RANGES)
    selected = await client.get(BASE, params={"hubspot_sync_status": "Selected", "limit": 1000})
    assert int(selected.headers["X-Total-Count"]) == COUNT


async def test_a_failing_range_stops_the_others_and_is_raised_as_it_is() -> None:
    started: list[int] = []

    async def job(n: int) -> int:
        started.append(n)
        await asyncio.sleep(0)
        if n == 1:
            raise ValueError("range 1 failed")
        await asyncio.Event().wait()  # would never end unless cancelled
        return n

    with pytest.raises(ValueError, match="range 1 failed"):
        await service._at_most(2, [partial(job, n) for n in range(5)])
    assert 4 not in started  # the jobs still waiting for a slot were cancelled

    assert await service._at_most(2, [partial(asyncio.sleep, 0, n) for n in range(5)]) == [
        0,
        1,
        2,
        3,
        4,
    ]
