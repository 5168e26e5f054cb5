"""A refused outcome (its lease was lost) is not applied, but it still says something about
the rows a person queued again while its push was in flight (see `selection._held`).

This is the one place where a late answer changes a row it no longer holds, and only to make
the newest data win at the vendor: it ends a hold early, or queues a push again.
"""

from __future__ import annotations

import datetime as dt
from operator import attrgetter

from sqlalchemy import update
from sqlalchemy.engine import Connection

from crmsync.enums import SyncStatus
from crmsync.sqlutil import chunks
from crmsync.sync.selection import queued
from crmsync.sync.state import Outcome, RowUpdate
from crmsync.tables import crm_sync_state

__all__ = ["after_refused"]

s = crm_sync_state.c
CHUNK = 5_000


def after_refused(conn: Connection, lost: list[RowUpdate], now: dt.datetime) -> None:
    """What a refused outcome (a lost lease) still tells about the rows a person queued again.

    - The push has ended: rows held for it (`selection._held`) are due now, unless its fate at
      the vendor is unknown (no answer: it may still be applied), then the hold runs its course.
    - The vendor accepted this (older) push: a row since completed with other data may have
      been overwritten by it, if it arrived late; the row is pushed again, its data being the
      latest.
    """
    ended = [u.state_id for u in lost if u.http_status is not None or u.outcome in _NOT_SENT]
    for part in chunks(sorted(ended), CHUNK):
        conn.execute(
            update(crm_sync_state)
            .where(
                s.id.in_(part),
                s.sync_status == SyncStatus.Selected.value,
                s.lease_token.is_(None),
                s.next_attempt_at > now,
            )
            .values(next_attempt_at=now)
        )
    for u in sorted((u for u in lost if u.outcome is Outcome.ok), key=attrgetter("state_id")):
        conn.execute(
            update(crm_sync_state)
            .where(
                s.id == u.state_id,
                s.sync_status == SyncStatus.Complete.value,
                s.lease_token.is_(None),
                s.synced_hash.is_distinct_from(u.synced_hash),
            )
            .values(**queued(now), synced_hash=None)
        )


# Outcomes of rows whose request never left: nothing of theirs can reach the vendor later.
_NOT_SENT = frozenset({Outcome.unchanged, Outcome.unavailable, Outcome.released})
