"""The queue's SQL: claim due rows under a lease, record outcomes behind that lease, renew it.

All statements are set-based (a handful per batch, whatever its size), and each runs in a short
transaction with no network call inside it: claim and commit, push, record and commit.

Fencing: every write of an outcome carries `lease_token = :token AND sync_status = 'Processing'`
in its WHERE clause. A worker whose lease expired (and whose rows another worker reclaimed), or
whose row a person changed meanwhile (unselect, edit, re-select), writes nothing; its result is
still kept in the history, marked as not applied.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from crmsync.connectors.base import ContactPayload
from crmsync.enums import Crm, ProcessingStatus, SyncStatus
from crmsync.sqlutil import chunks
from crmsync.sync.state import Claimed, Outcome, RowUpdate
from crmsync.tables import ACTIVE_STATUSES, contacts, crm_sync_state, sync_events

s = crm_sync_state.c
NOT_APPLIED = "[not applied: the row changed while this attempt was in flight] "
_CHUNK = 5_000

_PAYLOAD_COLUMNS = (
    contacts.c.id,
    contacts.c.email,
    contacts.c.name,
    contacts.c.phone_number,
    contacts.c.email_type,
    contacts.c.has_gmail,
    contacts.c.context,
    contacts.c.source_url,
    contacts.c.domain_id,
    contacts.c.page_id,
    contacts.c.source_job_id,
)


async def claim(
    engine: AsyncEngine,
    crm: Crm,
    limit: int,
    owner: str,
    token: str,
    now: dt.datetime,
    lease_until: dt.datetime,
) -> list[Claimed]:
    """Take up to `limit` due rows of `crm` and mark them Processing under `token`.

    Due = active (Selected, Queued, Processing) with `next_attempt_at <= now`. A claim sets
    `next_attempt_at` to the lease's end, so rows of a worker that died come due again then.
    """
    due = (
        select(s.id)
        .where(s.crm == crm.value, s.sync_status.in_(ACTIVE_STATUSES), s.next_attempt_at <= now)
        .order_by(s.next_attempt_at)
        .limit(limit)
    )
    values = {
        "sync_status": SyncStatus.Processing.value,
        "processing_status": ProcessingStatus.Processing.value,
        "lease_owner": owner,
        "lease_token": token,
        "lease_expires_at": lease_until,
        "next_attempt_at": lease_until,
        "last_attempt_at": now,
        "updated_at": now,
    }
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # SKIP LOCKED: concurrent workers on any host take disjoint rows without waiting.
            # MATERIALIZED: the locked id list is computed once, never re-evaluated per row.
            locked = (
                due.with_for_update(skip_locked=True, key_share=True)
                .cte("due")
                .prefix_with("MATERIALIZED")
            )
            stmt = update(crm_sync_state).where(s.id == locked.c.id)
        else:
            # SQLite: the engine's BEGIN IMMEDIATE already makes this transaction the only writer.
            stmt = update(crm_sync_state).where(s.id.in_(due.scalar_subquery()))
        result = await conn.execute(
            stmt.values(**values).returning(
                s.id, s.contact_id, s.attempts, s.external_id, s.synced_hash
            )
        )
        claimed = result.all()
        if not claimed:
            return []
        people: dict[uuid.UUID, Any] = {}
        for part in chunks([row.contact_id for row in claimed], _CHUNK):
            rows = await conn.execute(select(*_PAYLOAD_COLUMNS).where(contacts.c.id.in_(part)))
            people.update((row.id, row) for row in rows)
    out = []
    for row in claimed:
        person = people[row.contact_id]
        payload = ContactPayload(
            contact_id=person.id,
            email=person.email,
            name=person.name,
            phone_number=person.phone_number,
            email_type=person.email_type,
            has_gmail=person.has_gmail,
            context=person.context,
            source_url=person.source_url,
            domain_id=person.domain_id,
            page_id=person.page_id,
            source_job_id=person.source_job_id,
            external_id=row.external_id,
        )
        out.append(Claimed(row.id, row.attempts, row.synced_hash, payload))
    return out


def _guarded(values: dict[str, Any]) -> Any:
    """An UPDATE of one row per parameter set, applied only while we still hold its lease."""
    return (
        update(crm_sync_state)
        .where(
            s.id == bindparam("_id"),
            s.lease_token == bindparam("_token"),
            s.sync_status == SyncStatus.Processing.value,
        )
        .values(**values)
    )


_RELEASE_VALUES: dict[str, Any] = {
    "sync_status": SyncStatus.Queued.value,
    "processing_status": ProcessingStatus.Queued.value,
    "processing_error": bindparam("message"),
    "attempts": bindparam("attempts"),
    "next_attempt_at": bindparam("next_attempt_at"),
    "lease_owner": None,
    "lease_token": None,
    "lease_expires_at": None,
    "updated_at": bindparam("now"),
}

_STATEMENTS: dict[Outcome, Any] = {
    Outcome.ok: _guarded(
        {
            "sync_status": SyncStatus.Complete.value,
            "processing_status": ProcessingStatus.Complete.value,
            "processing_error": None,
            "external_id": func.coalesce(bindparam("external_id"), s.external_id),
            "attempts": 0,
            "synced_hash": bindparam("synced_hash"),
            "synced_at": bindparam("now"),
            "next_attempt_at": None,
            "lease_owner": None,
            "lease_token": None,
            "lease_expires_at": None,
            "updated_at": bindparam("now"),
        }
    ),
    Outcome.unchanged: _guarded(
        {
            "sync_status": SyncStatus.Complete.value,
            "processing_status": ProcessingStatus.Complete.value,
            "processing_error": None,
            "attempts": 0,
            "next_attempt_at": None,
            "lease_owner": None,
            "lease_token": None,
            "lease_expires_at": None,
            "updated_at": bindparam("now"),
        }
    ),
    Outcome.retry: _guarded(_RELEASE_VALUES),
    Outcome.error: _guarded(
        {
            "sync_status": SyncStatus.Error.value,
            "processing_status": ProcessingStatus.Error.value,
            "processing_error": bindparam("message"),
            "attempts": bindparam("attempts"),
            "next_attempt_at": None,
            "lease_owner": None,
            "lease_token": None,
            "lease_expires_at": None,
            "updated_at": bindparam("now"),
        }
    ),
}
for _kind in (Outcome.rate_limited, Outcome.auth_failed, Outcome.misconfigured, Outcome.released):
    _STATEMENTS[_kind] = _STATEMENTS[Outcome.retry]


@dataclass(frozen=True, slots=True)
class Recorded:
    applied: int
    # Rows whose lease we had lost: their outcome went to the history only.
    lost: list[int]


@dataclass(frozen=True, slots=True)
class Timing:
    """When and how long an attempt ran, for its history rows."""

    worker: str
    started: dt.datetime
    duration_ms: int


async def record(
    engine: AsyncEngine,
    crm: Crm,
    token: str,
    updates: Sequence[RowUpdate],
    now: dt.datetime,
    timing: Timing,
) -> Recorded:
    """Write every row's outcome (behind the lease) and its history, in one transaction."""
    if not updates:
        return Recorded(0, [])
    async with engine.begin() as conn:
        owned = await _owned(conn, token, [u.state_id for u in updates])
        groups: dict[Outcome, list[dict[str, Any]]] = {}
        for u in updates:
            if u.state_id in owned:
                groups.setdefault(u.outcome, []).append(
                    {
                        "_id": u.state_id,
                        "_token": token,
                        "now": now,
                        "message": u.message,
                        "attempts": u.attempts,
                        "next_attempt_at": u.next_attempt_at,
                        "external_id": u.external_id,
                        "synced_hash": u.synced_hash,
                    }
                )
        for outcome, params in groups.items():
            await conn.execute(_STATEMENTS[outcome], _only_used(outcome, params))
        await insert_events(conn, crm, updates, owned, now, timing)
    lost = [u.state_id for u in updates if u.state_id not in owned]
    return Recorded(len(updates) - len(lost), lost)


