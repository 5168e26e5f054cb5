"""The daily request budget per CRM (`{CRM}_DAILY_REQUEST_LIMIT`), counted in `crm_control`.

HubSpot's daily quota belongs to the account and is shared by every integration on it; a large
backfill must not spend all of it. Each worker counts the HTTP requests its connector sends (an
httpx request hook on the CRM's client: retries, splits, token requests and probes included) and
adds them to the CRM's count after each batch. Once the count reaches the limit, the CRM pauses
until the vendor's day resets: midnight in `{CRM}_DAILY_REQUEST_TIME_ZONE` (HubSpot: the
account's time zone, which its API does not tell a private app; default UTC).

The limit is checked before each claim, so the batches already in flight when it is reached may
still send their requests: at most `{CRM}_SYNC_SCHEDULER_MAX_INSTANCES` batches per worker.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from sqlalchemy import case
from sqlalchemy.ext.asyncio import AsyncConnection

from crmsync.enums import Crm
from crmsync.sqlutil import upsert_insert
from crmsync.sync.control import Control
from crmsync.tables import crm_control

c = crm_control.c


def vendor_day(now: dt.datetime, zone: ZoneInfo) -> tuple[str, dt.datetime]:
    """The vendor's current day (its date, ISO) and when the next one starts (UTC)."""
    local = now.astimezone(zone)
    midnight = dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time(), tzinfo=zone)
    return local.date().isoformat(), midnight.astimezone(dt.UTC)


def used_today(ctl: Control, now: dt.datetime, zone: ZoneInfo) -> int:
    """Requests counted for the vendor's current day (0 once a new day began)."""
    day, _ = vendor_day(now, zone)
    return ctl.budget_used if ctl.budget_day == day else 0


async def spend(
    conn: AsyncConnection, crm: Crm, requests: int, now: dt.datetime, zone: ZoneInfo
) -> int:
    """Add `requests` to the CRM's count for the vendor's day; the day's total so far."""
    day, _ = vendor_day(now, zone)
    insert = upsert_insert(conn, crm_control).values(
        crm=crm.value, manual_pause=False, budget_day=day, budget_used=requests, updated_at=now
    )
    stmt = insert.on_conflict_do_update(
        index_elements=[c.crm],
        set_={
            # A new day starts the count again.
            "budget_used": case((c.budget_day == day, c.budget_used + requests), else_=requests),
            "budget_day": day,
            "updated_at": now,
        },
    ).returning(c.budget_used)
    return int((await conn.execute(stmt)).scalar_one())
