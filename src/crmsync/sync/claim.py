"""Claim: take due rows of one CRM under a new lease, in one short transaction.

Due = `next_attempt_at <= now` and waiting (Selected, Queued), or Processing: a claim sets
`next_attempt_at` to the lease's end, so the rows of a worker that died come due again exactly
when its lease runs out (`lease.py`). Those expired leases are taken first, then waiting rows.

Each dialect has its own `claim_rows`, with the same signature, chosen once per call by
`claim_work` (`DIALECTS`): PostgreSQL in one statement (`SKIP LOCKED`), SQLite in two inside
`BEGIN IMMEDIATE` (read the due rows, mark them by id).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import ARRAY, any_, bindparam, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import writer_process
from crmsync.connectors.base import ContactPayload
from crmsync.db import Transaction
from crmsync.enums import Crm, ProcessingStatus, SyncStatus
from crmsync.sqlutil import Compiled, DriverValues, uuid_from_hex
from crmsync.sync.state import Claimed
from crmsync.tables import IN_FLIGHT, IS_WAITING, contacts, crm_sync_state

__all__ = ["DIALECTS", "PostgreSQL", "RawClaim", "SQLite", "claim", "claim_work"]

s = crm_sync_state.c

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
# worker died; rare) first, then rows waiting for their turn (`ix_crm_sync_state_due`, which
# holds nothing else). The statuses are the indexes' predicates as written in `tables`: with
# bound parameters, SQLite and PostgreSQL's generic plans sort every due row to return the
# first hundred. Leases are read through `ix_crm_sync_state_expiry` on PostgreSQL (the rows
# in flight only), `ix_crm_sync_state_queue` on SQLite.
_EXPIRED = _due(IN_FLIGHT)
_WAITING_DUE = _due(IS_WAITING)
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


@dataclass(frozen=True, slots=True)
class RawClaim:
    """A claim's rows as the transaction read them, turned into `Claimed` after it commits.

    On SQLite every write transaction runs on the one writer (its process, or a thread):
    converting 100 rows there (UUIDs, dataclasses) would hold up the next transaction, and
    objects cost more to pickle than the plain rows, so the caller converts them.
    """

    rows: Sequence[Any]
    convert: Callable[[Any], Claimed]

    def claimed(self) -> list[Claimed]:
        return [self.convert(row) for row in self.rows]


async def claim(
    engine: AsyncEngine,
    crm: Crm,
    limit: int,
    owner: str,
    token: str,
    now: dt.datetime,
    lease_until: dt.datetime,
) -> list[Claimed]:
    """Take up to `limit` due rows of `crm` and mark them Processing under `token`."""
    work = claim_work(engine.dialect.name, crm, limit, owner, token, now, lease_until)
    return (await writer_process.write(engine, work)).claimed()


def claim_work(
    dialect: str,
    crm: Crm,
    limit: int,
    owner: str,
    token: str,
    now: dt.datetime,
    lease_until: dt.datetime,
) -> Transaction[RawClaim]:
    """The claim's transaction body on `dialect` (see `claim`)."""
    return Transaction(DIALECTS[dialect].claim_rows, crm, limit, owner, token, now, lease_until)


def _pg_claim(due: Any) -> Any:
    # PostgreSQL: SKIP LOCKED lets concurrent workers on any host take disjoint rows without
    # waiting; MATERIALIZED computes the locked id list once, never again per row.
    locked = (
        due.with_for_update(skip_locked=True, key_share=True).cte("due").prefix_with("MATERIALIZED")
    )
    return (
        update(crm_sync_state)
        .where(s.id == locked.c.id)
        .values(_CLAIM_VALUES)
        .returning(*_STATE_COLUMNS, s.contact_id)
    )


_PG_CLAIMS = (_pg_claim(_EXPIRED), _pg_claim(_WAITING_DUE))
# The claimed rows' contacts, read by a statement of their own AFTER the rows are marked: in READ
# COMMITTED it sees every edit committed before it began. Joined into the marking UPDATE, they
# were read as of that statement's start, and an edit committed while it ran (which found the
# row still waiting, so queued nothing) was pushed stale and the row marked Complete. An edit
# that commits later locks the row first (`selection.requeue_after_edit`), so it waits for this
# claim and then queues the row again.
_PG_PAYLOADS = select(*_PAYLOAD_COLUMNS).where(
    contacts.c.id == any_(bindparam("contact_ids", type_=ARRAY(contacts.c.id.type)))
)


