"""A CRM's gate: whether it may sync now, and the shared state that decides it.

Every worker reads the CRM's row of `crm_control` (cached for `CONTROL_TTL`): an operator's
pause, a timed pause after a 429, an auth or configuration failure, the outage breaker
(`outage.py`) and its probe, the day's request budget (`budget.py`). The gate also writes that
row when a batch changes it (a pause, a failed batch, a vendor that answers again), and keeps
its cached copy in step, so the runner's next look sees its own change at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from crmsync.connectors.base import Connector
from crmsync.enums import Crm
from crmsync.settings import CrmSettings
from crmsync.sync import budget, control, outage
from crmsync.sync.fields import FieldGate, Pause, Wait
from crmsync.sync.hooks import quietly

if TYPE_CHECKING:
    from crmsync.sync.worker import Worker

__all__ = ["CONTROL_TTL", "Gate"]

log = logging.getLogger(__name__)

# How often in-memory views of shared state are refreshed.
CONTROL_TTL = 1.0


class Gate:
    """One CRM's view of its shared control row, for one worker."""

    def __init__(
        self, worker: Worker, crm: Crm, connector: Connector, settings: CrmSettings
    ) -> None:
        self.worker = worker
        self.crm = crm
        self.settings = settings
        self.outage = outage.Policy.of(settings)
        # The CRM's custom fields are checked before its first batch and after each pause.
        self.fields = FieldGate(connector)
        # Requests the connector sent that are not yet added to the day's count (budget.py).
        self.requests_sent = 0
        # Probes that had failed in this outage when this worker took the current one.
        self.failed_probes = 0
        # The start of the outage this worker last told its `on_outage` listeners about.
        self._outage_seen: dt.datetime | None = None
        self._control = control.Control(crm)
        # time.monotonic() of the last read; set it below now - CONTROL_TTL to read afresh.
        self.control_read = -CONTROL_TTL

    @property
    def in_outage(self) -> bool:
        return self._control.in_outage

    async def pause_left(self, now: dt.datetime) -> float | None:
        """Seconds to wait while the CRM is paused (manual, timed or in an outage), else None.

        In an outage whose probe is due: 0 (the loop then tries to take the probe).
        """
        if time.monotonic() - self.control_read >= CONTROL_TTL:
            async with self.worker.read_engine.connect() as conn:
                self._control = (await control.load(conn))[self.crm]
            self.control_read = time.monotonic()
            await self.note_outage()
        ctl = self._control
        if ctl.manual_pause:
            self.fields.forget()
            return self.settings.interval_seconds
        if ctl.paused_until is not None and ctl.paused_until > now:
            if ctl.pause_kind != control.PauseKind.rate_limit:
                self.fields.forget()
            left = (ctl.paused_until - now).total_seconds()
            return min(left, self.settings.interval_seconds)
        if ctl.in_outage:
            due = ctl.next_probe_at or now
            return min(max(0.0, (due - now).total_seconds()), self.settings.interval_seconds)
        limit = self.settings.daily_request_limit
        if limit is not None:
            used = budget.used_today(ctl, now, self.settings.time_zone)
            if used >= limit:
                await self.budget_used_up(used, now)
                return await self.pause_left(now)
        return None

    async def check_fields(self) -> float | None:
        """Check the CRM's fields; None when it may sync, else how long to wait (see fields.py)."""
        verdict = await self.fields.check()
        if isinstance(verdict, Pause):
            until = self.worker.clock() + dt.timedelta(seconds=self.settings.auth_retry_seconds)
            await self.pause(verdict.kind, until, verdict.reason)
            return self.settings.interval_seconds
        if isinstance(verdict, Wait):
            log.warning("%s: could not check the fields: %s", self.crm.value, verdict.reason)
            if verdict.vendor_down:
                await self.judge(True, verdict.reason, probe=False)
            return verdict.seconds or self.settings.interval_seconds
        return None

    # -- one batch -----------------------------------------------------------------------------

    async def judge(self, down: bool | None, reason: str, probe: bool) -> dt.datetime | None:
        """Feed one batch's verdict to the outage breaker.

        `down`: True when the vendor failed the batch, False when it answered, None when there
        is no evidence. Returns when the batch's failed rows are due again if the CRM is (now)
        in an outage (they spend no attempt then), else None.
        """
        if down is None:
            if probe:  # no evidence either way: the probe is due again, for any worker
                async with self.worker.engine.begin() as conn:
                    await outage.give_back_probe(
                        conn, self.crm, self.worker.id, self.worker.clock()
                    )
            return None
        if not down:
            await self.vendor_answered(probe)
            return None
        now = self.worker.clock()
        if probe:
            async with self.worker.engine.begin() as conn:
                until = await outage.probe_failed(
                    conn, self.crm, self.worker.id, self.failed_probes, reason, now, self.outage
                )
            log.warning(
                "%s: still down (%s); next probe at %s",
                self.crm.value,
                reason,
                until.isoformat(timespec="seconds"),
            )
            self._control = replace(
                self._control, next_probe_at=until, outage_probes=self.failed_probes + 1
            )
            self.control_read = time.monotonic()
            return until
        async with self.worker.engine.begin() as conn:
            failure = await outage.record_failure(conn, self.crm, reason, now, self.outage)
        self._control = replace(
            self._control,
            outage_failures=failure.failures,
            outage_since=failure.since,
            next_probe_at=failure.next_probe_at,
        )
        await self.note_outage()
        if failure.opened:
            self._control = replace(self._control, outage_reason=reason, outage_probes=0)
            self.control_read = time.monotonic()
            assert failure.next_probe_at is not None
            log.warning(
                "%s: vendor outage: %d batches in a row failed (last: %s); paused, first probe "
                "at %s",
                self.crm.value,
                failure.failures,
                reason,
                failure.next_probe_at.isoformat(timespec="seconds"),
            )
            for listener in self.worker.hooks.on_pause:
                await quietly(listener(self.crm, control.PauseKind.outage, reason))
        return failure.next_probe_at

    async def note_outage(self) -> None:
        """Tell the `on_outage` listeners when this worker sees an outage begin or end."""
        since = self._control.outage_since
        if since != self._outage_seen:
            self._outage_seen = since
            for listener in self.worker.hooks.on_outage:
                await quietly(listener(self.crm, since is not None))

    async def vendor_answered(self, probe: bool) -> None:
        """The vendor answered a batch: an outage ends, a run of failures starts again."""
        now = self.worker.clock()
        if probe or self._control.in_outage:
            async with self.worker.engine.begin() as conn:
                ended = await outage.close(conn, self.crm, now)
            if ended:
                log.warning("%s: the vendor answers again; the outage is over", self.crm.value)
                self.worker.wakeup.notify([self.crm])  # the loop rests while probing
            self._control = replace(
                self._control,
                outage_failures=0,
                outage_since=None,
                outage_reason=None,
                outage_probes=0,
                next_probe_at=None,
                probe_owner=None,
            )
            self.control_read = time.monotonic()
            await self.note_outage()
        elif self._control.outage_failures > 0:
            async with self.worker.engine.begin() as conn:
                await outage.reset_failures(conn, self.crm, now)
            self._control = replace(self._control, outage_failures=0)

    def count_request(self) -> None:
        """One HTTP request sent to the vendor (called by the client's request hook)."""
        self.requests_sent += 1

    async def count_requests(self) -> None:
        """Add the requests sent since the last batch to the day's count (with a budget set)."""
        limit = self.settings.daily_request_limit
        sent, self.requests_sent = self.requests_sent, 0
        if limit is None:
            return
        now = self.worker.clock()
        zone = self.settings.time_zone
        async with self.worker.engine.begin() as conn:
            used = await budget.spend(conn, self.crm, sent, now, zone)
        day, _ = budget.vendor_day(now, zone)
        self._control = replace(self._control, budget_day=day, budget_used=used)
        if used >= limit:
            await self.budget_used_up(used, now)

    async def budget_used_up(self, used: int, now: dt.datetime) -> None:
        limit = self.settings.daily_request_limit
        zone = self.settings.daily_request_time_zone
        _, reset = budget.vendor_day(now, self.settings.time_zone)
        reason = (
            f"the daily request budget is used: {used} of {limit} requests "
            f"({self.crm.value.upper()}_DAILY_REQUEST_LIMIT); syncing goes on when the day "
            f"resets at midnight {zone}"
        )
        await self.pause(control.PauseKind.budget, reset, reason)

    async def pause(self, kind: control.PauseKind, until: dt.datetime, reason: str) -> None:
        log.warning(
            "%s paused until %s (%s): %s", self.crm.value, until.isoformat(), kind.value, reason
        )
        async with self.worker.engine.begin() as conn:
            await control.pause_until(conn, self.crm, until, kind, reason, self.worker.clock())
        self._control = replace(
            self._control, paused_until=until, pause_kind=kind.value, pause_reason=reason
        )
        self.control_read = time.monotonic()
        for listener in self.worker.hooks.on_pause:
            await quietly(listener(self.crm, kind, reason))
