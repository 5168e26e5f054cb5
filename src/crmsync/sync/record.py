"""Record: write each row's outcome behind its lease (fencing), and its history, at once.

Fencing: every outcome write carries `lease_token = :token AND sync_status = 'Processing'` in
its WHERE clause. A worker whose lease expired (and whose rows another worker reclaimed), or
whose row a person changed meanwhile (unselect, edit, re-select), writes nothing; its result is
still kept in the history, marked as not applied, and the caller counts it (`Recorded.lost`).

Careful path (both dialects): ask which rows are still held (on PostgreSQL `FOR UPDATE`, in
the primary key's order, so it stays true until commit), write the outcomes of those, write
every history row (a refused one's only while its contact exists: a contact deleted while its
push was in flight takes its state rows and history with it).
Optimistic path (SQLite only, `SOLE_WRITER`: `BEGIN IMMEDIATE` makes the transaction the only
writer): when every guarded update hit its row, every row was still ours, which saves the
ownership query; otherwise it rolls back and the careful path runs. PostgreSQL always takes the
careful path: its ownership read locks the batch's rows in the primary key's order, the order
every multi-row write of a person's takes (`sqlutil.lock_in_order`), so the two queue instead
of deadlocking. The guarded UPDATEs alone would lock in their plan's order (a generic plan
reads the batch through the lease index, in the rows' physical order) and one outcome kind
after another.

Each dialect writes a batch's rows in one statement per outcome kind (`sqlutil.JsonWrite` on
SQLite, `sqlutil.ArrayWrite` on PostgreSQL), chosen once per call through `DIALECTS`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
    String,
    Text,
    func,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import writer_process
from crmsync.db import Transaction
from crmsync.enums import Crm, ProcessingStatus, SyncStatus
from crmsync.sqlutil import ArrayRows, ArrayWrite, DriverValues, JsonRows, JsonWrite
from crmsync.sync import lease
from crmsync.sync.claim import RawClaim, claim_work
from crmsync.sync.events import Timing, insert_events
from crmsync.sync.refused import after_refused
from crmsync.sync.state import NO_LEASE, Claimed, Outcome, RowUpdate
from crmsync.tables import crm_sync_state

__all__ = [
    "DIALECTS",
    "NextClaim",
    "PostgreSQL",
    "Recorded",
    "SQLite",
    "record",
    "record_then_claim",
]

s = crm_sync_state.c

# An outcome write's values: these differ per row, the others are shared by the batch.
_PER_ROW = (
    "_id",
    "message",
    "attempts",
    "next_attempt_at",
    "external_id",
    "synced_hash",
    "synced_email",
)
_SHARED = ("_token", "now")
_ROWS = JsonRows(_PER_ROW)
_ARRAYS = ArrayRows(
    (
        ("_id", BigInteger()),
        ("message", Text()),
        ("attempts", Integer()),
        ("next_attempt_at", DateTime(timezone=True)),
        ("external_id", String()),
        ("synced_hash", String()),
        ("synced_email", String()),
    )
)
Values = Callable[[str], Any]


def _guarded(values: Callable[[Values], dict[str, Any]], v: Values) -> Any:
    """An UPDATE of each row of a batch, applied only while we still hold its lease."""
    return (
        update(crm_sync_state)
        .where(
            s.id == v("_id"),
            s.lease_token == v("_token"),
            s.sync_status == SyncStatus.Processing.value,
        )
        .values(**values(v))
    )


def _complete(v: Values) -> dict[str, Any]:
    return {
        "sync_status": SyncStatus.Complete.value,
        "processing_status": ProcessingStatus.Complete.value,
        "processing_error": None,
        "external_id": func.coalesce(v("external_id"), s.external_id),
        "attempts": 0,
        "synced_hash": v("synced_hash"),
        "synced_email": v("synced_email"),
        "synced_at": v("now"),
        "next_attempt_at": None,
        **NO_LEASE,
        "updated_at": v("now"),
    }


def _unchanged(v: Values) -> dict[str, Any]:
    return {
        "sync_status": SyncStatus.Complete.value,
        "processing_status": ProcessingStatus.Complete.value,
        "processing_error": None,
        "attempts": 0,
        "next_attempt_at": None,
        **NO_LEASE,
        "updated_at": v("now"),
    }


def _released(v: Values) -> dict[str, Any]:
    return {
        "sync_status": SyncStatus.Queued.value,
        "processing_status": ProcessingStatus.Queued.value,
        "processing_error": v("message"),
        "attempts": v("attempts"),
        "next_attempt_at": v("next_attempt_at"),
        **NO_LEASE,
        "updated_at": v("now"),
    }


def _error(v: Values) -> dict[str, Any]:
    return {
        "sync_status": SyncStatus.Error.value,
        "processing_status": ProcessingStatus.Error.value,
        "processing_error": v("message"),
        "attempts": v("attempts"),
        "next_attempt_at": None,
        **NO_LEASE,
        "updated_at": v("now"),
    }


# Every outcome kind's row values; the kinds that hand a row back share `_released`.
_OUTCOME_VALUES: dict[Outcome, Callable[[Values], dict[str, Any]]] = {
    Outcome.ok: _complete,
    Outcome.unchanged: _unchanged,
    Outcome.retry: _released,
    Outcome.error: _error,
}
for _kind in (
    Outcome.rate_limited,
    Outcome.auth_failed,
    Outcome.misconfigured,
    Outcome.released,
    Outcome.unavailable,
):
    _OUTCOME_VALUES[_kind] = _released


def _json_outcomes() -> dict[Outcome, JsonWrite]:
    # One statement per distinct row-values function: kinds sharing one share the statement.
    built = {f: JsonWrite(_guarded(f, _ROWS), _SHARED) for f in set(_OUTCOME_VALUES.values())}
    return {kind: built[f] for kind, f in _OUTCOME_VALUES.items()}


def _array_outcomes() -> dict[Outcome, ArrayWrite]:
    built = {
        f: ArrayWrite(_ARRAYS, _guarded(f, _ARRAYS), _SHARED) for f in set(_OUTCOME_VALUES.values())
    }
    return {kind: built[f] for kind, f in _OUTCOME_VALUES.items()}


class PostgreSQL:
    """Rows as one array per column (`unnest`); ownership read `FOR UPDATE`."""

    VALUES = DriverValues("postgresql")
    # Other workers write too: only the careful path knows which rows are ours.
    SOLE_WRITER = False
    OUTCOMES: ClassVar[dict[Outcome, JsonWrite | ArrayWrite]] = dict(_array_outcomes())

    owned = staticmethod(lease.held_locked)


class SQLite:
    """Rows as one JSON array (`json_each`); `BEGIN IMMEDIATE` already excludes other writers."""

    VALUES = DriverValues("sqlite")
    SOLE_WRITER = True
    OUTCOMES: ClassVar[dict[Outcome, JsonWrite | ArrayWrite]] = dict(_json_outcomes())

    owned = staticmethod(lease.held)


Dialect = type[PostgreSQL] | type[SQLite]
DIALECTS: dict[str, Dialect] = {"postgresql": PostgreSQL, "sqlite": SQLite}


@dataclass(frozen=True, slots=True)
class Recorded:
    applied: int
    # Rows whose lease we had lost: their outcome went to the history only.
    lost: list[int]


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
    name = engine.dialect.name
    if DIALECTS[name].SOLE_WRITER:
        try:
            return await writer_process.write(
                engine, _record_work(name, crm, token, updates, now, timing, True)
            )
        except _LeaseLost:
            pass
    return await writer_process.write(
        engine, _record_work(name, crm, token, updates, now, timing, False)
    )


@dataclass(frozen=True, slots=True)
class NextClaim:
    """What `record_then_claim` claims after recording: `claim`'s arguments but the engine."""

    crm: Crm
    limit: int
    owner: str
    token: str
    now: dt.datetime
    lease_until: dt.datetime


