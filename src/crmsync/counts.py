"""Exact row counts: contacts (by their low-cardinality columns), and state rows per (CRM, status).

On PostgreSQL these are sums of the deltas that migration 0003's triggers insert, one row per
writing statement and group (about 1 ms, where `count(*)` over a million contacts takes about
100 ms). The deltas are written in the writer's transaction, so a sum sees exactly the rows its
snapshot sees. On SQLite they are plain `count(*)` queries (a few ms at a million rows). Each
function is one statement, so the figures it combines come from one snapshot.

Counts no delta can answer (a substring of the email or name) are scans; on PostgreSQL
`ContactCounts` keeps them with the snapshot they were taken in, and brings them up to date
from the (email, name) images the writes since then logged (migrations 0005, 0006).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Select,
    Text,
    bindparam,
    cast,
    false,
    func,
    null,
    select,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import UserDefinedType

from crmsync.enums import Crm, SyncStatus
from crmsync.tables import (
    contact_change_images,
    contact_changes,
    contact_count_deltas,
    contacts,
    crm_sync_state,
    state_count_deltas,
)

# The contact columns the deltas are grouped by (migration 0003): a count filtered on these
# alone is a sum of deltas.
GROUPED = ("email_type", "has_gmail", "contact_curation_status", "contact_processing_status")

d = state_count_deltas.c
s = crm_sync_state.c


def _kept(conn: AsyncConnection) -> bool:
    """Whether this database keeps count deltas (PostgreSQL, migration 0003)."""
    return conn.dialect.name == "postgresql"


def _equal(column: ColumnElement[Any], value: Any) -> ColumnElement[bool]:
    # `IS` for booleans, as the list filter has it (`has_gmail=false` leaves out unknown ones).
    return column.is_(value) if isinstance(value, bool) else column == value


def _contacts(conn: AsyncConnection, where: Mapping[str, Any]) -> Select[Any]:
    if _kept(conn):
        t = contact_count_deltas.c
        conds = [_equal(t[k], v) for k, v in where.items()]
        return select(func.coalesce(func.sum(t.delta), 0)).where(*conds)
    conds = [_equal(contacts.c[k], v) for k, v in where.items()]
    return select(func.count()).select_from(contacts).where(*conds)


def _states(conn: AsyncConnection, crm: Crm, statuses: set[SyncStatus]) -> Select[Any]:
    values = sorted(x.value for x in statuses)
    if _kept(conn):
        where = (d.crm == crm.value, d.sync_status.in_(values))
        return select(func.coalesce(func.sum(d.delta), 0)).where(*where)
    return select(func.count()).where(s.crm == crm.value, s.sync_status.in_(values))


async def _scalar(conn: AsyncConnection, stmt: Select[Any]) -> int:
    return int((await conn.execute(stmt)).scalar_one())


async def contacts_where(conn: AsyncConnection, where: Mapping[str, Any]) -> int:
    """Contacts whose `GROUPED` columns equal `where`'s values (all contacts if it is empty)."""
    unknown = set(where) - set(GROUPED)
    if unknown:
        raise ValueError(f"not a counted column: {', '.join(sorted(unknown))}")
    return await _scalar(conn, _contacts(conn, where))


async def with_status(conn: AsyncConnection, crm: Crm, status: SyncStatus) -> int:
    """Contacts whose status for `crm` is `status`; New includes those with no state row."""
    if status is not SyncStatus.New:
        return await _scalar(conn, _states(conn, crm, {status}))
    elsewhere = _states(conn, crm, set(SyncStatus) - {SyncStatus.New})
    stmt = select(_contacts(conn, {}).scalar_subquery() - elsewhere.scalar_subquery())
    return await _scalar(conn, stmt)


async def per_status(conn: AsyncConnection) -> tuple[int, dict[tuple[str, str], int]]:
    """The number of contacts, and state rows per (CRM, status) leaving out zeros."""
    per: Select[Any]
    if _kept(conn):
        n: ColumnElement[int] = func.sum(d.delta)
        per = select(d.crm, d.sync_status, n).group_by(d.crm, d.sync_status).having(n != 0)
    else:
        per = select(s.crm, s.sync_status, func.count()).group_by(s.crm, s.sync_status)
    total = select(null(), null(), _contacts(conn, {}).scalar_subquery())
    rows: dict[tuple[str, str], int] = {}
    total_contacts = 0
    for crm, status, count in (await conn.execute(union_all(per, total))).all():
        if crm is None:
            total_contacts = int(count)
        else:
            rows[(crm, status)] = int(count)
    return total_contacts, rows


def _fold(table: str, grouped: str) -> str:
    return (
        f"WITH gone AS (DELETE FROM {table} RETURNING {grouped}, delta) "
        f"INSERT INTO {table} ({grouped}, delta) SELECT {grouped}, sum(delta) FROM gone "
        f"GROUP BY {grouped} HAVING sum(delta) <> 0"
    )


