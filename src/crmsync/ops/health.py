"""The health rules: from a `Snapshot` to ok / degraded / down, with the reasons in words.

Per CRM (`crms.<crm>.status`):

- `disabled`: not configured (neither here nor on any live worker) and no row is due for it.
- `down`: it cannot sync what it should. Paused after an auth or configuration failure; or the
  vendor is in an outage (the reason and the next probe time are shown); or rows are due and no
  live worker serves it (for an unconfigured CRM: rows are due at all).
- `degraded`: paused by an operator; or paused because the daily request budget is used (until
  the vendor's day resets); or its error rate over the last hour is above
  `CRMSYNC_ALERT_ERROR_RATE`; or its lag (age of the oldest due row) is above `max_lag_seconds`;
  or it is configured but no live worker serves it (nothing due yet).
- `ok` otherwise. A rate-limit pause alone is routine pacing, not a problem; if the vendor's
  limit cannot keep up, the lag rule says so.

Overall (`status`):

- `down`: the database cannot be read; or rows are due for a configured CRM and no worker is
  alive at all; or at least one CRM is configured and every configured CRM is down.
- `degraded`: not down, and some CRM is down or degraded, or no CRM is configured at all.
- `ok` otherwise.

A worker is alive when it has not stopped and its last heartbeat is at most three heartbeat
periods old (`sync/heartbeat.py`). A CRM counts as configured when this process's settings have
its credentials or a live worker serves it: on several hosts the API host may not hold them.
"""

from __future__ import annotations

import datetime as dt

from crmsync.enums import Crm
from crmsync.ops.schemas import (
    CrmHealth,
    CrmStatus,
    DailyRequests,
    Health,
    HealthStatus,
    Outage,
    ServingWorker,
    WorkerRead,
)
from crmsync.ops.snapshot import ERROR_WINDOW, THROUGHPUT_WINDOW, Snapshot
from crmsync.settings import Settings
from crmsync.sync import budget
from crmsync.sync.control import Control, PauseKind

DEFAULT_MAX_LAG_SECONDS = 900.0
BLOCKING_PAUSES = (PauseKind.auth.value, PauseKind.configuration.value)


def assess(snap: Snapshot, settings: Settings, max_lag_seconds: float) -> Health:
    crms = {crm.value: _crm_health(snap, settings, crm, max_lag_seconds) for crm in Crm}
    status, reasons = _overall(snap, crms)
    return Health(
        status=status,
        reasons=reasons,
        checked_at=snap.now,
        database="ok",
        error_window_seconds=int(ERROR_WINDOW.total_seconds()),
        throughput_window_seconds=int(THROUGHPUT_WINDOW.total_seconds()),
        max_lag_seconds=max_lag_seconds,
        error_rate_threshold=settings.alert_error_rate,
        workers=[
            WorkerRead(
                id=w.id,
                hostname=w.hostname,
                pid=w.pid,
                crms=list(w.crms),
                started_at=w.started_at,
                heartbeat_at=w.heartbeat_at,
                last_cycle_at=w.last_cycle_at,
                rows_done=w.rows_done,
            )
            for w in snap.workers
        ],
        crms=crms,
    )


def unreadable(now: dt.datetime, settings: Settings, max_lag_seconds: float) -> Health:
    """Health when the database could not be read: down, and nothing else is known."""
    return Health(
        status=HealthStatus.down,
        reasons=["the database could not be read"],
        checked_at=now,
        database="error",
        error_window_seconds=int(ERROR_WINDOW.total_seconds()),
        throughput_window_seconds=int(THROUGHPUT_WINDOW.total_seconds()),
        max_lag_seconds=max_lag_seconds,
        error_rate_threshold=settings.alert_error_rate,
        workers=[],
        crms={},
    )


