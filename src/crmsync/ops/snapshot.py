"""One read of everything the operator views show, taken in one connection.

Health, the status summary, `crmsync status` and the `/metrics` gauges are all computed from a
`Snapshot`, so they always agree with each other.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncConnection

from crmsync.enums import Crm, SyncStatus
from crmsync.ops import repository as repo
from crmsync.sync import control, heartbeat

ERROR_WINDOW = dt.timedelta(hours=1)
THROUGHPUT_WINDOW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Snapshot:
    now: dt.datetime
    counts: repo.StatusCounts
    due: dict[str, repo.Due]
    workers: list[repo.WorkerRow]
    controls: dict[Crm, control.Control]
    # Empty unless asked for (the metrics scrape does not need the event windows).
    outcomes: dict[str, repo.Outcomes] = field(default_factory=dict)

    @property
    def total_contacts(self) -> int:
        return self.counts.total_contacts

    def queue(self, crm: Crm) -> dict[str, int]:
        """Contacts per status for `crm`, every status present.

        A contact with no state row for a CRM was never selected there and counts as New, so
        New = all contacts - rows of that CRM in any other status.
        """
        rows = {st: self.counts.rows.get((crm.value, st.value), 0) for st in SyncStatus}
        others = sum(n for st, n in rows.items() if st is not SyncStatus.New)
        rows[SyncStatus.New] = self.total_contacts - others
        return {st.value: rows[st] for st in SyncStatus}

    def serving(self, crm: Crm) -> list[repo.WorkerRow]:
        return [w for w in self.workers if crm.value in w.crms]

    def due_count(self, crm: Crm) -> int:
        found = self.due.get(crm.value)
        return found.count if found else 0

    def lag_seconds(self, crm: Crm) -> float:
        """How long the oldest due row of `crm` has waited since it became due."""
        found = self.due.get(crm.value)
        if found is None or found.oldest is None:
            return 0.0
        return max(0.0, (self.now - found.oldest).total_seconds())


async def take(
    conn: AsyncConnection, now: dt.datetime, lease_seconds: float, *, with_outcomes: bool
) -> Snapshot:
    counts = await repo.status_counts(conn)
    due = await repo.due(conn, now)
    workers = await repo.live_workers(conn, heartbeat.alive_since(now, lease_seconds))
    controls = await control.load(conn)
    outcomes = (
        await repo.outcomes(conn, now - ERROR_WINDOW, now - THROUGHPUT_WINDOW)
        if with_outcomes
        else {}
    )
    return Snapshot(now, counts, due, workers, controls, outcomes)