def _only_used(outcome: Outcome, params: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop bind values a statement does not use (executemany wants exactly its parameters)."""
    used = set(_STATEMENTS[outcome].compile().params)
    return [{k: v for k, v in p.items() if k in used} for p in params]


async def _owned(conn: AsyncConnection, token: str, ids: list[int]) -> set[int]:
    """The rows of `ids` we still hold; on PostgreSQL locked until commit, so it stays true."""
    found: set[int] = set()
    for part in chunks(ids, _CHUNK):
        query = select(s.id).where(
            s.id.in_(part), s.lease_token == token, s.sync_status == SyncStatus.Processing.value
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        found.update((await conn.execute(query)).scalars())
    return found


async def insert_events(
    conn: AsyncConnection,
    crm: Crm,
    updates: Iterable[RowUpdate],
    applied: set[int],
    now: dt.datetime,
    timing: Timing,
) -> None:
    rows = [
        {
            "contact_id": u.contact_id,
            "crm": crm.value,
            "outcome": u.outcome.value,
            "http_status": u.http_status,
            "message": u.message if u.state_id in applied else NOT_APPLIED + (u.message or ""),
            "attempt": u.attempts if u.outcome in (Outcome.retry, Outcome.error) else 0,
            "duration_ms": timing.duration_ms,
            "worker": timing.worker,
            "created_at": now,
        }
        for u in updates
    ]
    if rows:
        await conn.execute(insert(sync_events), rows)


async def renew(engine: AsyncEngine, tokens: Sequence[str], until: dt.datetime) -> int:
    """Extend the leases of batches still in flight (slow vendors, long imports)."""
    if not tokens:
        return 0
    async with engine.begin() as conn:
        result = await conn.execute(
            update(crm_sync_state)
            .where(s.lease_token.in_(tokens), s.sync_status == SyncStatus.Processing.value)
            .values(lease_expires_at=until, next_attempt_at=until)
        )
    return int(result.rowcount)


async def release_lease(
    engine: AsyncEngine, crm: Crm, token: str, now: dt.datetime, timing: Timing
) -> int:
    """Hand back every row still held under `token`, unattempted and due now (shutdown)."""
    async with engine.begin() as conn:
        result = await conn.execute(
            update(crm_sync_state)
            .where(s.lease_token == token, s.sync_status == SyncStatus.Processing.value)
            .values(
                sync_status=SyncStatus.Queued.value,
                processing_status=ProcessingStatus.Queued.value,
                next_attempt_at=now,
                lease_owner=None,
                lease_token=None,
                lease_expires_at=None,
                updated_at=now,
            )
            .returning(s.id, s.contact_id, s.attempts)
        )
        rows = result.all()
        released = [
            RowUpdate(row.id, row.contact_id, Outcome.released, row.attempts, "worker stopped")
            for row in rows
        ]
        await insert_events(conn, crm, released, {u.state_id for u in released}, now, timing)
    return len(rows)
