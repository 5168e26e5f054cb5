"""The attempt history (`sync_events`): read a contact's, prune old ones."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

from sqlalchemy import RowMapping, delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from crmsync.enums import CRM_NAMES
from crmsync.tables import sync_events

e = sync_events.c


async def history(
    conn: AsyncConnection, contact_id: uuid.UUID, limit: int, offset: int = 0
) -> Sequence[RowMapping]:
    stmt = (
        select(sync_events)
        .where(e.contact_id == contact_id)
        .order_by(e.created_at.desc(), e.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return (await conn.execute(stmt)).mappings().all()


async def prune(conn: AsyncConnection, before: dt.datetime, batch: int = 10_000) -> int:
    """Delete up to `batch` events older than `before` (call repeatedly to catch up)."""
    # `crm IN (...)` gives the (crm, created_at) index its leading column.
    old = (
        select(e.id)
        .where(e.crm.in_(CRM_NAMES), e.created_at < before)
        .limit(batch)
        .scalar_subquery()
    )
    result = await conn.execute(delete(sync_events).where(e.id.in_(old)))
    return int(result.rowcount)
