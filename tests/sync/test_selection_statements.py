"""How a selection writes on PostgreSQL (issue 24): the lock before the write reads the state
rows of the matching contacts only, a first selection inserts without speculative insertion,
a row another transaction inserted meanwhile is still overwritten, never duplicated, and no
state row outlives its contact though no foreign key checks it (migration 0012)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import pytest
from sqlalchemy import event, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from crmsync.contacts import repository as repo
from crmsync.enums import Crm, SyncStatus
from crmsync.sync import selection
from crmsync.tables import contacts, crm_sync_state
from tests.sync.pg_locks import delete_contact, edit_goes_on, in_own_transaction, until_waiting

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
pytestmark = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)


async def _contacts(engine: AsyncEngine, count: int) -> list[uuid.UUID]:
    ids = sorted(uuid.uuid4() for _ in range(count))
    rows = [
        {
            "id": contact_id,
            "email": f"sel{i}@example.com",
            "email_type": "CORPORATE" if i % 2 else "FREE",
            "created_at": NOW + dt.timedelta(microseconds=i),
            "updated_at": NOW,
            "contact_curation_status": "New",
        }
        for i, contact_id in enumerate(ids)
    ]
    async with engine.begin() as conn:
        await conn.execute(insert(contacts), rows)
    return ids


@contextmanager
def _statements(conn: AsyncConnection) -> Iterator[list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []

    def listen(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(conn.sync_connection, "before_cursor_execute", listen)
    try:
        yield seen
    finally:
        event.remove(conn.sync_connection, "before_cursor_execute", listen)


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


async def test_the_lock_reads_only_the_matching_contacts_rows(engine: AsyncEngine) -> None:
    """Every contact has a row for every CRM; re-selecting a small range of them for one CRM
    must find the range's rows through the unique index, contact by contact, not hash every
    row of the CRM (which a filtered action paid once per range: a cost growing with the
    table, even for a first selection)."""
    ids = await _contacts(engine, 4000)
    async with engine.begin() as conn:
        await selection.select_contacts(conn, list(Crm), repo.by_ids(ids), NOW)
    async with engine.connect() as conn:
        await conn.execute(text("ANALYZE crm_sync_state"))
        await conn.execute(text("ANALYZE contacts"))
        await conn.commit()
    async with engine.begin() as conn:
        where = repo.in_range(conn, contacts.c.email_type == "CORPORATE", ids[999], ids[1999])
        with _statements(conn) as seen:
            queued = await selection.select_contacts(conn, Crm.hubspot, where, NOW)
        assert queued == 500
        locks = [(sql, params) for sql, params in seen if "FOR UPDATE" in sql]
        assert locks
        for sql, params in locks:
            plan = (await conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql, params)).scalar()
            root = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
            for node in _nodes(root):
                state = node.get(
                    "Relation Name"
                ) == "crm_sync_state" or "crm_sync_state" in node.get("Index Name", "")
                if not state or node["Node Type"] == "Bitmap Heap Scan":
                    continue  # read through the bitmap index scan below it
                # Looked up by contact (or by the ids so found), never scanned by CRM.
                cond = node.get("Index Cond", "")
                assert "contact_id = contacts.id" in cond or "id = ANY" in cond, node


async def test_a_first_selection_inserts_without_on_conflict(engine: AsyncEngine) -> None:
    ids = await _contacts(engine, 50)
    async with engine.begin() as conn:
        with _statements(conn) as seen:
            queued = await selection.select_contacts(
                conn, [Crm.hubspot, Crm.brevo], repo.by_ids(ids), NOW
            )
    assert queued == 100
    inserts = [sql for sql, _ in seen if sql.lstrip().startswith("INSERT INTO crm_sync_state")]
    assert inserts and not any("ON CONFLICT" in sql for sql in inserts)
    # Selecting again finds every row and overwrites it.
    async with engine.begin() as conn:
        assert await selection.select_contacts(conn, Crm.hubspot, repo.by_ids(ids), NOW) == 50
    async with engine.connect() as conn:
        rows = await conn.execute(select(crm_sync_state.c.crm, crm_sync_state.c.sync_status))
        assert sorted(rows.all()) == sorted(
            [(crm, SyncStatus.Selected.value) for crm in ("hubspot", "brevo") for _ in ids]
        )


async def test_a_row_inserted_after_the_lock_is_overwritten(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another transaction inserts a row after this one found none to lock: the plain INSERT
    meets it in the unique index, and the selection falls back to upserting, in the same
    transaction, leaving one row per (contact, CRM), queued."""
    ids = await _contacts(engine, 3)
    async with engine.begin() as conn:
        await selection.select_contacts(conn, Crm.brevo, repo.by_ids(ids[:1]), NOW)
        await conn.execute(
            crm_sync_state.update().values(sync_status=SyncStatus.Complete.value, attempts=3)
        )
    original = selection.lock_rows_of

    async def saw_nothing(*args: Any) -> int | None:
        await original(*args)
        return 0

    monkeypatch.setattr(selection, "lock_rows_of", saw_nothing)
    later = NOW + dt.timedelta(minutes=5)
    async with engine.begin() as conn:
        queued = await selection.select_contacts(conn, Crm.brevo, repo.by_ids(ids), later)
    assert queued == 3
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(
                    crm_sync_state.c.contact_id,
                    crm_sync_state.c.sync_status,
                    crm_sync_state.c.attempts,
                    crm_sync_state.c.next_attempt_at,
                )
            )
        ).all()
    assert sorted(rows) == sorted((i, SyncStatus.Selected.value, 0, later) for i in ids)


