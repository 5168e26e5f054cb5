"""Exact row counts: contacts (by their low-cardinality columns), and state rows per (CRM, status).

On PostgreSQL these are sums of the deltas that migration 0003's triggers insert, one row per
writing statement and group (about 1 ms, where `count(*)` over a million contacts takes about
100 ms). The deltas are written in the writer's transaction, so a sum sees exactly the rows its
snapshot sees. On SQLite they are plain `count(*)` queries (a few ms at a million rows). Each
function is one statement, so the figures it combines come from one snapshot.

Counts no delta can answer (a substring of the email or name) are scans; on PostgreSQL
`ContactCounts` keeps them with the contacts' version (migration 0005) and reuses them until
any statement changes the contacts.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, func, null, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from crmsync.enums import Crm, SyncStatus
from crmsync.tables import (
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


# The change log folds into one new row: its id is higher than any before, so the version
# (rows, highest id) after a fold differs from every earlier one. A log of one row stays as it
# is (folding it would change the version for nothing).
_FOLD_CHANGES = (
    "WITH gone AS (DELETE FROM contact_changes "
    "WHERE (SELECT count(*) FROM contact_changes) > 1 RETURNING id) "
    "INSERT INTO contact_changes SELECT FROM gone LIMIT 1"
)

# The contacts' version as one snapshot sees them (migration 0005): any commit that changed
# contacts added a row to the log, so it changes the pair.
_VERSION = (
    select(func.count()).select_from(contact_changes).scalar_subquery(),
    select(func.coalesce(func.max(contact_changes.c.id), 0)).scalar_subquery(),
)
Version = tuple[int, int]


class ContactCounts:
    """Counts of contacts by any filter on their own columns, reused until the contacts change.

    For the list's scans (a substring of the email or name) on PostgreSQL. A count is stored
    with the contacts' version read in the same statement, so in the same snapshot; it is
    returned again only while a fresh read of the version gives the same pair, which costs one
    small query. Per process, the most recent `size` filters.
    """

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._counts: OrderedDict[str, tuple[Version, int]] = OrderedDict()

    async def count(
        self, conn: AsyncConnection, key: str, conds: Sequence[ColumnElement[bool]]
    ) -> int:
        """The number of contacts matching `conds`; `key` names the filter they came from."""
        scan = select(func.count()).select_from(contacts).where(*conds)
        if not _kept(conn):
            return await _scalar(conn, scan)
        kept = self._counts.get(key)
        if kept is not None:
            version = tuple((await conn.execute(select(*_VERSION))).one())
            if version == kept[0]:
                self._counts.move_to_end(key)
                return kept[1]
        rows, top, total = (await conn.execute(select(*_VERSION, scan.scalar_subquery()))).one()
        self._counts[key] = ((int(rows), int(top)), int(total))
        self._counts.move_to_end(key)
        while len(self._counts) > self._size:
            self._counts.popitem(last=False)
        return int(total)
