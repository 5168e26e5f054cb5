"""The vendor outage breaker: per CRM, in `crm_control`, shared by every worker on every host.

```
closed --N batches in a row fail on the vendor's side--> open (CRM paused, no attempts spent)
open --next_probe_at passes; ONE worker takes the probe--> probing (one batch of one contact)
probing --the vendor answers (anything but a vendor failure)--> closed (the backlog resumes)
probing --it fails again--> open, next probe after twice the last interval (up to the maximum)
```

A batch "fails on the vendor's side" when no row of it got an answer of its own: the connector
raised `Transient` (timeout or no connection) before answering any row, or every row came back
`Retry` for a 5xx or for no answer at all (a timeout, a dropped connection). One answered row
(`Ok`, `Fail`, a `Retry` of the vendor's own making such as a 207 item error) means the vendor
is up: the count starts again. So a single bad batch among good ones counts as it always did
(an attempt spent), and only a run of them, `{CRM}_OUTAGE_FAILURE_THRESHOLD` in a row across all
workers, opens the breaker.

Taking the probe is one conditional UPDATE (`next_probe_at <= now`): on PostgreSQL the row lock
and on SQLite the single writer make exactly one worker win, whatever process or host it runs
in. The winner moves `next_probe_at` on by a lease, so if it dies mid-probe another worker
probes once the lease ends. The consecutive-failure count is approximate across workers by at
most the one-second staleness of their view of this row (a success resets it only when the
resetting worker sees a count above zero).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from crmsync.connectors.base import Retry, RowResult
from crmsync.enums import Crm
from crmsync.settings import CrmSettings
from crmsync.sqlutil import upsert_insert
from crmsync.tables import crm_control

c = crm_control.c
# The largest exponent the doubling uses: 2**20 times any sane base is beyond any maximum.
_MAX_DOUBLINGS = 20


@dataclass(frozen=True, slots=True)
class Policy:
    threshold: int
    probe_seconds: float
    max_probe_seconds: float

    @classmethod
    def of(cls, settings: CrmSettings) -> Policy:
        return cls(
            settings.outage_failure_threshold,
            settings.outage_probe_seconds,
            settings.outage_max_probe_seconds,
        )

    def interval(self, failed_probes: int) -> dt.timedelta:
        """Wait before the next probe after `failed_probes` probes failed in this outage."""
        seconds = self.probe_seconds * 2 ** min(max(0, failed_probes), _MAX_DOUBLINGS)
        return dt.timedelta(seconds=min(seconds, self.max_probe_seconds))


def vendor_failure(result: RowResult | None) -> bool:
    """A row result that blames the vendor, not the row: a `Retry` for a 5xx or no answer."""
    return isinstance(result, Retry) and (result.http_status is None or result.http_status >= 500)


def vendor_down(results: Sequence[RowResult | None]) -> bool | None:
    """Whether a batch's results show the vendor down.

    True: every answered row failed on the vendor's side. False: the vendor answered some row.
    None: nothing was answered at all (no evidence either way).
    """
    answered = [result for result in results if result is not None]
    if not answered:
        return None
    return all(vendor_failure(result) for result in answered)


@dataclass(frozen=True, slots=True)
class Failure:
    """What counting one failed batch did."""

    failures: int  # batches in a row that failed, this one included
    opened: bool  # this batch opened the breaker
    since: dt.datetime | None  # when the outage began, while the CRM is in one
    next_probe_at: dt.datetime | None  # set while the CRM is in an outage


async def record_failure(
    conn: AsyncConnection, crm: Crm, reason: str, now: dt.datetime, policy: Policy
) -> Failure:
    """Count a batch that failed on the vendor's side; open the breaker at the threshold."""
    insert = upsert_insert(conn, crm_control).values(
        crm=crm.value, manual_pause=False, outage_failures=1, updated_at=now
    )
    stmt = insert.on_conflict_do_update(
        index_elements=[c.crm],
        set_={"outage_failures": c.outage_failures + 1, "updated_at": now},
    ).returning(c.outage_failures, c.outage_since, c.next_probe_at)
    failures, since, next_probe = (await conn.execute(stmt)).one()
    if since is not None:
        return Failure(failures, False, since, next_probe)
    if failures < policy.threshold:
        return Failure(failures, False, None, None)
    next_probe = now + policy.interval(0)
    opened = await conn.execute(
        update(crm_control)
        .where(c.crm == crm.value, c.outage_since.is_(None))
        .values(
            outage_since=now,
            outage_reason=reason,
            outage_probes=0,
            next_probe_at=next_probe,
            probe_owner=None,
            updated_at=now,
        )
    )
    return Failure(failures, opened.rowcount == 1, now, next_probe)


async def reset_failures(conn: AsyncConnection, crm: Crm, now: dt.datetime) -> None:
    """A batch the vendor answered: the run of failures is over (outside an outage)."""
    await conn.execute(
        update(crm_control)
        .where(c.crm == crm.value, c.outage_failures > 0, c.outage_since.is_(None))
        .values(outage_failures=0, updated_at=now)
    )


async def take_probe(
    conn: AsyncConnection, crm: Crm, owner: str, now: dt.datetime, lease_until: dt.datetime
) -> int | None:
    """Take the due probe for this worker; the probes failed so far, or None if not taken."""
    stmt = (
        update(crm_control)
        .where(c.crm == crm.value, c.outage_since.is_not(None), c.next_probe_at <= now)
        .values(probe_owner=owner, next_probe_at=lease_until, updated_at=now)
        .returning(c.outage_probes)
    )
    found = (await conn.execute(stmt)).first()
    return None if found is None else int(found[0])


async def probe_failed(
    conn: AsyncConnection,
    crm: Crm,
    owner: str,
    failed_probes: int,
    reason: str,
    now: dt.datetime,
    policy: Policy,
) -> dt.datetime:
    """The probe failed too: the next one after a doubled interval. When it is due."""
    next_probe = now + policy.interval(failed_probes + 1)
    stmt = (
        update(crm_control)
        .where(c.crm == crm.value, c.probe_owner == owner, c.outage_since.is_not(None))
        .values(
            outage_probes=failed_probes + 1,
            outage_reason=reason,
            next_probe_at=next_probe,
            probe_owner=None,
            updated_at=now,
        )
    )
    # If our probe lease ran out and another worker took over, or the outage ended meanwhile,
    # this changes nothing; the probe's rows still wait no longer than this interval.
    await conn.execute(stmt)
    return next_probe


async def give_back_probe(conn: AsyncConnection, crm: Crm, owner: str, now: dt.datetime) -> None:
    """The probe taker had nothing to send: the probe is due again for any worker."""
    await conn.execute(
        update(crm_control)
        .where(c.crm == crm.value, c.probe_owner == owner)
        .values(probe_owner=None, next_probe_at=now, updated_at=now)
    )


async def close(conn: AsyncConnection, crm: Crm, now: dt.datetime) -> bool:
    """The vendor answered: end the outage (True if one was open)."""
    result = await conn.execute(
        update(crm_control)
        .where(c.crm == crm.value, c.outage_since.is_not(None))
        .values(
            outage_since=None,
            outage_reason=None,
            outage_failures=0,
            outage_probes=0,
            next_probe_at=None,
            probe_owner=None,
            updated_at=now,
        )
    )
    return result.rowcount == 1
