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
from crmsync.sqlutil import ArrayRows, ArrayWrite, DriverValues, JsonRows, JsonWrite
from crmsync.sync.state import Outcome, RowUpdate
from crmsync.tables import sync_events

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


def _insert_events_from(rows: JsonRows | ArrayRows) -> Any:
    return insert(sync_events).from_select(
        list(_EVENT_KEYS), select(*(rows(key) for key in _EVENT_KEYS))
    )


# Each dialect's one form of a batch's history rows, and its driver's values.
_INSERTS: dict[str, tuple[DriverValues, JsonWrite | ArrayWrite]] = {
    "postgresql": (
        DriverValues("postgresql"),
        ArrayWrite(_EVENT_ARRAYS, _insert_events_from(_EVENT_ARRAYS), _EVENT_SHARED),
    ),
    "sqlite": (DriverValues("sqlite"), JsonWrite(_insert_events_from(_EVENT_ROWS), _EVENT_SHARED)),
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
    """One history row per update; those not `applied` are marked so (`NOT_APPLIED`)."""
    values, write = _INSERTS[conn.dialect.name]
    rows = [
        (
            values.uuid(u.contact_id),
            u.outcome.value,
            u.http_status,
            u.message if u.state_id in applied else NOT_APPLIED + (u.message or ""),
            u.attempts if u.outcome in (Outcome.retry, Outcome.error) else 0,
        )
        for u in updates
    ]
    shared = (crm.value, timing.duration_ms, timing.worker, values.ts(now))
    write.run(conn, rows, shared)
