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
import functools
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
    String,
    Text,
    Uuid,
    bindparam,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import db, sqlutil
from crmsync.connectors.base import ContactPayload
from crmsync.enums import Crm, ProcessingStatus, SyncStatus
from crmsync.sqlutil import (
    ArrayRows,
    Compiled,
    DriverValues,
    JsonRows,
    RowWrite,
    chunks,
    uuid_from_hex,
)
from crmsync.sync.state import NO_LEASE, Claimed, Outcome, RowUpdate
from crmsync.tables import WAITING_STATUSES, contacts, crm_sync_state, sync_events

s = crm_sync_state.c
NOT_APPLIED = "[not applied: the row changed while this attempt was in flight] "
# Literal values, not bound parameters: only then can SQLite and PostgreSQL (generic plans of
# prepared statements) prove the claim matches the partial index `ix_crm_sync_state_due`.
# With parameters, both sort every due row to return the first hundred.
_WAITING = s.sync_status.in_([literal_column(f"'{status}'") for status in WAITING_STATUSES])
_LEASED = s.sync_status == literal_column(f"'{SyncStatus.Processing.value}'")
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


def _ts_param(name: str) -> Any:
    return bindparam(name, type_=crm_sync_state.c.next_attempt_at.type)


# The claim's statements are built once (with parameters), not per batch: building and keying a
# statement costs more Python than the claim's own row handling.
def _due(status: Any) -> Any:
    return (
        select(s.id)
        .where(s.crm == bindparam("claim_crm"), status, s.next_attempt_at <= _ts_param("now"))
        .order_by(s.next_attempt_at)
        .limit(bindparam("limit"))
    )


# Two kinds of due rows, each read through its own index in due order: leases that ran out (a
# worker died; `ix_crm_sync_state_queue`, rare) first, then rows waiting for their turn
# (`ix_crm_sync_state_due`, which holds nothing else).
_EXPIRED = _due(_LEASED)
_WAITING_DUE = _due(_WAITING)
_CLAIM_VALUES = {
    "sync_status": SyncStatus.Processing.value,
    "processing_status": ProcessingStatus.Processing.value,
    "lease_owner": bindparam("owner"),
    "lease_token": bindparam("token"),
    "lease_expires_at": _ts_param("until"),
    "next_attempt_at": _ts_param("until"),
    "last_attempt_at": _ts_param("now"),
    "updated_at": _ts_param("now"),
}
_STATE_COLUMNS = (s.id, s.attempts, s.external_id, s.synced_hash, s.synced_email)


def _pg_claim(due: Any) -> Any:
    # PostgreSQL, one statement: SKIP LOCKED lets concurrent workers on any host take disjoint
    # rows without waiting; MATERIALIZED computes the locked id list once, never again per row.
    locked = (
        due.with_for_update(skip_locked=True, key_share=True).cte("due").prefix_with("MATERIALIZED")
    )
    return (
        update(crm_sync_state)
        .where(s.id == locked.c.id, contacts.c.id == s.contact_id)
        .values(_CLAIM_VALUES)
        .returning(*_STATE_COLUMNS, *_PAYLOAD_COLUMNS)
    )


_PG_CLAIMS = (_pg_claim(_EXPIRED), _pg_claim(_WAITING_DUE))


# SQLite: BEGIN IMMEDIATE already made the transaction the only writer, so reading the due rows
# and then marking them cannot race with another worker.
def _sqlite_read(due: Any, as_json: bool) -> Compiled:
    rows = (
        select(*_STATE_COLUMNS, *_PAYLOAD_COLUMNS)
        .join(contacts, contacts.c.id == s.contact_id)
        .where(s.id.in_(due.scalar_subquery()))
    )
    if as_json:
        # The whole batch as one JSON array: one statement step. Fetching row by row steps once
        # per row, and each step releases the GIL and waits to take it back from a busy loop.
        inner = rows.subquery()
        rows = select(func.json_group_array(func.json_array(*inner.c)))
    return Compiled(rows, ("claim_crm", "now", "limit"))


