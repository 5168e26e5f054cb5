"""Substring counts (the list's X-Total-Count for email_contains / name_contains) stay exact.

On PostgreSQL such a count is kept with the snapshot it was taken in (`ContactCounts`) and
brought up to date from the emails and names the writes since then logged (migrations 0005,
0006), so every way of changing contacts must show in the next count: bulk insert and update,
edits, deletes, TRUNCATE, a writer that commits after a later one, a rollback, a count taken
inside a writing transaction, and the worker's compaction of the change log. On SQLite nothing
is kept; the same assertions hold there.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import counts
from crmsync.tables import contact_changes, contacts

LIST = "/api/v3/contacts"
on_postgres = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
OURS = "/* the test's own count */"  # left out of `scans`


async def listed_total(client: httpx.AsyncClient, **params: str) -> int:
    # limit=1: a full page, so the service must count (a short page tells the total itself).
    response = await client.get(LIST, params={**params, "limit": 1})
    assert response.status_code == 200, response.text
    return int(response.headers["X-Total-Count"])


async def true_total(engine: AsyncEngine, column: str, part: str) -> int:
    async with engine.connect() as conn:
        stmt = select(func.count()).where(contacts.c[column].icontains(part)).prefix_with(OURS)
        return int((await conn.execute(stmt)).scalar_one())


async def free_gmail_total(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        gmail, free = contacts.c.email.icontains("gmail"), contacts.c.email_type == "FREE"
        stmt = select(func.count()).where(gmail, free).prefix_with(OURS)
        return int((await conn.execute(stmt)).scalar_one())


async def assert_exact(engine: AsyncEngine, client: httpx.AsyncClient) -> None:
    for column, part in (("email", "gmail"), ("name", "ann")):
        want = await true_total(engine, column, part)
        # Twice: the second answer is the kept one on PostgreSQL.
        for _ in range(2):
            assert await listed_total(client, **{f"{column}_contains": part}) == want, column


async def bulk(client: httpx.AsyncClient, rows: list[dict[str, object]]) -> dict[str, int]:
    response = await client.post(f"{LIST}/bulk", json={"contacts": rows})
    assert response.status_code == 200, response.text
    body: dict[str, int] = response.json()
    return body


def new_row(email: str, name: str | None = None) -> dict[str, object]:
    now = dt.datetime.now(dt.UTC)
    return {"id": uuid.uuid4(), "email": email, "name": name, "created_at": now, "updated_at": now}


@contextmanager
def scans(engine: AsyncEngine) -> Iterator[list[str]]:
    """The substring counts over contacts the service runs while the block does."""
    seen: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        scan = "count(*)" in statement and "ILIKE" in statement.upper() and "contacts" in statement
        if scan and OURS not in statement:
            seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def test_substring_counts_follow_every_write(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    rows = [{"email": f"g{i}@gmail.com", "name": f"Ann {i}"} for i in range(4)]
    rows += [{"email": f"c{i}@corp.com", "name": f"Bob {i}"} for i in range(3)]
    await bulk(client, rows)
    await assert_exact(engine, client)

    # New matches, and an upsert that renames existing contacts (name_contains changes).
    await bulk(client, [{"email": "new@gmail.com"}, {"email": "c0@corp.com", "name": "Annie"}])
    await assert_exact(engine, client)

    everyone = (await client.get(LIST, params={"limit": 100})).json()
    by_email = {c["email"]: c["id"] for c in everyone}
    edited = await client.patch(f"{LIST}/{by_email['g0@gmail.com']}", json={"email": "g0@mail.io"})
    assert edited.status_code == 200, edited.text
    await assert_exact(engine, client)
    replaced = await client.put(
        f"{LIST}/{by_email['c1@corp.com']}", json={"email": "c1@gmail.com", "name": "Ann again"}
    )
    assert replaced.status_code == 200, replaced.text
    await assert_exact(engine, client)
    assert (await client.delete(f"{LIST}/{by_email['g1@gmail.com']}")).status_code == 204
    await assert_exact(engine, client)
    assert await listed_total(client, email_contains="gmail") == 4


@on_postgres
async def test_a_kept_count_is_reused_until_the_contacts_change(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await bulk(client, [{"email": f"g{i}@gmail.com"} for i in range(3)])
    with scans(engine) as seen:
        assert await listed_total(client, email_contains="gmail") == 3
        assert len(seen) == 1
        assert await listed_total(client, email_contains="gmail") == 3
        assert await listed_total(client, email_contains="GMAIL") == 3  # another filter value
        assert len(seen) == 2
        # Selecting changes sync state, not contacts: the kept count stays good.
        ids = [c["id"] for c in (await client.get(LIST)).json()]
        selected = await client.put(
            f"{LIST}/crm/select", json={"contact_ids": ids, "crms": ["hubspot"]}
        )
        assert selected.status_code == 200
        assert await listed_total(client, email_contains="gmail") == 3
        assert len(seen) == 2
        # A filter on sync state is never kept: its count follows the sync, not the contacts.
        for _ in range(2):
            assert (
                await listed_total(client, email_contains="gmail", hubspot_sync_status="Selected")
                == 3
            )
        assert len(seen) == 4
        # A new contact: the kept count adds its image instead of counting again.
        await bulk(client, [{"email": "more@gmail.com"}])
        assert await listed_total(client, email_contains="gmail") == 4
        assert len(seen) == 4


@on_postgres
async def test_writes_bring_a_kept_count_up_to_date_without_a_scan(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    rows = [
        {"email": f"g{i}@gmail.com", "name": f"Ann {i}", "email_type": "FREE"} for i in range(4)
    ]
    await bulk(client, [*rows, {"email": "c@corp.com", "name": "Bob"}])
    by_email = {c["email"]: c["id"] for c in (await client.get(LIST)).json()}
    combined = {"email_contains": "gmail", "email_type": "FREE"}
    with scans(engine) as seen:
        await assert_exact(engine, client)
        assert await listed_total(client, **combined) == await free_gmail_total(engine)
        assert len(seen) == 3  # email, name and the combined filter, once each

        steps = [
            client.patch(f"{LIST}/{by_email['g0@gmail.com']}", json={"email": "g0@mail.io"}),
            client.patch(f"{LIST}/{by_email['c@corp.com']}", json={"name": "Annabel"}),
            client.put(f"{LIST}/{by_email['g1@gmail.com']}", json={"email": "g1@gmail.org"}),
            client.delete(f"{LIST}/{by_email['g2@gmail.com']}"),
        ]
        for step in steps:
            assert (await step).status_code in (200, 204)
            await assert_exact(engine, client)
        await bulk(client, [{"email": "G9@GMAIL.COM", "name": "ANN"}, {"email": "x@corp.com"}])
        await assert_exact(engine, client)
        # A write that leaves emails and names alone logs no image and changes no count.
        status = await client.put(
            f"{LIST}/status", json={"contact_ids": list(by_email.values()), "status": "Queued"}
        )
        assert status.status_code == 200, status.text
        await assert_exact(engine, client)
        assert len(seen) == 3
        # A filter on another column as well cannot use the images: any write counts it again.
        assert await listed_total(client, **combined) == await free_gmail_total(engine)
        assert len(seen) == 4


@on_postgres
async def test_a_count_taken_inside_a_writing_transaction_is_not_kept(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await bulk(client, [{"email": "a@gmail.com"}])
    kept = counts.ContactCounts()
    gmail = [contacts.c.email.icontains("gmail")]
    async with engine.connect() as conn:
        trans = await conn.begin()
        await conn.execute(contacts.insert().values(new_row("mine@gmail.com")))
        assert await kept.count(conn, "gmail", gmail) == 2  # its own write, seen by itself
        await trans.rollback()
    async with engine.connect() as conn:
        assert await kept.count(conn, "gmail", gmail) == 1


@on_postgres
async def test_a_writer_that_commits_late_is_counted(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await bulk(client, [{"email": "a@gmail.com"}, {"email": "b@gmail.com"}])
    async with engine.connect() as early:
        trans = await early.begin()
        # Its change-log row takes a lower id than the commit below.
        await early.execute(contacts.insert().values(new_row("early@gmail.com")))
        await bulk(client, [{"email": "later@gmail.com"}])
        assert await listed_total(client, email_contains="gmail") == 3
        assert await listed_total(client, email_contains="gmail") == 3
        await trans.commit()
    assert await listed_total(client, email_contains="gmail") == 4

    async with engine.connect() as undone:
        trans = await undone.begin()
        await undone.execute(contacts.insert().values(new_row("undone@gmail.com")))
        await trans.rollback()
    assert await listed_total(client, email_contains="gmail") == 4


@on_postgres
async def test_compaction_and_truncate_keep_counts_exact(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    for i in range(3):
        await bulk(client, [{"email": f"g{i}@gmail.com", "name": "Ann"}])
    await assert_exact(engine, client)
    async with engine.connect() as writer:
        trans = await writer.begin()
        await writer.execute(contacts.insert().values(new_row("w@gmail.com", "Ann")))
        async with engine.begin() as conn:
            await counts.compact(conn)
        await assert_exact(engine, client)
        await trans.commit()
    await assert_exact(engine, client)
    async with engine.begin() as conn:
        await counts.compact(conn)
        # Folded to one row; folding a single row again would change the version for nothing.
        assert (await conn.execute(select(func.count()).select_from(contact_changes))).scalar() == 1
        top = (await conn.execute(select(func.max(contact_changes.c.id)))).scalar()
        await counts.compact(conn)
        assert (await conn.execute(select(func.max(contact_changes.c.id)))).scalar() == top
    with scans(engine) as seen:
        await bulk(client, [{"email": "after@gmail.com"}])
        async with engine.begin() as conn:
            await counts.compact(conn)
        # The fold deleted the images of that write: the kept counts are taken again.
        await assert_exact(engine, client)
        assert len(seen) == 2
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE contacts CASCADE"))
    await assert_exact(engine, client)
    assert await listed_total(client, email_contains="gmail") == 0
