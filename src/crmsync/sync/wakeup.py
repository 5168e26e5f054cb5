"""Waking idle workers when work is queued, instead of waiting for their next poll.

In the same process a selection sets an asyncio event per CRM. Across processes and hosts,
PostgreSQL's NOTIFY (sent inside the selection's transaction, so it is delivered only if the
selection commits) reaches every worker that LISTENs; on a SQLite file each worker watches
`PRAGMA data_version` instead (`Worker._watch`). Polling stays the fallback: a lost
notification only costs one interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from crmsync.enums import Crm

CHANNEL = "crmsync_queue"


async def announce(conn: AsyncConnection, crms: Iterable[Crm]) -> None:
    """Tell other processes (on PostgreSQL) that these CRMs have new work, at commit."""
    if conn.dialect.name != "postgresql":
        return
    payload = ",".join(sorted({crm.value for crm in crms}))
    if payload:
        await conn.execute(
            text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": payload}
        )


class Wakeup:
    """One event per CRM that local workers wait on between polls."""

    def __init__(self) -> None:
        self._events = {crm: asyncio.Event() for crm in Crm}

    def notify(self, crms: Iterable[Crm | str]) -> None:
        for crm in crms:
            self._events[Crm(crm)].set()

    def notify_payload(self, payload: str) -> None:
        """Handle a NOTIFY payload (comma-separated CRM names); unknown names are ignored."""
        self.notify(name for name in payload.split(",") if name in Crm.__members__)

    async def wait(self, crm: Crm, seconds: float) -> bool:
        """Sleep up to `seconds` or until `crm` gets work; True if woken."""
        event = self._events[crm]
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            return False
        finally:
            event.clear()
        return True
