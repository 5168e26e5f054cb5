"""A person's actions on the queue: select, unselect, re-queue after an edit, operator retry and
reset, and releasing rows a pause held back.

Every function is one set-based statement per CRM, run inside the caller's transaction, so that a
selection and its queue entry commit together (a transactional outbox). On PostgreSQL each takes
its rows in one global order, the state rows' primary key, so that writes over overlapping
sets queue instead of deadlocking: every statement here first locks the existing rows it will
write in that order (`sqlutil.lock_in_order`). It is the order in which the worker's outcome
write locks its rows (`sync/record.py`'s owned-rows read, an index scan of the primary key), so
a person's action and a worker's outcome queue too. Selecting and unselecting take every CRM
of the action at once: the rows of all of them are locked in one statement (`lock_rows_of`),
then written CRM by CRM in `Crm` order; other callers acting on several CRMs go through them in
`Crm` order.

A selection reads the contacts it queues `FOR KEY SHARE` on PostgreSQL: none can be deleted
before it commits, so no state row outlives its contact there, where no foreign key checks it
(migration 0012: a trigger on `contacts` deletes a deleted contact's state rows and history).

Each also voids any lease on the rows it touches: a person's newer action wins over a result
still in flight, whose late write is then refused by the lease guard (see `sync/record.py`).
A row queued again while its push is in flight stays held until that push has ended (`_held`):
the old push may otherwise reach the vendor after the new one and leave the older data there.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, any_, case, func, literal, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from crmsync.enums import Crm, ProcessingStatus, SyncStatus
from crmsync.sqlutil import chunks, for_key_share, lock_in_order, upsert_insert
from crmsync.sync.state import NO_LEASE
from crmsync.tables import ERROR_KEY, contacts, crm_sync_state

s = crm_sync_state.c
# Under both drivers' bind-parameter limits (SQLite 32,766; asyncpg 32,767).
_MAX_IDS = 30_000


def queued(now: dt.datetime) -> dict[str, Any]:
    """Values that put a row at the back of the queue, due now, with a fresh attempt budget."""
    return {
        "sync_status": SyncStatus.Selected.value,
        "processing_status": ProcessingStatus.Queued.value,
        "processing_error": None,
        "attempts": 0,
        "next_attempt_at": now,
        **NO_LEASE,
        "updated_at": now,
    }


def _held(now: Any) -> Any:
    """`next_attempt_at` for a row queued again: now, or, while a worker's push of it is in
    flight (Processing), the end of that worker's lease. The worker's outcome write, refused for
    the voided lease, ends the hold at once (`record.py`); a worker that died ends it with its
    lease. So the new push never runs beside the old one, whatever order the vendor would apply
    them in."""
    in_flight = (s.sync_status == SyncStatus.Processing.value) & (s.next_attempt_at > now)
    return case((in_flight, s.next_attempt_at), else_=now)


async def select_contacts(
    conn: AsyncConnection,
    crms: Crm | Sequence[Crm],
    contact_where: ColumnElement[bool],
    now: dt.datetime,
    *,
    force: bool = False,
) -> int:
    """Queue every matching contact for each of `crms`; returns the number of rows queued.

    Re-selecting resets the attempt budget (the customer's shared counter never reset). With
    `force`, the stored payload hash is forgotten so the contact is pushed even if unchanged.
    The existing rows of every CRM are locked first, in one statement (`lock_rows_of`); then
    one statement per CRM, in `Crm` order.
    """
    crms = _sorted(crms)
    on_conflict = {"synced_hash": None} if force else {}
    existing = await lock_rows_of(conn, crms, contact_where)
    if existing == 0:
        # None of these rows existed when locked (a first selection): a plain INSERT costs
        # less than INSERT ... ON CONFLICT, whose speculative insertion takes and releases a
        # lock and confirms the heap tuple for every row (bench/README.md, issue 24). Should
        # another transaction insert some of them meanwhile, a plain INSERT fails on the
        # unique index: the savepoint is rolled back and the rows are upserted as usual.
        try:
            async with conn.begin_nested():
                return await _write_states(conn, crms, contact_where, queued(now), None)
        except IntegrityError:
            pass
    return await _write_states(conn, crms, contact_where, queued(now), on_conflict)


async def _write_states(
    conn: AsyncConnection,
    crms: Sequence[Crm],
    contact_where: ColumnElement[bool],
    values: dict[str, Any],
    also_on_conflict: dict[str, Any] | None,
) -> int:
    count = 0
    for crm in crms:
        count += await _upsert_states(conn, crm, contact_where, values, also_on_conflict)
    return count


async def _upsert_states(
    conn: AsyncConnection,
    crm: Crm,
    contact_where: ColumnElement[bool],
    values: dict[str, Any],
    also_on_conflict: dict[str, Any] | None,
) -> int:
    """Create or overwrite the (contact, crm) rows of every matching contact in one statement;
    with `also_on_conflict` None, only create them (a plain INSERT).

    The caller has locked the existing rows (`lock_rows_of`); new ones are inserted in the
    contacts' order (two inserts of the same new row wait on its index entry).
    """
    source = select(
        contacts.c.id,
        contacts.c.created_at,
        literal(crm.value),
        *(literal(v, type_=crm_sync_state.c[k].type) for k, v in values.items()),
    ).where(contact_where)
    if conn.dialect.name == "postgresql":
        # The contacts stay until this commits, and one deleted meanwhile is skipped: with the
        # delete trigger, what a foreign key guaranteed, without its check per row (0012); a
        # person's edit of them goes on.
        source = for_key_share(source.order_by(contacts.c.id), contacts)
    insert = upsert_insert(conn, crm_sync_state).from_select(
        ["contact_id", "contact_created_at", "crm", *values.keys()], source
    )
    if also_on_conflict is None:
        return int((await conn.execute(insert)).rowcount)
    set_ = {k: insert.excluded[k] for k in values} | also_on_conflict
    if "next_attempt_at" in values:
        set_["next_attempt_at"] = _held(insert.excluded.next_attempt_at)
    stmt = insert.on_conflict_do_update(index_elements=[s.contact_id, s.crm], set_=set_)
    result = await conn.execute(stmt)
    return int(result.rowcount)


async def unselect_contacts(
    conn: AsyncConnection,
    crms: Crm | Sequence[Crm],
    contact_where: ColumnElement[bool],
    now: dt.datetime,
) -> int:
    """Back to New for each of `crms`: not queued, no error. The external id and payload hash
    are kept. Rows locked first as in `select_contacts`."""
    crms = _sorted(crms)
    await lock_rows_of(conn, crms, contact_where)
    count = 0
    for crm in crms:
        where = [s.crm == crm.value, s.contact_id.in_(select(contacts.c.id).where(contact_where))]
        stmt = (
            update(crm_sync_state)
            .where(*where)
            .values(
                sync_status=SyncStatus.New.value,
                processing_status=None,
                processing_error=None,
                next_attempt_at=None,
                **NO_LEASE,
                updated_at=now,
            )
        )
        count += int((await conn.execute(stmt)).rowcount)
    return count


async def requeue_after_edit(
    conn: AsyncConnection, contact_ids: Sequence[Any], now: dt.datetime
) -> int:
    """A contact's synced fields changed: push it again wherever it was Complete or in flight.

    Every state row of the contacts is locked first, whatever its status: a waiting row that a
    claim is marking right now makes this wait for the claim's commit and then find the row in
    flight (so it is pushed again), instead of finding it still waiting while the claim reads
    the contact from before this edit (`sync/claim.py`).
    """
    if not contact_ids:
        return 0
    await _lock(conn, [s.contact_id.in_(contact_ids)])
    where = [
        s.contact_id.in_(contact_ids),
        s.sync_status.in_([SyncStatus.Complete.value, SyncStatus.Processing.value]),
    ]
    values = queued(now) | {"next_attempt_at": _held(now)}
    stmt = update(crm_sync_state).where(*where).values(**values)
    result = await conn.execute(stmt)
    return int(result.rowcount)


async def skip_contacts(
    conn: AsyncConnection, crm: Crm, contact_where: ColumnElement[bool], now: dt.datetime
) -> int:
    """Park contacts as Skipped for `crm` (a person decided not to sync them there)."""
    values = {
        "sync_status": SyncStatus.Skipped.value,
        "processing_status": None,
        "processing_error": None,
        "next_attempt_at": None,
        **NO_LEASE,
        "updated_at": now,
    }
    await lock_rows_of(conn, [crm], contact_where)
    return await _upsert_states(conn, crm, contact_where, values, {})


async def retry_failed(
    conn: AsyncConnection,
    crm: Crm,
    now: dt.datetime,
    contact_ids: Sequence[Any] | None = None,
    error: str | None = None,
) -> int:
    """Operator retry: Error rows of `crm` (all, or those of `contact_ids`) back to Selected.

    Only Error rows move; any other row of the listed contacts is left alone, so a retry can
    never disturb a row in flight or undo a success. Attempts start again from zero. With
    `error`, only the rows of that group of the dashboard's Failed page (`tables.ERROR_KEY`:
    the message's first 500 characters, "" for none).
    """
    where = [s.crm == crm.value, s.sync_status == SyncStatus.Error.value]
    if error is not None:
        where.append(ERROR_KEY == error)
    if contact_ids is None:
        await _lock(conn, where)
        result = await conn.execute(update(crm_sync_state).where(*where).values(**queued(now)))
        return int(result.rowcount)
    count = 0
    for part in chunks(sorted(set(contact_ids)), _MAX_IDS):
        await _lock(conn, [*where, s.contact_id.in_(part)])
        stmt = update(crm_sync_state).where(*where, s.contact_id.in_(part)).values(**queued(now))
        count += int((await conn.execute(stmt)).rowcount)
    return count


async def reset_status(
    conn: AsyncConnection,
    crm: Crm,
    from_statuses: Sequence[SyncStatus],
    to: SyncStatus,
    now: dt.datetime,
) -> int:
    """The work order's rollback (WO-015.4 2.7) for one CRM: rows in `from_statuses` to `to`.

    To New: as unselect, and the attempt counter is cleared too (the rollback SQL resets
    retry_count). To Selected: queued again, due now, with the payload hash forgotten so every
    row is really pushed (re-queueing rows whose payload the CRM already holds is the point of a
    reset, e.g. after the CRM lost its data). Callers decide which pairs make sense.
    """
    if to is SyncStatus.New:
        values: dict[str, Any] = {
            "sync_status": SyncStatus.New.value,
            "processing_status": None,
            "processing_error": None,
            "attempts": 0,
            "next_attempt_at": None,
            **NO_LEASE,
            "updated_at": now,
        }
    elif to is SyncStatus.Selected:
        values = {**queued(now), "synced_hash": None}
    else:
        raise ValueError(f"reset can only move rows to New or Selected, not {to.value}")
    where = [s.crm == crm.value, s.sync_status.in_([st.value for st in from_statuses])]
    await _lock(conn, where)
    stmt = update(crm_sync_state).where(*where).values(**values)
    return int((await conn.execute(stmt)).rowcount)


async def release_held(
    conn: AsyncConnection, crm: Crm, until: dt.datetime, now: dt.datetime
) -> int:
    """Make rows a pause held back (Queued, due at the latest `until`) due now.

    A worker that hits an auth or configuration failure hands its rows back due when the pause
    ends; once an operator has fixed the cause and resumes, they should not wait that long.
    Backoff retries scheduled after `until` keep their time; those due before it come forward
    too (the rows do not record which pause released them, and the pause held them anyway).
    """
    where = [
        s.crm == crm.value,
        s.sync_status == SyncStatus.Queued.value,
        s.next_attempt_at > now,
        s.next_attempt_at <= until,
    ]
    await _lock(conn, where)
    stmt = update(crm_sync_state).where(*where).values(next_attempt_at=now, updated_at=now)
    return int((await conn.execute(stmt)).rowcount)


def _sorted(crms: Crm | Sequence[Crm]) -> list[Crm]:
    return [crms] if isinstance(crms, Crm) else sorted(crms)


async def _lock(conn: AsyncConnection, where: Sequence[ColumnElement[bool]]) -> int | None:
    """Lock the state rows an UPDATE is about to write, in the global order (PostgreSQL); how
    many (None on SQLite)."""
    return await lock_in_order(conn, crm_sync_state, where, [s.id])


async def lock_rows_of(
    conn: AsyncConnection, crms: Sequence[Crm], contact_where: ColumnElement[bool]
) -> int | None:
    """Lock the existing rows of `crms` of the contacts matching `contact_where`, all in one
    statement and in the global order (PostgreSQL); how many there were (None on SQLite).

    The rows are found contact by contact, one lookup of the (contact_id, crm) unique index per
    contact for every CRM at once, so the cost follows the number of matching contacts, not the
    size of the table. Joined the plain way, the planner hashed every row of the CRM to find
    those of a few thousand contacts, CRM by CRM and once per range of a filtered action: a
    cost that grows with the table, paid even when none of the contacts has a row yet (a first
    selection). OFFSET keeps the per-contact lookup from being flattened back into that join
    (and the CRM condition out of it: one index descent per contact, not one per CRM); the ids
    are collected first (`array(...)`), then locked through the primary key in its order.
    """
    if conn.dialect.name != "postgresql" or not crms:
        return None
    found = crm_sync_state.alias("found")
    per_contact = (
        select(found.c.id, found.c.crm)
        .where(found.c.contact_id == contacts.c.id)
        .offset(0)
        .lateral()
    )
    ids = select(per_contact.c.id).select_from(contacts.join(per_contact, true()))
    ids = ids.where(contact_where, per_contact.c.crm.in_([crm.value for crm in crms]))
    return await _lock(conn, [s.id == any_(func.array(ids.scalar_subquery()))])