_SQLITE_READS = {
    as_json: (_sqlite_read(_EXPIRED, as_json), _sqlite_read(_WAITING_DUE, as_json))
    for as_json in (True, False)
}
# Every claimed row gets the same values, so the ids alone travel, as one flat JSON array:
# `id IN (SELECT value FROM json_each(?))` instead of the join `RowWrite` writes for per-row
# values (measured, 100-row batches over 50,000 rows: 8.2 against 9.2 us a row, 4 of 4 pairs).
# Without the JSON functions, one parameter set per row.
_CLAIMED_IDS = func.json_each(bindparam("_ids")).table_valued("value")
_SQLITE_MARK_IDS = Compiled(
    update(crm_sync_state)
    .where(s.id.in_(select(_CLAIMED_IDS.c.value).scalar_subquery()))
    .values(_CLAIM_VALUES),
    ("_ids", "owner", "token", "until", "now"),
)
_SQLITE_MARK_EACH = Compiled(
    update(crm_sync_state).where(s.id == bindparam("_id")).values(_CLAIM_VALUES),
    ("_id", "owner", "token", "until", "now"),
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

    Due = `next_attempt_at <= now` and waiting (Selected, Queued), or Processing: a claim sets
    `next_attempt_at` to the lease's end, so rows of a worker that died come due again then.
    Those expired leases are taken first.
    """
    raw = await db.write(engine, _claim_work(crm, limit, owner, token, now, lease_until))
    return raw.claimed()


@dataclass(frozen=True, slots=True)
class _RawClaim:
    """A claim's rows as the transaction read them, turned into `Claimed` after it commits.

    On SQLite every write transaction runs on the one writer (a thread, or the worker's writer
    process): converting 100 rows there (UUIDs, dataclasses) would hold up the next transaction,
    and objects cost more to pickle than the plain rows, so the caller converts them.
    """

    rows: Sequence[Any]
    convert: Callable[[Any], Claimed]

    def claimed(self) -> list[Claimed]:
        return [self.convert(row) for row in self.rows]


def _claim_work(
    crm: Crm, limit: int, owner: str, token: str, now: dt.datetime, lease_until: dt.datetime
) -> Callable[[Connection], _RawClaim]:
    """The claim's transaction body (see `claim`)."""
    return functools.partial(_claim_rows, crm, limit, owner, token, now, lease_until)


# Transaction bodies are module functions bound with `functools.partial`, never closures: on
# SQLite `db.write` may run them in its writer process, which receives them pickled.
def _claim_rows(
    crm: Crm,
    limit: int,
    owner: str,
    token: str,
    now: dt.datetime,
    lease_until: dt.datetime,
    conn: Connection,
) -> _RawClaim:
    if conn.dialect.name == "postgresql":
        params = {
            "claim_crm": crm.value,
            "now": now,
            "owner": owner,
            "token": token,
            "until": lease_until,
        }
        typed: list[Any] = []
        for statement in _PG_CLAIMS:
            typed += conn.execute(statement, {**params, "limit": limit - len(typed)}).all()
            if len(typed) >= limit:
                break
        return _RawClaim(typed, _from_postgresql)
    # The driver's plain values (UUIDs as 32 hex digits), converted by `_from_sqlite` after
    # the commit: SQLAlchemy's row objects and per-column processors cost more than the SQL.
    raw: list[Any] = []
    values = DriverValues("sqlite")
    stamp = values.ts(now)
    as_json = sqlutil.sqlite_reads_json_rows()
    for read in _SQLITE_READS[as_json]:
        found = read.fetchall(conn, (crm.value, stamp, limit - len(raw)))
        raw += orjson.loads(found[0][0]) if as_json else found
        if len(raw) >= limit:
            break
    shared = (owner, token, values.ts(lease_until), stamp)
    if as_json and raw:
        _SQLITE_MARK_IDS.execute(conn, (orjson.dumps([row[0] for row in raw]).decode(), *shared))
    else:
        _SQLITE_MARK_EACH.executemany(conn, [(row[0], *shared) for row in raw])
    return _RawClaim(raw, _from_sqlite)


class _SharedIds:
    """The UUIDs of ids many contacts share (domain, page, scraping job), each built once.

    Scraped contacts come in groups: one domain, page and job stand behind many of them, so a
    claim of 100 rows holds few distinct such ids. Building a UUID from hex costs about 1.2 us
    (`uuid_from_hex`), a dict lookup a tenth of that. UUIDs are immutable, so sharing one
    object is safe; past `size` distinct ids the memo starts over.
    """

    def __init__(self, size: int = 8192) -> None:
        self._size = size
        self._ids: dict[str, uuid.UUID] = {}

    def __call__(self, value: str | None) -> uuid.UUID | None:
        if value is None:
            return None
        found = self._ids.get(value)
        if found is None:
            if len(self._ids) >= self._size:
                self._ids.clear()
            found = self._ids[value] = uuid_from_hex(value)
        return found


_shared_id = _SharedIds()


def _from_postgresql(row: Any) -> Claimed:
    return _claimed(*row)


def _from_sqlite(row: Any) -> Claimed:
    """A raw claim row from SQLite (UUIDs as 32 hex digits, booleans as 0/1) as a `Claimed`."""
    (state_id, attempts, external_id, synced_hash, synced_email, cid, email, name, phone,
     email_type, gmail, context, source_url, domain, page, job) = row  # fmt: skip
    payload = ContactPayload(
        uuid_from_hex(cid),
        email,
        name,
        phone,
        email_type,
        None if gmail is None else bool(gmail),
        context,
        source_url,
        _shared_id(domain),
        _shared_id(page),
        _shared_id(job),
        external_id,
        synced_email,
    )
    return Claimed(state_id, attempts, synced_hash, payload)


def _claimed(
    state_id: int,
    attempts: int,
    external_id: str | None,
    synced_hash: str | None,
    synced_email: str | None,
    contact_id: uuid.UUID,
    *fields: Any,
) -> Claimed:
    """A claimed row from its columns, in `_STATE_COLUMNS` + `_PAYLOAD_COLUMNS` order."""
    email, name, phone, email_type, has_gmail, context, source_url, domain, page, job = fields
    payload = ContactPayload(
        contact_id,
        email,
        name,
        phone,
        email_type,
        has_gmail,
        context,
        source_url,
        domain,
        page,
        job,
        external_id,
        synced_email,
    )
    return Claimed(state_id, attempts, synced_hash, payload)


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


def _guarded(values: Callable[[Values], dict[str, Any]]) -> RowWrite:
    """An UPDATE of each row of a batch, applied only while we still hold its lease."""

    def build(v: Values) -> Any:
        return (
            update(crm_sync_state)
            .where(
                s.id == v("_id"),
                s.lease_token == v("_token"),
                s.sync_status == SyncStatus.Processing.value,
            )
            .values(**values(v))
        )

    return RowWrite(_PER_ROW, _SHARED, build(bindparam), build(_ROWS), (_ARRAYS, build(_ARRAYS)))


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


_STATEMENTS: dict[Outcome, RowWrite] = {
    Outcome.ok: _guarded(
        lambda v: {
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
    ),
    Outcome.unchanged: _guarded(
        lambda v: {
            "sync_status": SyncStatus.Complete.value,
            "processing_status": ProcessingStatus.Complete.value,
            "processing_error": None,
            "attempts": 0,
            "next_attempt_at": None,
            **NO_LEASE,
            "updated_at": v("now"),
        }
    ),
    Outcome.retry: _guarded(_released),
    Outcome.error: _guarded(
        lambda v: {
            "sync_status": SyncStatus.Error.value,
            "processing_status": ProcessingStatus.Error.value,
            "processing_error": v("message"),
            "attempts": v("attempts"),
            "next_attempt_at": None,
            **NO_LEASE,
            "updated_at": v("now"),
        }
    ),
}
for _kind in (
    Outcome.rate_limited,
    Outcome.auth_failed,
    Outcome.misconfigured,
    Outcome.released,
    Outcome.unavailable,
):
    _STATEMENTS[_kind] = _STATEMENTS[Outcome.retry]

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


_INSERT_EVENTS = RowWrite(
    _EVENT_PER_ROW,
    _EVENT_SHARED,
    insert(sync_events).values({key: bindparam(key) for key in _EVENT_KEYS}),
    _insert_events_from(_EVENT_ROWS),
    (_EVENT_ARRAYS, _insert_events_from(_EVENT_ARRAYS)),
)


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
    if engine.dialect.name == "sqlite":
        try:
            return await db.write(engine, _optimistic(crm, token, updates, now, timing))
        except _LeaseLost:
            pass
    return await db.write(engine, _careful(crm, token, updates, now, timing))


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

    A busy SQLite sync pays per transaction: a hand-off to the writer thread, BEGIN IMMEDIATE,
    COMMIT. One lane's outcome write and its next claim share one instead (measured, 5
    alternating pairs of runs: 11,700 against 11,019 contacts/s median). Each stays what it was
    alone: the outcome is written first, and if it finds a lease lost, the two run apart the
    usual way. On PostgreSQL too (issue 24): one commit, one pool checkout and the ownership
    query less per batch; there the guarded UPDATE locks each row it changes until the commit,
    so when it changed every row, every row was still ours.
    """
    claim_work = _claim_work(
        then.crm, then.limit, then.owner, then.token, then.now, then.lease_until
    )
    if updates:
        both = functools.partial(
            _record_and_claim, _optimistic(crm, token, updates, now, timing), claim_work
        )
        try:
            recorded, raw = await db.write(engine, both)
            return recorded, raw.claimed()
        except _LeaseLost:
            # The optimistic write already failed: go to the careful one, not through it again.
            recorded = await db.write(engine, _careful(crm, token, updates, now, timing))
    else:
        recorded = await record(engine, crm, token, updates, now, timing)
    return recorded, (await db.write(engine, claim_work)).claimed()


def _record_and_claim(
    record_work: Callable[[Connection], Recorded],
    claim_work: Callable[[Connection], _RawClaim],
    conn: Connection,
) -> tuple[Recorded, _RawClaim]:
    return record_work(conn), claim_work(conn)


def _careful(
    crm: Crm, token: str, updates: Sequence[RowUpdate], now: dt.datetime, timing: Timing
) -> Callable[[Connection], Recorded]:
    return functools.partial(_record_rows, crm, token, list(updates), now, timing, False)


def _optimistic(
    crm: Crm, token: str, updates: Sequence[RowUpdate], now: dt.datetime, timing: Timing
) -> Callable[[Connection], Recorded]:
    return functools.partial(_record_rows, crm, token, list(updates), now, timing, True)


def _record_rows(
    crm: Crm,
    token: str,
    updates: list[RowUpdate],
    now: dt.datetime,
    timing: Timing,
    optimistic: bool,
    conn: Connection,
) -> Recorded:
    """Record `updates`: careful, asking which rows are still held first; or optimistic.

    Optimistic (SQLite): BEGIN IMMEDIATE means nothing else writes while this runs, so when
    every guarded update hit its row, every row was still ours. That is the usual case; it saves
    the ownership query. Otherwise it raises `_LeaseLost`, which rolls back, and the caller takes
    the careful path.
    """
    ids = [u.state_id for u in updates]
    owned = set(ids) if optimistic else _owned(conn, token, ids)
    recorded, changed = _apply(conn, crm, token, updates, owned, now, timing)
    if optimistic and changed != len(ids):
        raise _LeaseLost
    return recorded


class _LeaseLost(Exception):
    """Some row of a batch is no longer held: record it the careful way."""


def _apply(
    conn: Connection,
    crm: Crm,
    token: str,
    updates: Sequence[RowUpdate],
    owned: set[int],
    now: dt.datetime,
    timing: Timing,
) -> tuple[Recorded, int]:
    """Write the outcomes of the `owned` rows (each guarded by the lease) and every history row.

    Returns what was recorded and how many rows the guarded updates changed (reliable on SQLite).
    """
    values = DriverValues(conn.dialect.name)
    groups: dict[RowWrite, list[tuple[Any, ...]]] = {}
    for u in updates:
        if u.state_id in owned:
            groups.setdefault(_STATEMENTS[u.outcome], []).append(
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
    changed = sum(statement.run(conn, rows, shared) for statement, rows in groups.items())
    insert_events(conn, crm, updates, owned, now, timing)
    lost = [u.state_id for u in updates if u.state_id not in owned]
    return Recorded(len(updates) - len(lost), lost), changed


def _owned(conn: Connection, token: str, ids: list[int]) -> set[int]:
    """The rows of `ids` we still hold; on PostgreSQL locked until commit, so it stays true."""
    found: set[int] = set()
    for part in chunks(ids, _CHUNK):
        query = select(s.id).where(
            s.id.in_(part), s.lease_token == token, s.sync_status == SyncStatus.Processing.value
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        found.update(conn.execute(query).scalars())
    return found


def insert_events(
    conn: Connection,
    crm: Crm,
    updates: Iterable[RowUpdate],
    applied: set[int],
    now: dt.datetime,
    timing: Timing,
) -> None:
    values = DriverValues(conn.dialect.name)
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
    _INSERT_EVENTS.run(conn, rows, shared)


async def renew(engine: AsyncEngine, tokens: Sequence[str], until: dt.datetime) -> int:
    """Extend the leases of batches still in flight (slow vendors, long imports)."""
    if not tokens:
        return 0
    return await db.write(engine, functools.partial(_renew_rows, list(tokens), until))


def _renew_rows(tokens: list[str], until: dt.datetime, conn: Connection) -> int:
    stmt = (
        update(crm_sync_state)
        .where(s.lease_token.in_(tokens), s.sync_status == SyncStatus.Processing.value)
        .values(lease_expires_at=until, next_attempt_at=until)
    )
    return int(conn.execute(stmt).rowcount)


async def release_lease(
    engine: AsyncEngine, crm: Crm, token: str, now: dt.datetime, timing: Timing
) -> int:
    """Hand back every row still held under `token`, unattempted and due now (shutdown)."""
    return await db.write(engine, functools.partial(_release_rows, crm, token, now, timing))


def _release_rows(crm: Crm, token: str, now: dt.datetime, timing: Timing, conn: Connection) -> int:
    stmt = (
        update(crm_sync_state)
        .where(s.lease_token == token, s.sync_status == SyncStatus.Processing.value)
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
