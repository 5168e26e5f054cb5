"""All SQL of the operator views: status counts, due rows and lag, attempt outcomes, live workers,
and the failed list.

Every read is one set-based statement (a GROUP BY or a page), never a loop over rows, and each is
shaped for an existing index (checked with EXPLAIN on both databases):

- status counts: on SQLite `ix_crm_sync_state_queue` (crm, sync_status, ...) as a covering
  index, on PostgreSQL the trigger-kept deltas (`counts`);
- due rows and lag: the partial indexes the claim reads, `ix_crm_sync_state_due` (crm,
  next_attempt_at) for waiting rows, and for expired leases `ix_crm_sync_state_expiry` on
  PostgreSQL, `ix_crm_sync_state_queue` on SQLite;
- outcomes: on PostgreSQL the trigger-kept minutes (migration 0009) and the events of the
  windows' first part-minutes; on SQLite the events of the windows. Events through
  `ix_sync_events_crm_created_at` with `crm IN (every CRM)`, a range scan over the window only;
- the failed list and its groups: the partial `ix_crm_sync_state_errors` (crm, message, last
  attempt, id: rows in Error only), hence the explicit `crm IN (...)` even for "all CRMs": it
  gives the index its leading column;
- contacts synced per minute: PostgreSQL's trigger-kept minutes (migration 0009); on SQLite the
  events of the window through `ix_sync_events_crm_created_at`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, RowMapping, case, func, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from crmsync import counts
from crmsync.enums import CRM_NAMES, Crm, SyncStatus
from crmsync.sync.state import Outcome
from crmsync.tables import (
    ERROR_KEY,
    IN_ERROR,
    IN_FLIGHT,
    IS_WAITING,
    contacts,
    crm_sync_state,
    sync_event_minutes,
    sync_events,
    workers,
)

s = crm_sync_state.c
e = sync_events.c
w = workers.c

SUCCESS_OUTCOMES = (Outcome.ok.value, Outcome.unchanged.value)
# Attempts that failed. Rate limits, auth/config pauses and shutdown hand-backs spend no attempt
# and are not failures of the contact: health shows those as pauses instead.
FAILURE_OUTCOMES = (Outcome.retry.value, Outcome.error.value)


@dataclass(frozen=True, slots=True)
class StatusCounts:
    total_contacts: int
    # (crm, sync_status) -> rows, as stored: contacts never selected for a CRM have no row.
    rows: dict[tuple[str, str], int]


@dataclass(frozen=True, slots=True)
class Due:
    count: int
    oldest: dt.datetime | None  # the earliest next_attempt_at among due rows


@dataclass(frozen=True, slots=True)
class Outcomes:
    successes: int
    failures: int
    recent_successes: int  # successes in the shorter (throughput) window


@dataclass(frozen=True, slots=True)
class WorkerRow:
    id: str
    hostname: str
    pid: int
    crms: tuple[str, ...]
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    last_cycle_at: dt.datetime | None
    rows_done: int


async def status_counts(conn: AsyncConnection) -> StatusCounts:
    """Rows per (CRM, status) and the number of contacts, from one statement (one snapshot)."""
    total, rows = await counts.per_status(conn)
    return StatusCounts(total, rows)


async def due(conn: AsyncConnection, now: dt.datetime) -> dict[str, Due]:
    """Per CRM, rows a worker would claim now (the claim's own conditions) and the oldest one:
    waiting rows and expired leases counted apart, each through the index the claim reads it
    from (on PostgreSQL no index holds both), then added up."""
    parts = union_all(
        *(
            select(s.crm, func.count().label("n"), func.min(s.next_attempt_at).label("oldest"))
            .where(status, s.next_attempt_at <= now)
            .group_by(s.crm)
            for status in (IS_WAITING, IN_FLIGHT)
        )
    ).subquery()
    stmt = select(parts.c.crm, func.sum(parts.c.n), func.min(parts.c.oldest)).group_by(parts.c.crm)
    return {crm: Due(int(n), oldest) for crm, n, oldest in (await conn.execute(stmt)).all()}


async def next_waiting(conn: AsyncConnection, now: dt.datetime) -> dict[str, dt.datetime]:
    """Per CRM, when the first row not due yet (a retry backoff, a pause) comes due."""
    stmt = (
        select(s.crm, func.min(s.next_attempt_at))
        .where(IS_WAITING, s.next_attempt_at > now)
        .group_by(s.crm)
    )
    return {crm: when for crm, when in (await conn.execute(stmt)).all() if when is not None}


async def outcomes(
    conn: AsyncConnection, since: dt.datetime, recent_since: dt.datetime
) -> dict[str, Outcomes]:
    """Per CRM, successes and failures since `since`, and successes since `recent_since`."""
    if conn.dialect.name == "postgresql":
        return await _outcomes_kept(conn, since, recent_since)
    return await outcomes_counted(conn, since, recent_since)


async def outcomes_counted(
    conn: AsyncConnection,
    since: dt.datetime,
    recent_since: dt.datetime,
    before: dt.datetime | None = None,
) -> dict[str, Outcomes]:
    """`outcomes` (of the events before `before`, if given), counted event by event: on SQLite
    the hour's events (no trigger keeps minutes there), on PostgreSQL the part-minutes at the
    windows' starts."""
    success = e.outcome.in_(SUCCESS_OUTCOMES)
    where = [e.crm.in_(CRM_NAMES), e.created_at >= since]
    if before is not None:
        where.append(e.created_at < before)
    stmt = (
        select(
            e.crm,
            func.sum(case((success, 1), else_=0)),
            func.sum(case((e.outcome.in_(FAILURE_OUTCOMES), 1), else_=0)),
            func.sum(case((success & (e.created_at >= recent_since), 1), else_=0)),
        )
        .where(*where)
        .group_by(e.crm)
    )
    return {
        crm: Outcomes(int(ok or 0), int(failed or 0), int(recent or 0))
        for crm, ok, failed, recent in (await conn.execute(stmt)).all()
    }


def _next_minute(at: dt.datetime) -> dt.datetime:
    """The first whole minute at or after `at`."""
    start = at.replace(second=0, microsecond=0)
    return start if start == at else start + dt.timedelta(minutes=1)


async def _outcomes_kept(
    conn: AsyncConnection, since: dt.datetime, recent_since: dt.datetime
) -> dict[str, Outcomes]:
    """PostgreSQL: the whole minutes of each window from the trigger-kept minutes (migration
    0009, a few hundred rows), the part-minute before each window's first whole minute counted
    from the events. At full speed the hour holds millions of events, and health read them all
    on every call (about 0.2 s of two cores for a million)."""
    whole, recent_whole = _next_minute(since), _next_minute(recent_since)
    m = sync_event_minutes.c
    stmt = (
        select(
            m.crm,
            func.sum(m.synced),
            func.sum(m.failed),
            func.sum(case((m.minute >= recent_whole, m.synced), else_=0)),
        )
        .where(m.minute >= whole)
        .group_by(m.crm)
    )
    found = {
        crm: Outcomes(int(ok or 0), int(failed or 0), int(recent or 0))
        for crm, ok, failed, recent in (await conn.execute(stmt)).all()
    }
    # The recent window starts minutes after the hour's: its part-minute is inside the hour's
    # whole minutes already, and only its successes are added.
    hour_start = await outcomes_counted(conn, since, recent_since, before=whole)
    recent_start = await outcomes_counted(conn, recent_since, recent_since, before=recent_whole)
    none = Outcomes(0, 0, 0)
    for crm in set(hour_start) | set(recent_start):
        kept, early = found.get(crm, none), hour_start.get(crm, none)
        found[crm] = Outcomes(
            kept.successes + early.successes,
            kept.failures + early.failures,
            kept.recent_successes + recent_start.get(crm, none).recent_successes,
        )
    return found


async def live_workers(conn: AsyncConnection, since: dt.datetime) -> list[WorkerRow]:
    """Workers that have not stopped and beat at or after `since`."""
    stmt = (
        select(workers)
        .where(w.stopped_at.is_(None), w.heartbeat_at >= since)
        .order_by(w.started_at, w.id)
    )
    return [
        WorkerRow(
            id=row.id,
            hostname=row.hostname,
            pid=row.pid,
            crms=tuple(name for name in row.crms.split(",") if name),
            started_at=row.started_at,
            heartbeat_at=row.heartbeat_at,
            last_cycle_at=row.last_cycle_at,
            rows_done=int(row.rows_done),
        )
        for row in await conn.execute(stmt)
    ]


def _failed_where(crms: Sequence[Crm], error: str | None = None) -> list[ColumnElement[bool]]:
    """Rows in Error of these CRMs (with `error`: in that group of the Failed page)."""
    conds = [s.crm.in_([crm.value for crm in crms]), IN_ERROR]
    if error is not None:
        conds.append(ERROR_KEY == error)
    return conds


async def failed_page(
    conn: AsyncConnection,
    crms: Sequence[Crm],
    limit: int,
    offset: int,
    error: str | None = None,
) -> Sequence[RowMapping]:
    """Error rows with their contact's email, newest failure first (ties: newest row first).

    The page's ids are chosen on the state table alone and only they are joined to contacts:
    with many Error rows, joining all of them before the sort costs three times as much.
    """
    order = (s.last_attempt_at.desc(), s.id.desc())
    page = (
        select(s.id)
        .where(*_failed_where(crms, error))
        .order_by(*order)
        .limit(limit)
        .offset(offset)
        .subquery()
    )
    stmt = (
        select(
            s.contact_id,
            s.crm,
            contacts.c.email,
            contacts.c.name,
            s.processing_error,
            s.attempts,
            s.last_attempt_at,
        )
        .join(page, page.c.id == s.id)
        .join(contacts, contacts.c.id == s.contact_id)
        .order_by(*order)
    )
    return (await conn.execute(stmt)).mappings().all()


async def failed_count(conn: AsyncConnection, crms: Sequence[Crm], error: str | None = None) -> int:
    stmt = select(func.count()).select_from(crm_sync_state).where(*_failed_where(crms, error))
    return int((await conn.execute(stmt)).scalar_one())


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    crm: str
    error: str
    count: int
    last_attempt_at: dt.datetime | None
    groups_in_crm: int  # how many distinct messages this CRM's Error rows have
    total_in_crm: int  # how many Error rows this CRM has


async def failed_groups(
    conn: AsyncConnection, crms: Sequence[Crm], per_crm: int
) -> list[ErrorGroup]:
    """Error rows per (CRM, message), the `per_crm` largest groups of each CRM, largest first.

    One pass over `ix_crm_sync_state_errors`, in its order (no sort before grouping).
    """
    n = func.count()
    grouped = (
        select(
            s.crm,
            ERROR_KEY.label("error"),
            n.label("n"),
            func.max(s.last_attempt_at).label("last_at"),
            func.row_number().over(partition_by=s.crm, order_by=n.desc()).label("rank"),
            func.count().over(partition_by=s.crm).label("groups"),
            func.sum(n).over(partition_by=s.crm).label("total"),
        )
        .where(*_failed_where(crms))
        .group_by(s.crm, ERROR_KEY)
        .subquery()
    )
    stmt = select(grouped).where(grouped.c.rank <= per_crm).order_by(grouped.c.crm, grouped.c.rank)
    return [
        ErrorGroup(row.crm, row.error, int(row.n), row.last_at, int(row.groups), int(row.total))
        for row in await conn.execute(stmt)
    ]


async def failed_samples(
    conn: AsyncConnection, groups: Sequence[ErrorGroup], per_group: int
) -> Sequence[RowMapping]:
    """The `per_group` latest failures of each of these groups, with their emails.

    One index range per group (`ix_crm_sync_state_errors` ends with last_attempt_at), all in one
    statement: ranking every row in Error instead took a second at 150,000 of them.
    """
    if not groups:
        return []
    parts = [
        select(s.id)
        .where(s.crm == group.crm, IN_ERROR, ERROR_KEY == group.error)
        .order_by(s.last_attempt_at.desc(), s.id.desc())
        .limit(per_group)
        .subquery()
        .select()
        for group in groups
    ]
    latest = union_all(*parts).subquery() if len(parts) > 1 else parts[0].subquery()
    stmt = (
        select(
            s.contact_id,
            s.crm,
            contacts.c.email,
            contacts.c.name,
            ERROR_KEY.label("processing_error"),
            s.attempts,
            s.last_attempt_at,
        )
        .join(latest, latest.c.id == s.id)
        .join(contacts, contacts.c.id == s.contact_id)
        .order_by(s.crm, s.last_attempt_at.desc(), s.id.desc())
    )
    return (await conn.execute(stmt)).mappings().all()


async def synced_per_minute(
    conn: AsyncConnection, since: dt.datetime
) -> dict[str, dict[dt.datetime, int]]:
    """Per CRM, contacts synced (ok or unchanged) in each minute from `since` (whole minutes)."""
    if conn.dialect.name == "postgresql":
        return await _minutes_kept(conn, since)
    return await _minutes_counted(conn, since)


async def _minutes_kept(
    conn: AsyncConnection, since: dt.datetime
) -> dict[str, dict[dt.datetime, int]]:
    """PostgreSQL: the trigger-kept minutes (migration 0009), a few thousand rows at most."""
    m = sync_event_minutes.c
    stmt = (
        select(m.crm, m.minute, func.sum(m.synced))
        .where(m.minute >= since)
        .group_by(m.crm, m.minute)
        .having(func.sum(m.synced) > 0)
    )
    found: dict[str, dict[dt.datetime, int]] = {}
    for crm, minute, synced in await conn.execute(stmt):
        found.setdefault(crm, {})[minute] = int(synced)
    return found


async def _minutes_counted(
    conn: AsyncConnection, since: dt.datetime
) -> dict[str, dict[dt.datetime, int]]:
    """SQLite: the hour's events, counted (its timestamps are UTC text, minute first 16 chars)."""
    minute = func.substr(e.created_at, 1, 16)
    stmt = (
        select(e.crm, minute, func.count())
        .where(e.crm.in_(CRM_NAMES), e.created_at >= since, e.outcome.in_(SUCCESS_OUTCOMES))
        .group_by(e.crm, minute)
    )
    found: dict[str, dict[dt.datetime, int]] = {}
    for crm, text, synced in await conn.execute(stmt):
        at = dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)
        found.setdefault(crm, {})[at] = int(synced)
    return found


async def count_by_status(
    conn: AsyncConnection, crm: Crm, statuses: Sequence[SyncStatus]
) -> dict[SyncStatus, int]:
    """How many rows of `crm` are in each of `statuses` (zeros included)."""
    stmt = (
        select(s.sync_status, func.count())
        .where(s.crm == crm.value, s.sync_status.in_([st.value for st in statuses]))
        .group_by(s.sync_status)
    )
    found = {status: int(n) for status, n in (await conn.execute(stmt)).all()}
    return {status: found.get(status.value, 0) for status in statuses}