def _crm_health(snap: Snapshot, settings: Settings, crm: Crm, max_lag: float) -> CrmHealth:
    now = snap.now
    missing = settings.crm(crm).missing()
    serving = snap.serving(crm)
    enabled = missing is None or bool(serving)
    ctl = snap.controls[crm]
    timed = ctl.paused_until is not None and ctl.paused_until > now
    due = snap.due_count(crm)
    lag = snap.lag_seconds(crm)
    found = snap.outcomes.get(crm.value)
    successes, failures = (found.successes, found.failures) if found else (0, 0)
    attempts = successes + failures
    error_rate = failures / attempts if attempts else 0.0
    recent = found.recent_successes if found else 0
    throughput = recent / (THROUGHPUT_WINDOW.total_seconds() / 60)

    down: list[str] = []
    degraded: list[str] = []
    if not enabled:
        if due:
            down.append(f"not configured ({missing}) while {due} row(s) are due")
    else:
        if timed and ctl.pause_kind in BLOCKING_PAUSES:
            down.append(
                f"paused until {_at(ctl.paused_until)} ({ctl.pause_kind} failure: "
                f"{ctl.pause_reason}); fix it, then `crmsync resume --crm {crm.value}`"
            )
        if ctl.in_outage:
            down.append(
                f"vendor outage since {_at(ctl.outage_since)} ({ctl.outage_reason}); no attempts "
                f"are spent; next probe at {_at(ctl.next_probe_at)}"
            )
        if timed and ctl.pause_kind == PauseKind.budget.value:
            degraded.append(
                f"paused until {_at(ctl.paused_until)}: {ctl.pause_reason or 'daily budget used'}"
            )
        if due and not serving:
            down.append(f"{due} row(s) are due and no live worker serves it")
        elif not serving:
            degraded.append("no live worker serves it")
        if ctl.manual_pause:
            degraded.append(f"paused by an operator (`crmsync resume --crm {crm.value}`)")
        if error_rate > settings.alert_error_rate:
            degraded.append(
                f"error rate {error_rate:.2f} over the last hour ({failures} of {attempts} "
                f"attempts) is above {settings.alert_error_rate:.2f}"
            )
        if lag > max_lag:
            degraded.append(f"oldest due row has waited {lag:.0f} s (more than {max_lag:.0f} s)")

    if down:
        status = CrmStatus.down
    elif degraded:
        status = CrmStatus.degraded
    elif not enabled:
        status = CrmStatus.disabled
    else:
        status = CrmStatus.ok
    return CrmHealth(
        status=status,
        reasons=down + degraded,
        enabled=enabled,
        disabled_reason=None if enabled else missing,
        paused=ctl.paused_at(now),
        manual_pause=ctl.manual_pause,
        paused_until=ctl.paused_until if timed else None,
        pause_kind=ctl.pause_kind if timed else None,
        pause_reason=ctl.pause_reason if timed else None,
        outage=_outage(ctl),
        daily_requests=_daily_requests(ctl, settings, crm, now),
        workers=[
            ServingWorker(id=w.id, hostname=w.hostname, last_cycle_at=w.last_cycle_at)
            for w in serving
        ],
        queue=snap.queue(crm),
        due=due,
        lag_seconds=round(lag, 3),
        successes=successes,
        failures=failures,
        error_rate=round(error_rate, 4),
        throughput_per_minute=round(throughput, 3),
    )


def _outage(ctl: Control) -> Outage | None:
    if ctl.outage_since is None:
        return None
    return Outage(
        since=ctl.outage_since,
        reason=ctl.outage_reason,
        failed_probes=ctl.outage_probes,
        next_probe_at=ctl.next_probe_at,
    )


def _daily_requests(
    ctl: Control, settings: Settings, crm: Crm, now: dt.datetime
) -> DailyRequests | None:
    """The budget as this process's settings define it (the API host shares the workers' .env)."""
    crm_settings = settings.crm(crm)
    limit = crm_settings.daily_request_limit
    if limit is None:
        return None
    zone = crm_settings.time_zone
    _, resets_at = budget.vendor_day(now, zone)
    return DailyRequests(
        limit=limit,
        used=budget.used_today(ctl, now, zone),
        time_zone=crm_settings.daily_request_time_zone,
        resets_at=resets_at,
    )


def _overall(snap: Snapshot, crms: dict[str, CrmHealth]) -> tuple[HealthStatus, list[str]]:
    enabled = {name: h for name, h in crms.items() if h.enabled}
    reasons = [f"{name}: {reason}" for name, h in crms.items() for reason in h.reasons]
    due_enabled = sum(h.due for h in enabled.values())
    if due_enabled and not snap.workers:
        return HealthStatus.down, [
            f"{due_enabled} row(s) are due and no worker is alive",
            *reasons,
        ]
    if enabled and all(h.status is CrmStatus.down for h in enabled.values()):
        return HealthStatus.down, ["every configured CRM is down", *reasons]
    if not enabled:
        return HealthStatus.degraded, ["no CRM is configured", *reasons]
    if reasons:
        return HealthStatus.degraded, reasons
    return HealthStatus.ok, []


def _at(when: dt.datetime | None) -> str:
    return when.isoformat(timespec="seconds") if when else "?"