async def _state_rows(engine: AsyncEngine, contact_id: uuid.UUID) -> int:
    async with engine.connect() as conn:
        query = select(crm_sync_state.c.id).where(crm_sync_state.c.contact_id == contact_id)
        return len((await conn.execute(query)).all())


async def test_a_contact_deleted_during_a_selection_takes_its_new_rows_along(
    engine: AsyncEngine,
) -> None:
    """No foreign key checks the state rows here (migration 0012). A selection holds the
    contacts it queued until it commits; a delete meanwhile waits, then removes the rows the
    selection wrote: none outlives its contact."""
    ids = await _contacts(engine, 2)
    async with engine.connect() as conn:
        async with conn.begin():
            assert await selection.select_contacts(conn, list(Crm), repo.by_ids(ids), NOW) == 8
            pid, deleting = await in_own_transaction(
                engine, partial(delete_contact, contact_id=ids[0])
            )
            await until_waiting(engine, deleting, pid, "the delete")
    assert await asyncio.wait_for(deleting, 10) == 1
    assert await _state_rows(engine, ids[0]) == 0
    assert await _state_rows(engine, ids[1]) == 4


async def test_a_selection_skips_a_contact_deleted_meanwhile(engine: AsyncEngine) -> None:
    """The other order: a delete not yet committed holds the contact; the selection waits for
    it, then queues the other contacts only."""
    ids = await _contacts(engine, 2)
    async with engine.connect() as conn:
        async with conn.begin():
            assert await delete_contact(conn, ids[0]) == 1

            async def select_both(other: AsyncConnection) -> int:
                return await selection.select_contacts(other, list(Crm), repo.by_ids(ids), NOW)

            pid, selecting = await in_own_transaction(engine, select_both)
            await until_waiting(engine, selecting, pid, "the selection")
    assert await asyncio.wait_for(selecting, 10) == 4
    assert await _state_rows(engine, ids[0]) == 0
    assert await _state_rows(engine, ids[1]) == 4


async def test_truncating_contacts_empties_the_queue(engine: AsyncEngine) -> None:
    ids = await _contacts(engine, 3)
    async with engine.begin() as conn:
        await selection.select_contacts(conn, list(Crm), repo.by_ids(ids), NOW)
        await conn.execute(text("TRUNCATE contacts CASCADE"))
    assert [await _state_rows(engine, i) for i in ids] == [0, 0, 0]


async def test_a_selection_does_not_hold_up_an_edit_of_its_contacts(engine: AsyncEngine) -> None:
    """The selection's lock on its contacts keeps them from being deleted, nothing more: a
    person editing one of them meanwhile goes on (`FOR KEY SHARE`; a stronger lock made the
    edit wait for the selection, and an edit and a selection, each holding what the other
    wanted, deadlocked under the API load benchmark)."""
    ids = await _contacts(engine, 2)
    async with engine.connect() as conn:
        async with conn.begin():
            assert await selection.select_contacts(conn, list(Crm), repo.by_ids(ids), NOW) == 8
            await edit_goes_on(engine, ids[0])
