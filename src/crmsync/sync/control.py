"""Per-CRM pauses that every worker on every host sees (rows in `crm_control`).

Two independent switches: an operator's manual pause (`crmsync pause`/`resume`), and a timed pause
a worker sets after a rate limit, an auth failure, a configuration failure or when the daily
request budget is used up. A timed pause only ever moves later, so one worker's short wait cannot
cut another's long one short. The same row holds the vendor outage breaker (`outage.py`) and the
day's request count (`budget.py`); `load` reads all of it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from crmsync.enums import Crm
from crmsync.sqlutil import upsert_insert
from crmsync.tables import crm_control

c = crm_control.c


class PauseKind(StrEnum):
    rate_limit = "rate_limit"
    auth = "auth"
    configuration = "configuration"
    # The daily request budget is used up: paused until the vendor's day resets.
    budget = "budget"
    # The vendor is down (the outage breaker is open). Not a timed pause: see `outage.py`.
    outage = "outage"


@dataclass(frozen=True, slots=True)
class Control:
    crm: Crm
    manual_pause: bool = False
    paused_until: dt.datetime | None = None
    pause_kind: str | None = None
    pause_reason: str | None = None
    # The outage breaker: open while `outage_since` is set (see `outage.py`).
    outage_failures: int = 0
    outage_since: dt.datetime | None = None
    outage_reason: str | None = None
    outage_probes: int = 0
    next_probe_at: dt.datetime | None = None
    probe_owner: str | None = None
    # Requests sent in the vendor's day `budget_day` (see `budget.py`).
    budget_day: str | None = None
    budget_used: int = 0

    def paused_at(self, now: dt.datetime) -> bool:
        return self.manual_pause or (self.paused_until is not None and self.paused_until > now)

    @property
    def in_outage(self) -> bool:
        return self.outage_since is not None


async def load(conn: AsyncConnection) -> dict[Crm, Control]:
    found = {crm: Control(crm) for crm in Crm}
    for row in await conn.execute(select(crm_control)):
        if row.crm in Crm.__members__:
            crm = Crm(row.crm)
            found[crm] = Control(
                crm,
                row.manual_pause,
                row.paused_until,
                row.pause_kind,
                row.pause_reason,
                row.outage_failures,
                row.outage_since,
                row.outage_reason,
                row.outage_probes,
                row.next_probe_at,
                row.probe_owner,
                row.budget_day,
                row.budget_used,
            )
    return found


async def pause_until(
    conn: AsyncConnection,
    crm: Crm,
    until: dt.datetime,
    kind: PauseKind,
    reason: str,
    now: dt.datetime,
) -> None:
    insert = upsert_insert(conn, crm_control).values(
        crm=crm.value,
        manual_pause=False,
        paused_until=until,
        pause_kind=kind.value,
        pause_reason=reason,
        updated_at=now,
    )
    excluded = insert.excluded
    # Keep the later of two pauses (and its reason).
    later = (c.paused_until.is_(None)) | (c.paused_until < excluded.paused_until)
    stmt = insert.on_conflict_do_update(
        index_elements=[c.crm],
        set_={
            "paused_until": excluded.paused_until,
            "pause_kind": excluded.pause_kind,
            "pause_reason": excluded.pause_reason,
            "updated_at": excluded.updated_at,
        },
        where=later,
    )
    await conn.execute(stmt)


async def set_manual(conn: AsyncConnection, crm: Crm, paused: bool, now: dt.datetime) -> None:
    insert = upsert_insert(conn, crm_control).values(
        crm=crm.value, manual_pause=paused, updated_at=now
    )
    await conn.execute(
        insert.on_conflict_do_update(
            index_elements=[c.crm],
            set_={"manual_pause": insert.excluded.manual_pause, "updated_at": now},
        )
    )


async def clear_timed(conn: AsyncConnection, crm: Crm, now: dt.datetime) -> None:
    """Forget a timed pause (an operator fixed the credentials and resumed)."""
    await conn.execute(
        update(crm_control)
        .where(c.crm == crm.value)
        .values(paused_until=None, pause_kind=None, pause_reason=None, updated_at=now)
    )