# SQLite: BEGIN IMMEDIATE already made the transaction the only writer, so reading the due rows
# and then marking them cannot race with another worker.
def _sqlite_read(due: Any) -> Compiled:
    rows = (
        select(*_STATE_COLUMNS, *_PAYLOAD_COLUMNS)
        .join(contacts, contacts.c.id == s.contact_id)
        .where(s.id.in_(due.scalar_subquery()))
    )
    # The whole batch as one JSON array: one statement step. Fetching row by row steps once
    # per row, and each step releases the GIL and waits to take it back from a busy loop.
    inner = rows.subquery()
    rows = select(func.json_group_array(func.json_array(*inner.c)))
    return Compiled(rows, ("claim_crm", "now", "limit"))


_SQLITE_READS = (_sqlite_read(_EXPIRED), _sqlite_read(_WAITING_DUE))
# Every claimed row gets the same values, so the ids alone travel, as one flat JSON array:
# `id IN (SELECT value FROM json_each(?))` instead of the join a per-row write needs
# (bench/README.md, "Claim mark").
_CLAIMED_IDS = func.json_each(bindparam("_ids")).table_valued("value")
_SQLITE_MARK_IDS = Compiled(
    update(crm_sync_state)
    .where(s.id.in_(select(_CLAIMED_IDS.c.value).scalar_subquery()))
    .values(_CLAIM_VALUES),
    ("_ids", "owner", "token", "until", "now"),
)


# Transaction bodies are module-level functions (here: the dialect classes' static methods),
# bound as a `Transaction`, never closures: on SQLite the writer process receives them pickled.
class PostgreSQL:
    @staticmethod
    def claim_rows(
        crm: Crm,
        limit: int,
        owner: str,
        token: str,
        now: dt.datetime,
        lease_until: dt.datetime,
        conn: Connection,
    ) -> RawClaim:
        params = {
            "claim_crm": crm.value,
            "now": now,
            "owner": owner,
            "token": token,
            "until": lease_until,
        }
        marked: list[Any] = []
        for statement in _PG_CLAIMS:
            marked += conn.execute(statement, {**params, "limit": limit - len(marked)}).all()
            if len(marked) >= limit:
                break
        if not marked:
            return RawClaim([], from_postgresql)
        ids = [row[-1] for row in marked]
        payloads = {row[0]: row for row in conn.execute(_PG_PAYLOADS, {"contact_ids": ids})}
        # A contact is deleted with its state rows (the row lock makes its delete wait for us).
        typed = [(*row[:-1], *payloads[row[-1]]) for row in marked if row[-1] in payloads]
        return RawClaim(typed, from_postgresql)


class SQLite:
    @staticmethod
    def claim_rows(
        crm: Crm,
        limit: int,
        owner: str,
        token: str,
        now: dt.datetime,
        lease_until: dt.datetime,
        conn: Connection,
    ) -> RawClaim:
        # The driver's plain values (UUIDs as 32 hex digits), converted by `from_sqlite` after
        # the commit: SQLAlchemy's row objects and per-column processors cost more than the SQL.
        raw: list[Any] = []
        values = DriverValues("sqlite")
        stamp = values.ts(now)
        for read in _SQLITE_READS:
            found = read.fetchall(conn, (crm.value, stamp, limit - len(raw)))
            raw += orjson.loads(found[0][0])
            if len(raw) >= limit:
                break
        if raw:
            ids = orjson.dumps([row[0] for row in raw]).decode()
            _SQLITE_MARK_IDS.execute(conn, (ids, owner, token, values.ts(lease_until), stamp))
        return RawClaim(raw, from_sqlite)


DIALECTS: dict[str, type[PostgreSQL] | type[SQLite]] = {
    "postgresql": PostgreSQL,
    "sqlite": SQLite,
}


class SharedIds:
    """The UUIDs of ids many contacts share (domain, page, scraping job), each built once.

    Scraped contacts come in groups: one domain, page and job stand behind many of them, so a
    claim of 100 rows holds few distinct such ids, and a dict lookup costs a fraction of
    building a UUID from hex (`uuid_from_hex`). UUIDs are immutable, so sharing one object is
    safe; past `size` distinct ids the memo starts over.
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


_shared_id = SharedIds()


def from_postgresql(row: Any) -> Claimed:
    return claimed(*row)


def from_sqlite(row: Any) -> Claimed:
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


def claimed(
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