async def record_then_claim(
    engine: AsyncEngine,
    crm: Crm,
    token: str,
    updates: Sequence[RowUpdate],
    now: dt.datetime,
    timing: Timing,
    then: NextClaim,
) -> tuple[Recorded, list[Claimed]]:
    """`record`, then `claim` the next batch, both in one transaction.

    A busy sync pays per transaction: on SQLite a hand-off to the writer, BEGIN IMMEDIATE,
    COMMIT; on PostgreSQL a pool checkout, a BEGIN and a commit. One lane's outcome write
    and its next claim share one instead. Each stays what it was alone: the outcome is written
    first, as `record` writes it (on SQLite the optimistic way; if that finds a lease lost, the
    two run apart, the outcome the careful way).
    """
    name = engine.dialect.name
    claim = claim_work(
        name, then.crm, then.limit, then.owner, then.token, then.now, then.lease_until
    )
    if updates:
        first = _record_work(name, crm, token, updates, now, timing, DIALECTS[name].SOLE_WRITER)
        try:
            recorded, raw = await writer_process.write(
                engine, Transaction(_record_and_claim, first, claim)
            )
            return recorded, raw.claimed()
        except _LeaseLost:
            # The optimistic write already failed: go to the careful one, not through it again.
            careful = _record_work(name, crm, token, updates, now, timing, False)
            recorded = await writer_process.write(engine, careful)
    else:
        recorded = await record(engine, crm, token, updates, now, timing)
    return recorded, (await writer_process.write(engine, claim)).claimed()


