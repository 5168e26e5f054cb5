"""The attempt history (`sync_events`): write a batch's, read a contact's, prune old ones.

One history row per attempt (and per "unchanged, no call" and "handed back"), written in the
transaction that records the outcome (`record.py`) or hands a lease back (`lease.py`), as one
statement per batch: the rows as one JSON array on SQLite, one array per column on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, RowMapping, String, Text, Uuid, delete, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from crmsync.enums import CRM_NAMES, Crm
from crmsync.sqlutil import (
    ArrayRows,
    ArrayWrite,
    DriverValues,
    JsonRows,
    JsonWrite,
    for_key_share,
)
from crmsync.sync.state import Outcome, RowUpdate
from crmsync.tables import contacts, sync_events

__all__ = ["NOT_APPLIED", "Timing", "history", "insert_events", "prune"]

e = sync_events.c
NOT_APPLIED = "[not applied: the row changed while this attempt was in flight] "


async def history(
    conn: AsyncConnection, contact_id: uuid.UUID, limit: int, offset: int = 0
) -> Sequence[RowMapping]:
    stmt = (
        select(sync_events)
        .where(e.contact_id == contact_id)
        .order_by(e.created_at.desc(), e.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return (await conn.execute(stmt)).mappings().all()


async def prune(conn: AsyncConnection, before: dt.datetime, batch: int = 10_000) -> int:
    """Delete up to `batch` events older than `before` (call repeatedly to catch up)."""
    # `crm IN (...)` gives the (crm, created_at) index its leading column.
    old = (
        select(e.id)
        .where(e.crm.in_(CRM_NAMES), e.created_at < before)
        .limit(batch)
        .scalar_subquery()
    )
    result = await conn.execute(delete(sync_events).where(e.id.in_(old)))
    return int(result.rowcount)


_EVENT_PER_ROW = ("contact_id", "outcome", "http_status", "message", "attempt")
_EVENT_SHARED = ("crm", "duration_ms", "worker", "created_at")
_EVENT_KEYS = (*_EVENT_PER_ROW, *_EVENT_SHARED)
_EVENT_ROWS = JsonRows(_EVENT_PER_ROW)
_EVENT_ARRAYS = ArrayRows(
    (
        ("contact_id", Uuid()),
        ("outcome", String()),
        ("http_status", Integer()),
        ("message", Text()),
        ("attempt", Integer()),
    )
)


def _insert_events_from(rows: JsonRows | ArrayRows, *, refused: bool = False) -> Any:
    source = select(*(rows(key) for key in _EVENT_KEYS))
    if refused:
        # A refused outcome's contact may be gone: deleted while its push was in flight, its
        # state rows with it. Its history is not written (on SQLite it would break the foreign
        # key, and with it the whole batch's record; PostgreSQL has no such key since migration
        # 0012 and would keep it). On PostgreSQL the contacts found are locked until commit, so
        # none is deleted, with its history, before its history row is in, and a person's
        # edit of them goes on.
        source = for_key_share(source.join(contacts, contacts.c.id == rows("contact_id")), contacts)
    return insert(sync_events).from_select(list(_EVENT_KEYS), source)


@dataclass(frozen=True, slots=True)
class _Inserts:
    """One dialect's statements for a batch's history rows, and its driver's values. An
    applied outcome's contact exists: deleting it deletes its state row too, which waits for
    the worker holding it (migration 0012). A refused one's need not (`_insert_events_from`)."""

    values: DriverValues
    applied: JsonWrite | ArrayWrite
    refused: JsonWrite | ArrayWrite


_INSERTS: dict[str, _Inserts] = {
    "postgresql": _Inserts(
        DriverValues("postgresql"),
        ArrayWrite(_EVENT_ARRAYS, _insert_events_from(_EVENT_ARRAYS), _EVENT_SHARED),
        ArrayWrite(_EVENT_ARRAYS, _insert_events_from(_EVENT_ARRAYS, refused=True), _EVENT_SHARED),
    ),
    "sqlite": _Inserts(
        DriverValues("sqlite"),
        JsonWrite(_insert_events_from(_EVENT_ROWS), _EVENT_SHARED),
        JsonWrite(_insert_events_from(_EVENT_ROWS, refused=True), _EVENT_SHARED),
    ),
}


@dataclass(frozen=True, slots=True)
class Timing:
    """When and how long an attempt ran, for its history rows."""

    worker: str
    started: dt.datetime
    duration_ms: int


def insert_events(
    conn: Connection,
    crm: Crm,
    updates: Iterable[RowUpdate],
    applied: set[int],
    now: dt.datetime,
    timing: Timing,
) -> None:
    """One history row per update; those not `applied` are marked so (`NOT_APPLIED`), and
    left out when their contact has been deleted."""
    sql = _INSERTS[conn.dialect.name]
    values = sql.values
    done: list[tuple[Any, ...]] = []
    refused: list[tuple[Any, ...]] = []
    for u in updates:
        ours = u.state_id in applied
        (done if ours else refused).append(
            (
                values.uuid(u.contact_id),
                u.outcome.value,
                u.http_status,
                u.message if ours else NOT_APPLIED + (u.message or ""),
                u.attempts if u.outcome in (Outcome.retry, Outcome.error) else 0,
            )
        )
    shared = (crm.value, timing.duration_ms, timing.worker, values.ts(now))
    sql.applied.run(conn, done, shared)
    sql.refused.run(conn, refused, shared)
