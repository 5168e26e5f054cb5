"""PostgreSQL: health's outcome windows read the trigger-kept minutes plus the events of each
window's first part-minute, and count exactly what counting every event of the hour counts."""

from __future__ import annotations

import datetime as dt
import random
import uuid

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.enums import CRM_NAMES
from crmsync.ops import repository as repo
from crmsync.tables import sync_events

pytestmark = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)

NOW = dt.datetime(2026, 12, 7, 6, 0, 30, 250_000, tzinfo=dt.UTC)
OUTCOMES = ("ok", "unchanged", "retry", "error", "rate_limited", "released")


async def test_kept_minutes_count_what_the_events_count(engine: AsyncEngine) -> None:
    rng = random.Random(7)
    # Every second of the last 70 minutes, a few seconds of every minute edge in particular,
    # each statement a batch of its own (the trigger adds a row per statement and minute).
    moments = [
        NOW - dt.timedelta(seconds=s, microseconds=rng.randrange(1_000_000)) for s in range(4200)
    ]
    async with engine.begin() as conn:
        for start in range(0, len(moments), 97):
            rows = [
                {
                    "contact_id": uuid.uuid4(),
                    "crm": rng.choice(CRM_NAMES),
                    "outcome": rng.choice(OUTCOMES),
                    "attempt": 0,
                    "duration_ms": 1,
                    "created_at": at,
                }
                for at in moments[start : start + 97]
            ]
            await conn.execute(insert(sync_events), rows)
    windows = [
        (NOW - dt.timedelta(hours=1), NOW - dt.timedelta(minutes=5)),  # as health asks
        (
            NOW.replace(second=0, microsecond=0) - dt.timedelta(hours=1),
            NOW - dt.timedelta(minutes=5),
        ),
        (NOW - dt.timedelta(minutes=30, seconds=1), NOW.replace(second=0, microsecond=0)),
    ]
    async with engine.connect() as conn:
        for since, recent_since in windows:
            counted = await repo.outcomes_counted(conn, since, recent_since)
            assert sum(o.successes + o.failures for o in counted.values()) > 1000
            assert await repo.outcomes(conn, since, recent_since) == counted, (since, recent_since)