async def compact(conn: AsyncConnection) -> None:
    """Fold the committed deltas into one row per group, so that sums stay short.

    Safe beside writers and other compactions: the DELETE removes only rows committed before it
    started (a writer's uncommitted delta stays for the next time), and a row that two
    compactions both see is deleted, and summed, by only one of them.
    """
    if not _kept(conn):
        return
    await conn.exec_driver_sql(_fold("contact_count_deltas", ", ".join(GROUPED)))
    await conn.exec_driver_sql(_fold("state_count_deltas", "crm, sync_status"))
    await conn.exec_driver_sql(_FOLD_CHANGES)
    await conn.exec_driver_sql(_FOLD_MINUTES)


# The change log folds into one new row marked `folded`: the rows it deletes, and their images,
# may include writes a kept count has not applied yet, so the marker tells every such count to
# count again. A log of one row stays as it is (folding it would cost every kept count a scan).
_FOLD_CHANGES = (
    "WITH gone AS (DELETE FROM contact_changes "
    "WHERE (SELECT count(*) FROM contact_changes) > 1 RETURNING id), "
    "dropped AS (DELETE FROM contact_change_images WHERE change_id IN (SELECT id FROM gone)) "
    "INSERT INTO contact_changes (folded) SELECT true FROM gone LIMIT 1"
)


# Attempts per (CRM, minute) (migration 0009): one row per minute, and a day of them is enough
# for the dashboard.
_FOLD_MINUTES = (
    "WITH gone AS (DELETE FROM sync_event_minutes RETURNING crm, minute, synced, failed) "
    "INSERT INTO sync_event_minutes (crm, minute, synced, failed) "
    "SELECT crm, minute, sum(synced), sum(failed) FROM gone "
    "WHERE minute >= now() - interval '1 day' GROUP BY crm, minute"
)


class _Snapshot(UserDefinedType[str]):
    """PostgreSQL's `pg_snapshot`: which transactions a statement saw (as text in Python)."""

    cache_ok = True

    def get_col_spec(self, **_kw: Any) -> str:
        return "pg_snapshot"


# The snapshot a statement runs in, and whether its transaction has written nothing yet: a
# count that may include the reader's own uncommitted writes is never kept.
_NOW = (
    cast(func.pg_current_snapshot(), Text),
    func.pg_current_xact_id_if_assigned().is_(None),
)
_SINCE = cast(bindparam("snap", type_=Text), _Snapshot())
ch = contact_changes.c
# The log rows a kept count's snapshot did not see: the writes to contacts since it was taken.
_FRESH = (
    select(ch.id, ch.folded)
    .where(
        ch.xid >= func.pg_snapshot_xmin(_SINCE),
        ~func.pg_visible_in_snapshot(ch.xid, _SINCE, type_=Boolean),
    )
    .cte("fresh")
)
Snapshot = str


class ContactCounts:
    """Counts of contacts by any filter on their own columns, kept and brought up to date.

    For the list's scans (a substring of the email or name) on PostgreSQL. A count is stored
    with the snapshot of the statement that took it. Next time one small query reads the log
    rows (migration 0006) that snapshot did not see, and, when the filter is on email and name
    alone, adds up their images that match it: the kept count plus that sum is the count in
    the new snapshot, for about a millisecond instead of a scan. Other filters, a fold of the
    log or a TRUNCATE among those rows mean: count again. Per process, the most recent `size`
    filters.
    """

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._counts: OrderedDict[str, tuple[Snapshot, int]] = OrderedDict()

    async def count(
        self,
        conn: AsyncConnection,
        key: str,
        conds: Sequence[ColumnElement[bool]],
        image_conds: Sequence[ColumnElement[bool]] | None = None,
    ) -> int:
        """The number of contacts matching `conds`; `key` names the filter they came from.

        `image_conds` is the same filter on `contact_change_images` (None when the filter
        reads columns the images do not hold).
        """
        scan = select(func.count()).select_from(contacts).where(*conds)
        if not _kept(conn):
            return await _scalar(conn, scan)
        kept = self._counts.get(key)
        if kept is not None:
            snap, total = kept
            moved = (await conn.execute(self._since(image_conds), {"snap": snap})).one()
            now, clean, fresh, folded, delta = moved
            if not fresh:
                self._counts.move_to_end(key)
                return total
            if image_conds is not None and not folded:
                total += int(delta)
                return self._keep(key, now, total) if clean else total
        now, clean, total = (await conn.execute(select(*_NOW, scan.scalar_subquery()))).one()
        return self._keep(key, now, int(total)) if clean else int(total)

    @staticmethod
    def _since(image_conds: Sequence[ColumnElement[bool]] | None) -> Select[Any]:
        """The writes since a snapshot: how many, any fold, and their matching image deltas."""
        images = contact_change_images.c
        delta = select(func.coalesce(func.sum(images.delta), 0)).where(
            images.change_id.in_(select(_FRESH.c.id)), *(image_conds or [false()])
        )
        return select(
            *_NOW,
            select(func.count()).select_from(_FRESH).scalar_subquery(),
            select(func.coalesce(func.bool_or(_FRESH.c.folded), False)).scalar_subquery(),
            delta.scalar_subquery(),
        )

    def _keep(self, key: str, snap: Snapshot, total: int) -> int:
        self._counts[key] = (snap, total)
        self._counts.move_to_end(key)
        while len(self._counts) > self._size:
            self._counts.popitem(last=False)
        return total
