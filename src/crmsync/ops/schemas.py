"""Request and response bodies of the operations API (`/api/v3/crm/...`)."""

from __future__ import annotations

import datetime as dt
import uuid
from enum import StrEnum

from pydantic import BaseModel, Field

from crmsync.contacts.schemas import MAX_IDS, Word


class HealthStatus(StrEnum):
    ok = "ok"
    degraded = "degraded"
    down = "down"


class CrmStatus(StrEnum):
    ok = "ok"
    degraded = "degraded"
    down = "down"
    disabled = "disabled"  # not configured, and nothing waits for it


class WorkerRead(BaseModel):
    id: str
    hostname: str
    pid: int
    crms: list[str]
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    last_cycle_at: dt.datetime | None
    rows_done: int


class ServingWorker(BaseModel):
    id: str
    hostname: str
    last_cycle_at: dt.datetime | None


class Outage(BaseModel):
    since: dt.datetime
    reason: str | None = Field(description="The vendor's last failure")
    failed_probes: int
    next_probe_at: dt.datetime | None = Field(
        description="When one worker sends the next probe (one contact) to test recovery"
    )


class DailyRequests(BaseModel):
    limit: int
    used: int = Field(description="Requests sent in the vendor's current day")
    time_zone: str = Field(description="Where the vendor's day starts at midnight")
    resets_at: dt.datetime


class CrmHealth(BaseModel):
    status: CrmStatus
    reasons: list[str]
    enabled: bool
    disabled_reason: str | None
    paused: bool
    manual_pause: bool
    paused_until: dt.datetime | None
    pause_kind: str | None = Field(
        description="rate_limit, auth, configuration or budget (timed pauses)"
    )
    pause_reason: str | None
    outage: Outage | None = Field(
        description="Set while the vendor is in an outage: crmsync pauses and probes it"
    )
    daily_requests: DailyRequests | None = Field(
        description="The daily request budget, when {CRM}_DAILY_REQUEST_LIMIT is set"
    )
    workers: list[ServingWorker] = Field(description="Live workers serving this CRM")
    queue: dict[str, int] = Field(description="Contacts per sync status (as in the summary)")
    due: int = Field(description="Rows a worker would claim now")
    lag_seconds: float = Field(description="Age of the oldest due row (0 when none is due)")
    successes: int = Field(description="ok and unchanged outcomes in the error window")
    failures: int = Field(description="retry and error outcomes in the error window")
    error_rate: float = Field(description="failures / (successes + failures), 0 without attempts")
    throughput_per_minute: float = Field(
        description="Contacts synced (ok or unchanged) per minute over the throughput window"
    )


class Health(BaseModel):
    status: HealthStatus
    reasons: list[str]
    checked_at: dt.datetime
    database: str = Field(description="ok, or error when the database could not be read")
    error_window_seconds: int
    throughput_window_seconds: int
    max_lag_seconds: float
    error_rate_threshold: float
    workers: list[WorkerRead]
    crms: dict[str, CrmHealth]


class Summary(BaseModel):
    crms: dict[str, dict[str, int]]
    total_contacts: int


class FailedContact(BaseModel):
    contact_id: uuid.UUID
    crm: str
    email: str
    name: str | None
    error: str | None
    attempts: int
    last_attempt_at: dt.datetime | None


class RetryRequest(BaseModel):
    # `crm` is checked by the service, not here, so that an unknown name answers 400 (as the
    # selection routes do) rather than FastAPI's 422.
    crm: Word
    contact_ids: list[uuid.UUID] | None = Field(default=None, max_length=MAX_IDS)
    all_failed: bool = False


class RetryResponse(BaseModel):
    requeued_count: int
