"""The sync state machine, per (contact, CRM), and how a push's results become row updates.

```
New --select--> Selected --claim--> Processing --ok--> Complete
                   ^                    |  |--retry, attempts left--> Queued (after a backoff)
                   |                    |  |--fail, or retries used up--> Error
                   |                    |--rate limited / auth / config--> Queued (no attempt)
   |                    |--vendor outage, or never sent--> Queued (no attempt)
   unselect: Selected/Queued/Error/Complete/Processing --> New
   contact edited while Complete or Processing --> Selected (re-sync)
   operator retry or re-select: Error --> Selected (attempts reset)
```

`processing_status` mirrors it as the customer's dual status: Queued while waiting (Selected or
Queued), Processing, Complete, Error. Selected/Queued/Processing rows are "active": the claim
takes them when `next_attempt_at <= now`; a claim moves `next_attempt_at` to the lease's expiry,
so a row whose worker died becomes due again exactly when its lease runs out.

Each arrow is one step, in one module: select (`selection.py`), claim (`claim.py`), the outcome
arrows out of Processing (`record.py`, behind the lease), the hand-back on shutdown and the
lease's renewal and expiry (`lease.py`). This module is pure: it turns results into
`RowUpdate`s, and those modules write them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from enum import StrEnum

from crmsync.connectors.base import ContactPayload, Fail, Ok, Retry, RowResult, truncate
from crmsync.sqlutil import uuid_from_int
from crmsync.sync.backoff import Backoff

# Values that end any lease on a row (an outcome recorded, a person's action, a hand-back).
NO_LEASE: dict[str, None] = {"lease_owner": None, "lease_token": None, "lease_expires_at": None}


class Outcome(StrEnum):
    ok = "ok"  # the vendor holds the contact
    unchanged = "unchanged"  # same payload as last accepted: no call made
    retry = "retry"  # failed, will be tried again after a backoff
    error = "error"  # failed for good (permanent, or retries used up)
    rate_limited = "rate_limited"  # released without spending an attempt
    auth_failed = "auth_failed"  # released; the CRM is paused
    misconfigured = "misconfigured"  # released; the CRM is paused
    released = "released"  # handed back unattempted (shutdown)
    # handed back unattempted: the vendor is in an outage, or the request was never sent
    unavailable = "unavailable"


# `Claimed` and `RowUpdate` are built once per synced row (RowUpdate twice: again in the SQLite
# writer process); not frozen for the reason `ContactPayload` is not. Never changed once built.
@dataclass(slots=True)
class Claimed:
    """A row this worker holds under a lease, with what the connector needs to push it."""

    state_id: int
    attempts: int
    synced_hash: str | None
    payload: ContactPayload

    @property
    def contact_id(self) -> uuid.UUID:
        return self.payload.contact_id


@dataclass(slots=True)
class RowUpdate:
    state_id: int
    contact_id: uuid.UUID
    outcome: Outcome
    attempts: int
    message: str | None = None
    http_status: int | None = None
    external_id: str | None = None
    synced_hash: str | None = None
    next_attempt_at: dt.datetime | None = None
    # The email the CRM accepted (an Ok): the next push compares the contact's email with it.
    synced_email: str | None = None

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        # Outcomes go to the SQLite writer process pickled, a batch at a time: as plain values
        # this costs a fraction of the generic dataclass, UUID and enum pickling.
        return _row_update, (
            self.state_id,
            self.contact_id.int,
            self.outcome.value,
            self.attempts,
            self.message,
            self.http_status,
            self.external_id,
            self.synced_hash,
            self.next_attempt_at,
            self.synced_email,
        )


def _row_update(
    state_id: int,
    contact_id: int,
    outcome: str,
    attempts: int,
    message: str | None,
    http_status: int | None,
    external_id: str | None,
    synced_hash: str | None,
    next_attempt_at: dt.datetime | None,
    synced_email: str | None,
) -> RowUpdate:
    return RowUpdate(
        state_id,
        uuid_from_int(contact_id),
        Outcome(outcome),
        attempts,
        message,
        http_status,
        external_id,
        synced_hash,
        next_attempt_at,
        synced_email,
    )


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int
    backoff: Backoff


def max_retries_message(last_error: str) -> str:
    return truncate(f"Max retries exceeded. Last error: {last_error}")


def apply_result(
    row: Claimed, result: RowResult, fingerprint: str, policy: RetryPolicy, now: dt.datetime
) -> RowUpdate:
    """The update one vendor answer causes. Success resets the row's attempt counter."""
    if isinstance(result, Ok):
        return RowUpdate(
            row.state_id,
            row.contact_id,
            Outcome.ok,
            attempts=0,
            # Only the history shows it: a Complete row carries no processing error.
            message=result.note,
            http_status=result.http_status,
            external_id=result.external_id,
            synced_hash=fingerprint,
            synced_email=row.payload.email,
        )
    if isinstance(result, Fail):
        return RowUpdate(
            row.state_id,
            row.contact_id,
            Outcome.error,
            attempts=row.attempts + 1,
            message=truncate(result.reason),
            http_status=result.http_status,
        )
    return retry_or_give_up(row, result.reason, result.http_status, policy, now)


def retry_or_give_up(
    row: Claimed, reason: str, http_status: int | None, policy: RetryPolicy, now: dt.datetime
) -> RowUpdate:
    """A failure worth retrying: Queued with backoff, or Error once the retries are used up."""
    failures = row.attempts + 1
    if failures > policy.max_retries:
        return RowUpdate(
            row.state_id,
            row.contact_id,
            Outcome.error,
            attempts=failures,
            message=max_retries_message(reason),
            http_status=http_status,
        )
    return RowUpdate(
        row.state_id,
        row.contact_id,
        Outcome.retry,
        attempts=failures,
        message=truncate(reason),
        http_status=http_status,
        next_attempt_at=now + policy.backoff.delay(failures),
    )


def release(
    row: Claimed,
    outcome: Outcome,
    until: dt.datetime,
    message: str | None = None,
    http_status: int | None = None,
) -> RowUpdate:
    """Hand a row back without spending an attempt, due again at `until`."""
    return RowUpdate(
        row.state_id,
        row.contact_id,
        outcome,
        attempts=row.attempts,
        message=message,
        http_status=http_status,
        next_attempt_at=until,
    )


def unchanged(row: Claimed) -> RowUpdate:
    return RowUpdate(
        row.state_id,
        row.contact_id,
        Outcome.unchanged,
        attempts=0,
        external_id=row.payload.external_id,
        synced_hash=row.synced_hash,
    )


__all__ = [
    "NO_LEASE",
    "Claimed",
    "Fail",
    "Ok",
    "Outcome",
    "Retry",
    "RetryPolicy",
    "RowUpdate",
    "apply_result",
    "release",
    "retry_or_give_up",
    "unchanged",
]
