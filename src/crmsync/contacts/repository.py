"""All SQL on the `contacts` table (and the reads of sync state that contact responses need)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    RowMapping,
    Text,
    and_,
    any_,
    bindparam,
    delete,
    exists,
    func,
    literal_column,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal, _TraverseInternalsType

from crmsync import counts
from crmsync.contacts.schemas import ContactFilters
from crmsync.enums import Crm, CurationStatus, ProcessingStatus, SyncStatus
from crmsync.sqlutil import ArrayRows, chunks, lock_in_order, upsert_insert
from crmsync.tables import contact_change_images, contacts, crm_sync_state

# SQLite allows 32,766 bound parameters per statement and asyncpg 32,767.
_MAX_PARAMS = 30_000


def filter_conditions(filters: ContactFilters) -> list[ColumnElement[bool]]:
    """The WHERE terms for the list filters (ANDed by the caller)."""
    c = contacts.c
    conds: list[ColumnElement[bool]] = []
    if filters.contact_curation_status is not None:
        conds.append(c.contact_curation_status == filters.contact_curation_status.value)
    if filters.contact_processing_status is not None:
        conds.append(c.contact_processing_status == filters.contact_processing_status.value)
    if filters.email_type is not None:
        conds.append(c.email_type == filters.email_type.value)
    if filters.domain_id is not None:
        conds.append(c.domain_id == filters.domain_id)
    if filters.page_id is not None:
        conds.append(c.page_id == filters.page_id)
    conds += substring_conditions(filters, c.email, c.name)
    if filters.has_gmail is not None:
        conds.append(c.has_gmail.is_(filters.has_gmail))
    for crm in Crm:
        status = getattr(filters, f"{crm.value}_sync_status")
        if status is not None:
            conds.append(crm_status_condition(crm, status))
    return conds


def substring_conditions(
    filters: ContactFilters, email: ColumnElement[Any], name: ColumnElement[Any]
) -> list[ColumnElement[bool]]:
    """The email_contains, name_contains and search terms, on these columns (contacts' or the
    images')."""
    conds: list[ColumnElement[bool]] = []
    if filters.email_contains is not None:
        conds.append(_Contains(email, filters.email_contains))
    if filters.name_contains is not None:
        conds.append(_Contains(name, filters.name_contains))
    if filters.search is not None:
        conds.append(or_(_Contains(email, filters.search), _Contains(name, filters.search)))
    return conds


class _Contains(ColumnElement[bool]):
    """`column` contains `value`, ignoring case: `icontains`, except on SQLite (below)."""

    inherit_cache = True
    type = Boolean()
    _is_implicitly_boolean = True  # a condition as it is, not `... = 1`
    _traverse_internals: _TraverseInternalsType = [  # noqa: RUF012 (SQLAlchemy's own shape)
        ("folded", InternalTraversal.dp_clauseelement),
        ("plain", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, column: ColumnElement[Any], value: str) -> None:
        self.folded = column.icontains(value, autoescape=True)
        self.plain = column.contains(value, autoescape=True)


@compiles(_Contains)
def _contains_default(element: _Contains, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.folded, **kw)


@compiles(_Contains, "sqlite")
def _contains_sqlite(element: _Contains, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite's LIKE already ignores case, for ASCII letters only, and its lower() folds ASCII
    # letters only, so `lower(x) LIKE lower(y)` matches exactly what `x LIKE y` does, at two
    # function calls per row more: a third of a substring scan's time.
    return compiler.process(element.plain, **kw)


def crm_status_condition(crm: Crm, status: SyncStatus) -> ColumnElement[bool]:
    """A contact's status for a CRM; no state row means it was never selected there: New."""
    s = crm_sync_state.c
    if status is SyncStatus.New:
        return ~exists().where(
            s.contact_id == contacts.c.id, s.crm == crm.value, s.sync_status != SyncStatus.New
        )
    return exists().where(
        s.contact_id == contacts.c.id, s.crm == crm.value, s.sync_status == status.value
    )


def where(conds: Sequence[ColumnElement[bool]]) -> ColumnElement[bool]:
    return and_(true(), *conds)


def by_ids(ids: Sequence[uuid.UUID]) -> ColumnElement[bool]:
    return contacts.c.id.in_(ids)


async def range_ends(conn: AsyncConnection, size: int) -> list[uuid.UUID | None]:
    """The ends of consecutive ranges of `size` contacts in id order (the primary key), the last
    one open (None): a chunked action's ranges are `(None, e1]`, `(e1, e2]`, ..., `(ek, None)`
    (see `in_range`). Each end is one OFFSET step along the primary key's index, which both
    databases walk without reading rows: cheaper than numbering every id in one statement."""
    ends: list[uuid.UUID | None] = []
    end: uuid.UUID | None = None
    while True:
        stmt = select(contacts.c.id).order_by(contacts.c.id).offset(size - 1).limit(1)
        if end is not None:
            stmt = stmt.where(contacts.c.id > end)
        end = (await conn.execute(stmt)).scalar_one_or_none()
        ends.append(end)
        if end is None:
            return ends


def in_range(
    conn: AsyncConnection,
    where: ColumnElement[bool],
    after: uuid.UUID | None,
    end: uuid.UUID | None,
) -> ColumnElement[bool]:
    """`where`, for the contacts with `after < id <= end` only (an open side when None).

    On SQLite the filter is wrapped in `likelihood()`, which leaves its value alone but keeps
    the planner off the filter's own index: without table statistics (crmsync never runs
    ANALYZE) SQLite reads an equality filter's index whole for every range instead of the
    range of the primary key (measured, ranges of 5,000: a 100,000-contact select took 3.5 s
    instead of 2.4).
    """
    conds = []
    if after is not None:
        conds.append(contacts.c.id > after)
    if end is not None:
        conds.append(contacts.c.id <= end)
    if conn.dialect.name == "sqlite":
        where = func.likelihood(where, literal_column("0.5"), type_=Boolean)
    return and_(where, *conds)


async def insert(conn: AsyncConnection, values: dict[str, Any]) -> RowMapping:
    result = await conn.execute(contacts.insert().values(**values).returning(*contacts.c))
    return result.mappings().one()


async def get(conn: AsyncConnection, contact_id: uuid.UUID) -> RowMapping | None:
    result = await conn.execute(select(contacts).where(contacts.c.id == contact_id))
    return result.mappings().one_or_none()


async def find_by_email(conn: AsyncConnection, email: str) -> RowMapping | None:
    result = await conn.execute(
        select(contacts).where(func.lower(contacts.c.email) == email.lower())
    )
    return result.mappings().one_or_none()


async def update_one(
    conn: AsyncConnection, contact_id: uuid.UUID, values: dict[str, Any]
) -> RowMapping | None:
    result = await conn.execute(
        update(contacts).where(contacts.c.id == contact_id).values(**values).returning(*contacts.c)
    )
    return result.mappings().one_or_none()


async def delete_one(conn: AsyncConnection, contact_id: uuid.UUID) -> bool:
    result = await conn.execute(delete(contacts).where(contacts.c.id == contact_id))
    return result.rowcount > 0


Cursor = tuple[dt.datetime, uuid.UUID]


async def list_page(
    conn: AsyncConnection,
    conds: Sequence[ColumnElement[bool]],
    limit: int,
    offset: int,
    after: Cursor | None = None,
) -> Sequence[RowMapping]:
    stmt = (
        select(contacts)
        .where(*conds)
        .order_by(contacts.c.created_at, contacts.c.id)
        .limit(limit)
        .offset(offset)
    )
    if after is not None:
        stmt = stmt.where(_after(contacts.c.created_at, contacts.c.id, after))
    return (await conn.execute(stmt)).mappings().all()


async def page_after(
    conn: AsyncConnection,
    conds: Sequence[ColumnElement[bool]],
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> Sequence[RowMapping]:
    """The next `limit` matching contacts in list order after the (created_at, id) key `after`.

    Keyset paging for exports: each page is one range read of `ix_contacts_created_at_id`,
    however deep into the table, where an OFFSET would walk every row before it.
    """
    key = tuple_(contacts.c.created_at, contacts.c.id)
    stmt = select(contacts).where(*conds)
    if after is not None:
        # A plain tuple is bound with the columns' own types (UTCDateTime on SQLite).
        stmt = stmt.where(key > after)
    stmt = stmt.order_by(contacts.c.created_at, contacts.c.id).limit(limit)
    return (await conn.execute(stmt)).mappings().all()


def _after(
    created_at: ColumnElement[Any], contact_id: ColumnElement[Any], cursor: Cursor
) -> ColumnElement[bool]:
    """Contacts after `cursor` in list order (created_at, id), read from the same index."""
    at, last = cursor
    return or_(created_at > at, and_(created_at == at, contact_id > last))


async def count(conn: AsyncConnection, conds: Sequence[ColumnElement[bool]]) -> int:
    stmt = select(func.count()).select_from(contacts).where(*conds)
    return int((await conn.execute(stmt)).scalar_one())


async def count_filtered(
    conn: AsyncConnection, filters: ContactFilters, kept: counts.ContactCounts | None = None
) -> int:
    """The number of contacts matching `filters` (the list's X-Total-Count).

    A filter on one CRM's status alone is the common case (the dashboard's "Selected for Brevo"),
    and counting it as contacts WHERE EXISTS (...) joins every matching state row back to its
    contact: ~300 ms at 400,000 matches among 1M contacts on PostgreSQL. The state table answers
    it alone, from the (crm, sync_status) index: each row has exactly one contact (foreign key,
    unique per CRM), and New is everything else. With no filter, or only filters on the columns
    `counts` groups by (email type, Gmail, curation and processing status), it is a contacts
    count. Both come from `counts`, which on PostgreSQL sums trigger-kept deltas instead.
    A substring filter on the contacts' own columns is a scan (280 ms for "gmail" at a million
    contacts): `kept` keeps its count, and brings it up to date from the emails and names
    written since when the filter is on those alone.
    """
    single = single_crm_status(filters)
    if single is not None:
        return await counts.with_status(conn, *single)
    only = filters.model_dump(mode="json", exclude_none=True)
    if set(only) <= set(counts.GROUPED):
        return await counts.contacts_where(conn, only)
    conds = filter_conditions(filters)
    if kept is not None and set(only) & _SCANNED and not set(only) & _STATE_FILTERS:
        images = contact_change_images.c
        image_conds = substring_conditions(filters, images.email, images.name)
        key = json.dumps(only, sort_keys=True)
        return await kept.count(conn, key, conds, image_conds if set(only) <= _SCANNED else None)
    return await count(conn, conds)


def counted_cheaply(filters: ContactFilters) -> bool:
    """Whether `count_filtered` answers from kept totals (or a kept substring count): one CRM
    status alone, only the columns `counts` groups by, or only substring filters."""
    only = set(filters.model_dump(exclude_none=True))
    if single_crm_status(filters) is not None:
        return True
    return only <= set(counts.GROUPED) or only <= _SCANNED


async def count_bounded(
    conn: AsyncConnection, filters: ContactFilters, kept: counts.ContactCounts | None, cap: int
) -> tuple[int, bool]:
    """The number of contacts matching `filters` and whether it is exact: exact when cheap to
    know (`counted_cheaply`) or at most `cap`; else `cap`, meaning "more than `cap`".

    Other combinations (a CRM status with the email type, say) are counted by visiting every
    match: 500 ms for 95,000 of a million contacts on PostgreSQL. A page must not wait for that;
    counting only up to `cap` stops early.
    """
    if counted_cheaply(filters):
        return await count_filtered(conn, filters, kept), True
    matching = select(contacts.c.id).where(*filter_conditions(filters)).limit(cap + 1).subquery()
    found = int((await conn.execute(select(func.count()).select_from(matching))).scalar_one())
    return (found, True) if found <= cap else (cap, False)


# Filters whose count scans the contacts, and those that read sync state (which changes without
# the contacts' version changing, so their counts are never kept).
_SCANNED = {"email_contains", "name_contains", "search"}
_STATE_FILTERS = {f"{crm.value}_sync_status" for crm in Crm}


def single_crm_status(filters: ContactFilters) -> tuple[Crm, SyncStatus] | None:
    """The (CRM, status) when that is the only filter, else None."""
    only = filters.model_dump(exclude_none=True)
    if len(only) != 1:
        return None
    ((key, status),) = only.items()
    crm = key.removesuffix("_sync_status")
    if crm == key or crm not in Crm.__members__:
        return None
    return Crm(crm), SyncStatus(status)


async def list_page_by_state(
    conn: AsyncConnection,
    crm: Crm,
    status: SyncStatus,
    limit: int,
    offset: int,
    after: Cursor | None = None,
) -> Sequence[RowMapping]:
    """A page of the contacts with this CRM status, read in list order from the state rows.

    The state row's copy of its contact's `created_at` puts the page in
    `ix_crm_sync_state_status_order` in list order (migration 0004): 100 entries and 100
    contact lookups, where walking contacts and probing each one's state (a rare status) or
    fetching every match and sorting (a common one) took 30-50 ms at a million contacts.
    """
    s = crm_sync_state.c
    stmt = (
        select(contacts)
        .select_from(crm_sync_state)
        .join(contacts, contacts.c.id == s.contact_id)
        .where(s.crm == crm.value, s.sync_status == status.value)
        .order_by(s.contact_created_at, s.contact_id)
        .limit(limit)
        .offset(offset)
    )
    if after is not None:
        stmt = stmt.where(_after(s.contact_created_at, s.contact_id, after))
    return (await conn.execute(stmt)).mappings().all()


async def existing_ids(conn: AsyncConnection, ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Which of these contact ids exist."""
    found: list[uuid.UUID] = []
    for part in chunks(list(ids), _MAX_PARAMS):
        stmt = select(contacts.c.id).where(contacts.c.id.in_(part))
        found.extend((await conn.execute(stmt)).scalars().all())
    return found


async def states_for(conn: AsyncConnection, ids: Sequence[uuid.UUID]) -> Sequence[RowMapping]:
    """The sync state rows of these contacts (for their derived per-CRM fields)."""
    rows: list[RowMapping] = []
    for part in chunks(list(ids), _MAX_PARAMS):
        stmt = select(crm_sync_state).where(crm_sync_state.c.contact_id.in_(part))
        rows.extend((await conn.execute(stmt)).mappings().all())
    return rows


async def existing_by_email(conn: AsyncConnection, emails: Iterable[str]) -> dict[str, RowMapping]:
    """Existing contacts keyed by lower-cased email."""
    found: dict[str, RowMapping] = {}
    wanted = sorted({e.lower() for e in emails})
    key = func.lower(contacts.c.email)
    if conn.dialect.name == "postgresql":
        # One array parameter: an IN list of 10,000 values is compiled value by value on every
        # request (0.3 s of a 10,000-contact bulk request).
        parts = [[key == any_(bindparam("emails", wanted, type_=postgresql.ARRAY(Text)))]]
    else:
        parts = [[key.in_(part)] for part in chunks(wanted, _MAX_PARAMS)]
    for cond in parts:
        for row in (await conn.execute(select(contacts).where(*cond))).mappings():
            found[row["email"].lower()] = row
    return found


async def insert_new(conn: AsyncConnection, rows: list[dict[str, Any]]) -> set[str]:
    """Insert contacts whose email is free; return the lower-cased emails actually inserted.

    `ON CONFLICT DO NOTHING` makes a concurrent insert of the same email lose quietly instead of
    failing the whole request; the caller then treats that row as an update.
    """
    if not rows:
        return set()
    # In one global order (the unique email key), so two imports of overlapping sets queue
    # instead of deadlocking on each other's new index entries.
    rows = sorted(rows, key=lambda row: str(row["email"]).lower())
    # An executemany: SQLAlchemy compiles the statement once and sends the rows as multi-row
    # VALUES pages within the drivers' parameter limits ("insertmanyvalues"). Building one
    # `.values(rows)` statement instead compiled a bind parameter per value on every request:
    # 3.4 s of a 10,000-contact bulk request on PostgreSQL, against 0.6 s now.
    stmt = (
        upsert_insert(conn, contacts)
        .on_conflict_do_nothing(index_elements=[func.lower(contacts.c.email)])
        .returning(contacts.c.email)
    )
    result = await conn.execute(stmt, rows)
    return {email.lower() for email in result.scalars()}


async def update_many(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Apply per-contact column values; each row has `id` plus the same set of columns."""
    if not rows:
        return
    columns = [k for k in rows[0] if k != "id"]
    if conn.dialect.name == "postgresql":
        # The rows locked in id order first: the join below visits them in its plan's order.
        ids = sorted(row["id"] for row in rows)
        await lock_in_order(
            conn, contacts, [contacts.c.id == any_(_uuid_array(ids))], [contacts.c.id]
        )
        # One statement, the rows as one array per column (`unnest`): 10,000 single-row
        # UPDATEs fired the statement triggers of the kept counts (migrations 0003, 0006)
        # 10,000 times, 1.9 s of a 10,000-contact bulk request that renamed every contact.
        arrays = ArrayRows(
            [("id", contacts.c.id.type), *((c, contacts.c[c].type) for c in columns)]
        )
        by_id = (
            update(contacts)
            .where(contacts.c.id == arrays("id"))
            .values({col: arrays(col) for col in columns})
        )
        per_column = zip(arrays.params, arrays.per_row, strict=True)
        await conn.execute(by_id, {param: [r[name] for r in rows] for param, name in per_column})
        return
    stmt = (
        update(contacts)
        .where(contacts.c.id == bindparam("_id"))
        .values({col: bindparam(col) for col in columns})
    )
    params = [{**{k: r[k] for k in columns}, "_id": r["id"]} for r in rows]
    await conn.execute(stmt, params)


async def set_curation_status(
    conn: AsyncConnection, cond: ColumnElement[bool], status: CurationStatus, now: dt.datetime
) -> int:
    """Set the curation status; Queued also queues the contact's own processing (dual status)."""
    values: dict[str, Any] = {"contact_curation_status": status.value, "updated_at": now}
    if status is CurationStatus.Queued:
        values["contact_processing_status"] = ProcessingStatus.Queued.value
        values["contact_processing_error"] = None
    await lock_in_order(conn, contacts, [cond], [contacts.c.id])
    result = await conn.execute(update(contacts).where(cond).values(**values))
    return int(result.rowcount)


def _uuid_array(ids: list[uuid.UUID]) -> Any:
    """One array parameter of contact ids (PostgreSQL)."""
    return bindparam("lock_ids", ids, type_=postgresql.ARRAY(contacts.c.id.type))
