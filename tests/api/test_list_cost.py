"""What a list request costs the database: a filter's page is read in list order from its index,
a New page past the last New contact walks no contacts, and SQLite's substring filter calls no
`lower()` per row. Answers (order, X-Total-Count) stay those of the plain queries."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.contacts import repository as repo
from crmsync.contacts.schemas import ContactFilters
from crmsync.tables import contacts
from tests.conftest import add_contacts

BASE = "/api/v3/contacts"


@contextmanager
def statements() -> Iterator[list[str]]:
    """The SQL of every statement run meanwhile (by any engine)."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, stmt: str, *_args: Any) -> None:
        seen.append(" ".join(stmt.split()))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


async def test_a_filters_page_is_read_in_list_order_without_a_sort(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's plan (PostgreSQL plans from statistics)")
    ids = await add_contacts(client, 12, email_type="CORPORATE")
    await add_contacts(client, 3, email_type="FREE")
    r = await client.get(BASE, params={"email_type": "CORPORATE", "limit": 5, "offset": 2})
    assert r.status_code == 200, r.text
    assert [c["id"] for c in r.json()] == ids[2:7]
    assert r.headers["X-Total-Count"] == "12"
    filters = ContactFilters.model_validate({"email_type": "CORPORATE"})
    stmt = (
        select(contacts)
        .where(*repo.filter_conditions(filters))
        .order_by(contacts.c.created_at, contacts.c.id)
        .limit(5)
    )
    sql = str(stmt.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    async with engine.connect() as conn:
        plan = (await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")).all()
    details = " / ".join(str(row[-1]) for row in plan)
    assert "ix_contacts_email_type_order" in details, details
    assert "TEMP B-TREE" not in details, details


async def test_a_new_page_past_the_last_new_contact_walks_no_contacts(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    ids = await add_contacts(client, 10)
    body = {"contact_ids": ids[:8], "crms": ["hubspot"]}
    assert (await client.put(f"{BASE}/crm/select", json=body)).status_code == 200
    # Two New contacts, the last two: each page as the plain query answers it.
    for offset, limit, expected in ((0, 5, ids[8:]), (1, 5, ids[9:]), (0, 1, ids[8:9])):
        params = {"hubspot_sync_status": "New", "offset": offset, "limit": limit}
        r = await client.get(BASE, params=params)
        assert r.status_code == 200, r.text
        assert [c["id"] for c in r.json()] == expected
        assert r.headers["X-Total-Count"] == "2"
    with statements() as seen:
        r = await client.get(BASE, params={"hubspot_sync_status": "New", "offset": 2})
    assert r.status_code == 200, r.text
    assert r.json() == []
    assert r.headers["X-Total-Count"] == "2"
    walks = [s for s in seen if s.startswith("SELECT contacts.id, contacts.email")]
    if engine.dialect.name == "sqlite":
        # The count came first and said the page is empty.
        assert walks == [], walks
    # Every contact selected: no New page is walked at all on SQLite.
    body = {"contact_ids": ids[8:], "crms": ["hubspot"]}
    assert (await client.put(f"{BASE}/crm/select", json=body)).status_code == 200
    with statements() as seen:
        r = await client.get(BASE, params={"hubspot_sync_status": "New"})
    assert r.status_code == 200, r.text
    assert (r.json(), r.headers["X-Total-Count"]) == ([], "0")
    walks = [s for s in seen if s.startswith("SELECT contacts.id, contacts.email")]
    if engine.dialect.name == "sqlite":
        assert walks == [], walks


def test_sqlite_substring_filters_call_no_lower_per_row() -> None:
    filters = ContactFilters.model_validate({"search": "Ab_%", "email_contains": "x"})
    stmt = select(contacts.c.id).where(*repo.filter_conditions(filters))
    sql = str(stmt.compile(dialect=sqlite.dialect()))
    assert "lower(" not in sql, sql
    assert sql.count(" LIKE ") == 3 and "ESCAPE '/'" in sql, sql
    assert "= 1" not in sql, sql  # a condition, not a value compared with true


async def test_substring_filters_still_ignore_ascii_case_and_escape_wildcards(
    client: httpx.AsyncClient,
) -> None:
    await add_contacts(client, 3)
    listed = (await client.get(BASE)).json()
    body = {"name": "Zoë 100%_Sure"}
    r = await client.patch(f"{BASE}/{listed[1]['id']}", json=body)
    assert r.status_code == 200, r.text
    # ASCII letters in either case (SQLite folds no other letters, with or without lower()).
    for search, found in (("ZOë 100%_S", 1), ("zoë 100%_s", 1), ("100x_", 0), ("%", 1)):
        r = await client.get(BASE, params={"search": search})
        assert r.status_code == 200, r.text
        assert len(r.json()) == found, (search, r.json())
        assert r.headers["X-Total-Count"] == str(found)
