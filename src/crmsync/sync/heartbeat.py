"""Worker registrations and heartbeats (`workers`), which health reads to show who is alive."""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Sequence

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from crmsync.enums import Crm
from crmsync.sqlutil import upsert_insert
from crmsync.tables import workers

w = workers.c

# A worker that missed this many beats in a row counts as gone (health, metrics).
MISSED_BEATS = 3


def period(lease_seconds: float) -> float:
    """Seconds between beats: often enough to renew a lease about three times before it ends.

    The same formula as `Worker._heartbeat`; health derives "alive" from it.
    """
    return min(5.0, lease_seconds / 3)


def alive_since(now: dt.datetime, lease_seconds: float) -> dt.datetime:
    """Workers whose last beat is older than this (or that stopped) are not alive."""
    return now - dt.timedelta(seconds=MISSED_BEATS * period(lease_seconds))


def worker_id(suffix: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{suffix}"


async def register(conn: AsyncConnection, wid: str, crms: Sequence[Crm], now: dt.datetime) -> None:
    values = {
        "id": wid,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "crms": ",".join(crm.value for crm in crms),
        "started_at": now,
        "heartbeat_at": now,
        "stopped_at": None,
    }
    insert = upsert_insert(conn, workers).values(**values)
    await conn.execute(
        insert.on_conflict_do_update(
            index_elements=[w.id], set_={k: insert.excluded[k] for k in values if k != "id"}
        )
    )


async def beat(
    conn: AsyncConnection,
    wid: str,
    now: dt.datetime,
    last_cycle_at: dt.datetime | None,
    rows_done: int,
) -> None:
    await conn.execute(
        update(workers)
        .where(w.id == wid)
        .values(heartbeat_at=now, last_cycle_at=last_cycle_at, rows_done=rows_done)
    )


async def stopped(conn: AsyncConnection, wid: str, now: dt.datetime) -> None:
    await conn.execute(update(workers).where(w.id == wid).values(stopped_at=now, heartbeat_at=now))