def _record_and_claim(
    record_work: Transaction[Recorded], claim: Transaction[RawClaim], conn: Connection
) -> tuple[Recorded, RawClaim]:
    return record_work(conn), claim(conn)


def _record_work(
    dialect: str,
    crm: Crm,
    token: str,
    updates: Sequence[RowUpdate],
    now: dt.datetime,
    timing: Timing,
    optimistic: bool,
) -> Transaction[Recorded]:
    return Transaction(_record_rows, dialect, crm, token, list(updates), now, timing, optimistic)


class _LeaseLost(Exception):
    """Some row of a batch is no longer held: record it the careful way."""


def _record_rows(
    dialect: str,
    crm: Crm,
    token: str,
    updates: list[RowUpdate],
    now: dt.datetime,
    timing: Timing,
    optimistic: bool,
    conn: Connection,
) -> Recorded:
    """Record `updates`: careful, asking which rows are still held first; or optimistic (see the
    module docstring), raising `_LeaseLost` (which rolls back) when some row was not ours."""
    sql = DIALECTS[dialect]
    ids = [u.state_id for u in updates]
    owned = set(ids) if optimistic else sql.owned(conn, token, ids)
    changed = _write_outcomes(sql, conn, token, updates, owned, now)
    if optimistic and changed != len(ids):
        raise _LeaseLost
    # The history only after the optimistic check: a row that was not ours may be gone with its
    # contact, and its history, written as applied, would name a contact that no longer exists.
    # The careful path knows which rows are ours, and leaves such history out
    # (`events.insert_events`).
    insert_events(conn, crm, updates, owned, now, timing)
    lost = [u for u in updates if u.state_id not in owned]
    if lost:
        after_refused(conn, lost, now)
    return Recorded(len(updates) - len(lost), [u.state_id for u in lost])


def _write_outcomes(
    sql: Dialect,
    conn: Connection,
    token: str,
    updates: Sequence[RowUpdate],
    owned: set[int],
    now: dt.datetime,
) -> int:
    """Write the outcomes of the `owned` rows, each guarded by the lease; how many rows the
    guarded updates changed (reliable on SQLite)."""
    values = sql.VALUES
    groups: dict[JsonWrite | ArrayWrite, list[tuple[Any, ...]]] = {}
    # In the primary key's order, as the writes of a person's take their rows (fewer deadlocks).
    for u in sorted(updates, key=attrgetter("state_id")):
        if u.state_id in owned:
            groups.setdefault(sql.OUTCOMES[u.outcome], []).append(
                (
                    u.state_id,
                    u.message,
                    u.attempts,
                    values.ts(u.next_attempt_at),
                    u.external_id,
                    u.synced_hash,
                    u.synced_email,
                )
            )
    shared = (token, values.ts(now))
    return sum(statement.run(conn, rows, shared) for statement, rows in groups.items())
