"""Lease: how long a claim holds its rows, and how a worker extends or gives them back.

A claim (`claim.py`) takes rows under a new token until `lease_expires_at`, and sets
`next_attempt_at` to the same instant. Expiry needs no statement of its own: a row whose worker
died (or stopped renewing) is simply due again when its lease runs out, and the next claim of
any worker takes such rows first. While a batch is in flight its worker's heartbeat renews the
lease (`renew`); on shutdown, a batch cut short is handed back at once (`release`). An outcome
write asks which of its rows are still held (`held`, `held_locked`: see `record.py`).
Every statement here is guarded like an outcome write (`record.py`): token and Processing. On
PostgreSQL each first locks its rows in the primary key's order, as an outcome write does: found
by token, they would be locked in the lease index's (physical) order, and could deadlock with a
person's action, which locks in the primary key's order (`sqlutil.lock_in_order`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import BigInteger, any_, bindparam, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import writer_process
from crmsync.db import Transaction
from crmsync.enums import Crm, ProcessingStatus, SyncStatus
from crmsync.sqlutil import Compiled, chunks, lock_statement
from crmsync.sync.events import Timing, insert_events
from crmsync.sync.state import NO_LEASE, Outcome, RowUpdate
from crmsync.tables import crm_sync_state

__all__ = ["held", "held_locked", "release", "renew"]

s = crm_sync_state.c
# Ids per statement of `held`, under SQLite's bind-parameter limit.
_CHUNK = 5_000

_HELD_LOCKED = Compiled(
    select(s.id)
    .where(
        s.id == any_(bindparam("ids", type_=postgresql.ARRAY(BigInteger))),
        s.lease_token == bindparam("token"),
        s.sync_status == SyncStatus.Processing.value,
    )
    .order_by(s.id)
    .with_for_update(),
    ("ids", "token"),
)


def held_locked(conn: Connection, token: str, ids: list[int]) -> set[int]:
    """PostgreSQL: the rows of `ids` still held under `token`, locked until commit (so it stays
    true) in the primary key's order, the order every multi-row write of a person's takes
    (`sqlutil.lock_in_order`), so the two queue instead of deadlocking. One statement, its ids
    one array, compiled once: it runs for every batch an outcome is written for."""
    return {row[0] for row in _HELD_LOCKED.fetchall(conn, (sorted(ids), token))}


def held(conn: Connection, token: str, ids: list[int]) -> set[int]:
    """SQLite: the rows of `ids` still held under `token` (no other writer until commit)."""
    found: set[int] = set()
    for part in chunks(sorted(ids), _CHUNK):
        query = select(s.id).where(
            s.id.in_(part), s.lease_token == token, s.sync_status == SyncStatus.Processing.value
        )
        found.update(conn.execute(query).scalars())
    return found


async def renew(
    engine: AsyncEngine, tokens: Mapping[Crm, Sequence[str]], until: dt.datetime
) -> int:
    """Extend the leases of batches still in flight (slow vendors, long imports), by CRM."""
    crms = sorted(crm.value for crm, held in tokens.items() if held)
    if not crms:
        return 0
    every = [token for held in tokens.values() for token in held]
    return await writer_process.write(engine, Transaction(_renew_rows, crms, every, until))


def _renew_rows(crms: list[str], tokens: list[str], until: dt.datetime, conn: Connection) -> int:
    _lock_in_order(conn, _of_tokens(conn.dialect.name, crms, tokens))
    return int(conn.execute(_renewal(conn.dialect.name, crms, tokens, until)).rowcount)


def _renewal(dialect: str, crms: list[str], tokens: list[str], until: dt.datetime) -> Any:
    rows = _of_tokens(dialect, crms, tokens)
    return update(crm_sync_state).where(*rows).values(lease_expires_at=until, next_attempt_at=until)


def _of_tokens(dialect: str, crms: list[str], tokens: list[str]) -> list[Any]:
    """The rows of `tokens`' leases, which all belong to `crms`.

    On SQLite the CRMs let it find the rows through `ix_crm_sync_state_queue` (crm, sync_status)
    instead of reading the whole table while it holds the write lock. PostgreSQL finds them by
    token (`ix_crm_sync_state_lease`); a (crm, Processing) range would also walk the entries the
    claims before left dead there, which is why that index exists.
    """
    where = [s.sync_status == SyncStatus.Processing.value, s.lease_token.in_(tokens)]
    if dialect == "sqlite":
        where.insert(0, s.crm.in_(crms))
    return where


def _lock_in_order(conn: Connection, where: list[Any]) -> None:
    """PostgreSQL: lock the rows `where` in the primary key's order (see the module docstring)."""
    if conn.dialect.name == "postgresql":
        conn.execute(lock_statement(crm_sync_state, where, [s.id]))


async def release(
    engine: AsyncEngine, crm: Crm, token: str, now: dt.datetime, timing: Timing
) -> int:
    """Hand back every row still held under `token`, unattempted and due now (shutdown)."""
    return await writer_process.write(engine, Transaction(_release_rows, crm, token, now, timing))


def _release_rows(crm: Crm, token: str, now: dt.datetime, timing: Timing, conn: Connection) -> int:
    where = [s.lease_token == token, s.sync_status == SyncStatus.Processing.value]
    _lock_in_order(conn, where)
    stmt = (
        update(crm_sync_state)
        .where(*where)
        .values(
            sync_status=SyncStatus.Queued.value,
            processing_status=ProcessingStatus.Queued.value,
            next_attempt_at=now,
            **NO_LEASE,
            updated_at=now,
        )
        .returning(s.id, s.contact_id, s.attempts)
    )
    rows = conn.execute(stmt).all()
    released = [
        RowUpdate(row.id, row.contact_id, Outcome.released, row.attempts, "worker stopped")
        for row in rows
    ]
    insert_events(conn, crm, released, {u.state_id for u in released}, now, timing)
    return len(rows)
