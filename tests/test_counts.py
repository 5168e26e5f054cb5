"""Row counts (`crmsync.counts`) equal `count(*)` after every kind of write, on both databases.

On PostgreSQL they are sums of trigger-written deltas (migration 0003), so every path that writes
contacts or state rows is exercised here: bulk upsert with duplicates, selection (insert and
ON CONFLICT update), unselect, a claim, an outcome, a cascaded delete, a rollback, TRUNCATE,
and compaction beside an uncommitted writer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import httpx
import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import counts
from crmsync.contacts.service import _total_from_page
from crmsync.enums import Crm, SyncStatus
from crmsync.settings import Settings
from crmsync.sync import queue
from crmsync.sync import worker as worker_module
from crmsync.sync.worker import Worker
from crmsync.tables import contacts, crm_sync_state
from tests.conftest import add_contacts

SELECT = "/api/v3/contacts/crm/select"


async def truth(engine: AsyncEngine) -> tuple[int, dict[tuple[str, str], int]]:
    s = crm_sync_state.c
    async with engine.connect() as conn:
        total = (await conn.execute(select(func.count()).select_from(contacts))).scalar_one()
        grouped = select(s.crm, s.sync_status, func.count()).group_by(s.crm, s.sync_status)
        rows = {(crm, st): n for crm, st, n in (await conn.execute(grouped)).all()}
    return total, rows


async def contact_groups(engine: AsyncEngine) -> list[dict[str, object]]:
    """Every single-column and one two-column condition over the values the contacts hold."""
    async with engine.connect() as conn:
        found = (await conn.execute(select(*(contacts.c[k] for k in counts.GROUPED)))).all()
    wheres: list[dict[str, object]] = [{}]
    for row in set(found):
        for key, value in zip(counts.GROUPED, row, strict=True):
            if value is not None:
                wheres.append({key: value})
        if row[0] is not None and row[2] is not None:
            wheres.append({"email_type": row[0], "contact_curation_status": row[2]})
    return wheres


async def count_rows(engine: AsyncEngine, where: dict[str, object]) -> int:
    c = contacts.c
    conds = [c[k].is_(v) if isinstance(v, bool) else c[k] == v for k, v in where.items()]
    async with engine.connect() as conn:
        stmt = select(func.count()).select_from(contacts).where(*conds)
        return int((await conn.execute(stmt)).scalar_one())


async def assert_exact(engine: AsyncEngine, client: httpx.AsyncClient) -> None:
    expected_total, expected_rows = await truth(engine)
    # (The SQLite engine has one connection: count the truth before taking it for `counts`.)
    wanted = [(where, await count_rows(engine, where)) for where in await contact_groups(engine)]
    async with engine.connect() as conn:
        for where, want in wanted:
            assert await counts.contacts_where(conn, where) == want, where
        assert await counts.per_status(conn) == (expected_total, expected_rows)
        assert await counts.contacts_where(conn, {}) == expected_total
        for crm in Crm:
            elsewhere = sum(n for (c, st), n in expected_rows.items() if c == crm.value)
            for status in SyncStatus:
                want = expected_rows.get((crm.value, status.value), 0)
                if status is SyncStatus.New:
                    want = expected_total - elsewhere + want
                assert await counts.with_status(conn, crm, status) == want, (crm, status)
    # The list's X-Total-Count is what a person sees: unfiltered and per CRM status.
    listed = await client.get("/api/v3/contacts", params={"limit": 1})
    assert int(listed.headers["X-Total-Count"]) == expected_total
    hubspot = {st: n for (c, st), n in expected_rows.items() if c == "hubspot"}
    for status in ("Selected", "Processing", "Complete"):
        listed = await client.get("/api/v3/contacts", params={"hubspot_sync_status": status})
        assert int(listed.headers["X-Total-Count"]) == hubspot.get(status, 0), status
    listed = await client.get("/api/v3/contacts", params={"hubspot_sync_status": "New"})
    not_new = sum(n for st, n in hubspot.items() if st != "New")
    assert int(listed.headers["X-Total-Count"]) == expected_total - not_new


async def compact(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await counts.compact(conn)


async def test_counts_follow_every_write(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await assert_exact(engine, client)  # empty
    ids = await add_contacts(client, 30)
    await assert_exact(engine, client)

    # A bulk upsert whose rows partly exist adds only the new ones.
    emails = [c["email"] for c in (await client.get("/api/v3/contacts")).json()[:5]]
    rows = [{"email": e, "name": "again"} for e in emails] + [{"email": "fresh@example.com"}]
    r = await client.post("/api/v3/contacts/bulk", json={"contacts": rows})
    assert r.json()["created_count"] == 1
    await assert_exact(engine, client)

    # Edits move contacts between the counted groups: one field, a bulk update, a status.
    patched = {"email_type": "FREE", "has_gmail": True}
    assert (await client.patch(f"/api/v3/contacts/{ids[0]}", json=patched)).status_code == 200
    rows = [{"email": e, "email_type": "CORPORATE", "has_gmail": False} for e in emails[:4]]
    r = await client.post("/api/v3/contacts/bulk", json={"contacts": rows})
    assert r.json()["updated_count"] == 4
    r = await client.put(
        "/api/v3/contacts/status", json={"contact_ids": ids[5:9], "status": "Queued"}
    )
    assert r.status_code == 200
    await assert_exact(engine, client)
    listed = await client.get("/api/v3/contacts", params={"email_type": "CORPORATE"})
    assert int(listed.headers["X-Total-Count"]) == await count_rows(
        engine, {"email_type": "CORPORATE"}
    )

    r = await client.put(SELECT, json={"contact_ids": ids[:20], "crms": ["hubspot", "brevo"]})
    assert r.status_code == 200
    await compact(engine)
    await assert_exact(engine, client)
    # Re-selecting (ON CONFLICT DO UPDATE) moves rows between statuses, adds none.
    await client.put(SELECT, json={"contact_ids": ids[:25], "crms": ["hubspot"]})
    await assert_exact(engine, client)

    now = dt.datetime.now(dt.UTC)
    claimed = await queue.claim(
        engine, Crm.hubspot, 10, "w", "token1", now, now + dt.timedelta(minutes=2)
    )
    assert len(claimed) == 10
    await assert_exact(engine, client)
    async with engine.begin() as conn:
        ids_done = [c.state_id for c in claimed[:4]]
        await conn.execute(
            update(crm_sync_state)
            .where(crm_sync_state.c.id.in_(ids_done))
            .values(sync_status="Complete")
        )
    await compact(engine)
    await assert_exact(engine, client)

    unselect = {"contact_ids": ids[:3], "crms": ["brevo"], "action": "unselect"}
    await client.put(SELECT, json=unselect)
    await assert_exact(engine, client)

    # Deleting a contact deletes its state rows by cascade.
    for contact_id in ids[:2] + ids[-2:]:
        assert (await client.delete(f"/api/v3/contacts/{contact_id}")).status_code == 204
    await assert_exact(engine, client)
    await compact(engine)
    await compact(engine)  # a second fold changes nothing
    await assert_exact(engine, client)


async def test_rolled_back_writes_leave_counts(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await add_contacts(client, 5)
    async with engine.connect() as conn:
        trans = await conn.begin()
        await conn.execute(
            contacts.insert().values(
                id=uuid.uuid4(),
                email="gone@example.com",
                created_at=dt.datetime.now(dt.UTC),
                updated_at=dt.datetime.now(dt.UTC),
            )
        )
        assert await counts.contacts_where(conn, {}) == 6  # its own transaction sees it
        await trans.rollback()
    await assert_exact(engine, client)


# Count deltas exist on PostgreSQL only (SQLite counts rows directly): these run there alone.
on_postgres = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)


@on_postgres
async def test_compaction_beside_an_uncommitted_writer(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await add_contacts(client, 3)
    now = dt.datetime.now(dt.UTC)
    async with engine.connect() as writer:
        trans = await writer.begin()
        await writer.execute(
            contacts.insert().values(
                [
                    {
                        "id": uuid.uuid4(),
                        "email": f"w{i}@example.com",
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in range(4)
                ]
            )
        )
        await compact(engine)  # folds the committed deltas, leaves the writer's alone
        async with engine.connect() as reader:
            assert await counts.contacts_where(reader, {}) == 3
        await trans.commit()
    await assert_exact(engine, client)
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT count(*) FROM contact_count_deltas"))).scalar()
    assert rows == 2  # the folded row and the writer's
    await compact(engine)
    await assert_exact(engine, client)


@on_postgres
async def test_truncate_resets_counts(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    ids = await add_contacts(client, 4)
    await client.put(SELECT, json={"contact_ids": ids, "crms": ["n8n"]})
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE crm_sync_state"))
    await assert_exact(engine, client)
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE contacts CASCADE"))
    await assert_exact(engine, client)
    await add_contacts(client, 2)
    await assert_exact(engine, client)


@on_postgres
async def test_a_running_worker_folds_the_deltas(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for _ in range(3):
        await add_contacts(client, 2)  # one delta row per bulk insert
    monkeypatch.setattr(worker_module, "COMPACT_COUNTS_SECONDS", 0.05)
    worker = Worker(engine, settings, [])
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(100):
            async with engine.connect() as conn:
                rows = (
                    await conn.execute(text("SELECT count(*) FROM contact_count_deltas"))
                ).scalar()
            if rows == 1:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"the worker left {rows} delta rows")
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
    await assert_exact(engine, client)


@pytest.mark.parametrize(
    ("offset", "limit", "got", "total"),
    [
        (0, 100, 0, 0),  # nothing matches
        (0, 100, 37, 37),  # one short page
        (200, 100, 5, 205),  # the short last page
        (0, 100, 100, None),  # a full page: there may be more
        (300, 100, 0, None),  # past the end: the total is unknown
    ],
)
def test_total_from_page(offset: int, limit: int, got: int, total: int | None) -> None:
    assert _total_from_page(offset, limit, got) == total
