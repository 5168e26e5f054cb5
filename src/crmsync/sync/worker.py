"""The worker: drains each enabled CRM's queue at the vendor's pace, on one host or many.

Per CRM, one loop claims a batch (short transaction) and hands it to a lane, a task that pushes
it (no transaction open) and records the outcome (short transaction); up to
`{CRM}_SYNC_SCHEDULER_MAX_INSTANCES` lanes run at once, so claims overlap vendor calls. A lane
whose batch came full claims the next batch itself, with its outcome write (one transaction on
SQLite, `queue.record_then_claim`), and goes on: a SQLite sync then commits once per batch, not
twice (measured: 11,700 against 11,019 contacts/s, 5 alternating pairs; lanes that claimed in a
transaction of their own were slower). When nothing is due the loop sleeps
`{CRM}_SYNC_SCHEDULER_INTERVAL_SECONDS`, or less if a selection wakes it (same process: an
event; other processes: PostgreSQL NOTIFY).

While the vendor is down (`outage.py`) a CRM claims nothing but the probe: one contact, sent by
the one worker that took the probe. With `{CRM}_DAILY_REQUEST_LIMIT` set, the requests each
connector sends are counted (`budget.py`) and the CRM pauses when the day's budget is used.

Beside the loops: a heartbeat (worker row, lease renewal for slow batches), event pruning, and
on PostgreSQL a LISTEN connection. On stop, no new claims; in-flight batches get
`CRMSYNC_SHUTDOWN_GRACE_SECONDS` to finish, then are cancelled and their rows handed back.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import logging
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

import httpx
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import counts, db, metrics
from crmsync.clock import Clock, utcnow
from crmsync.connectors.base import (
    AuthFailed,
    Connector,
    ConnectorError,
    Misconfigured,
    RateLimited,
    Retry,
    RowResult,
    Transient,
    Unreachable,
    make_client,
)
from crmsync.connectors.registry import create_connector
from crmsync.enums import Crm
from crmsync.settings import CrmSettings, Settings
from crmsync.sync import budget, control, events, heartbeat, outage, queue
from crmsync.sync.backoff import Backoff
from crmsync.sync.fields import FieldGate, Pause, Wait
from crmsync.sync.state import (
    Claimed,
    Outcome,
    RetryPolicy,
    RowUpdate,
    apply_result,
    release,
    retry_or_give_up,
    unchanged,
)
from crmsync.sync.wakeup import CHANNEL, Wakeup

log = logging.getLogger(__name__)

# Sent with every vendor request: which worker pushed (the sandbox's push log records it).
WORKER_HEADER = "X-Crmsync-Worker"
# How often in-memory views of shared state are refreshed.
CONTROL_TTL = 1.0
# A record transaction whose database connection was lost is tried this many times in all,
# waiting RECORD_RETRY_SECONDS x the attempt number in between.
RECORD_ATTEMPTS = 3
RECORD_RETRY_SECONDS = 0.5
T = TypeVar("T")
SUMMARY_SECONDS = 10.0
PRUNE_SECONDS = 3600.0
# How often the count deltas (PostgreSQL) are folded: a busy sync adds a few per batch.
COMPACT_COUNTS_SECONDS = 60.0
# SQLite: how often an idle worker looks for commits by other processes (its NOTIFY).
WATCH_SECONDS = 0.25

# Called with (crm, applied row updates) after each batch is recorded; alerting hooks in here.
BatchListener = Callable[[Crm, Sequence[RowUpdate]], Awaitable[None]]
PauseListener = Callable[[Crm, control.PauseKind, str], Awaitable[None]]
# Called by every worker when its view of the CRM's outage breaker changes: True once it sees an
# outage (on_pause comes only from the worker that opened it), False once it sees it end.
OutageListener = Callable[[Crm, bool], Awaitable[None]]


@dataclass
class Hooks:
    on_batch: list[BatchListener] = field(default_factory=list)
    on_pause: list[PauseListener] = field(default_factory=list)
    on_outage: list[OutageListener] = field(default_factory=list)


class CrmRunner:
    """Drains one CRM's queue."""

    def __init__(
        self,
        worker: Worker,
        crm: Crm,
        connector: Connector,
        crm_settings: CrmSettings,
    ) -> None:
        self.worker = worker
        self.crm = crm
        self.connector = connector
        self.settings = crm_settings
        self.batch_size = crm_settings.sync_scheduler_batch_size or connector.max_batch
        self.max_instances = (
            crm_settings.sync_scheduler_max_instances or connector.default_concurrency
        )
        self.outage = outage.Policy.of(crm_settings)
        # Requests the connector sent that are not yet added to the day's count (budget.py).
        self.requests_sent = 0
        # Probes that had failed in this outage when this worker took the current one.
        self._failed_probes = 0
        # The start of the outage this worker last told its `on_outage` listeners about.
        self._outage_seen: dt.datetime | None = None
        self.policy = RetryPolicy(
            crm_settings.sync_max_retries,
            Backoff(
                crm_settings.retry_delay_seconds,
                crm_settings.sync_retry_exponential,
                random=worker.random,
            ),
        )
        # Batches being pushed or recorded, by lease token (renewed by the heartbeat).
        self.in_flight: dict[str, asyncio.Task[None]] = {}
        # Every running lane, whether it holds a batch or is claiming the next one.
        self.lanes: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(self.max_instances)
        # The CRM's custom fields are checked before its first batch and after each pause.
        self.fields = FieldGate(connector)
        self._control = control.Control(crm)
        self._control_read = -CONTROL_TTL
        self._counts: Counter[str] = Counter()
        self._summary_started = time.monotonic()
        self.last_cycle_at: dt.datetime | None = None

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                wait = await self._cycle()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A database hiccup must not kill the loop: log, back off, try again.
                log.exception("%s: sync cycle failed; retrying", self.crm.value)
                wait = self.settings.interval_seconds
            if wait > 0:
                await self.worker.idle(self.crm, wait)
        self._log_summary(force=True)

    async def _cycle(self) -> float:
        """Claim and dispatch one batch; return how long to idle afterwards (0: go on)."""
        now = self.worker.clock()
        pause = await self._pause_left(now)
        if pause is not None:
            if pause == 0 and self._control.in_outage:
                return await self._probe()
            return pause
        if self.fields.pending:
            wait = await self._check_fields()
            if wait is not None:
                return wait
        await self._slots.acquire()
        if self.worker.stopping.is_set():
            self._slots.release()
            return 0
        # The batch that held the slot may have paused the CRM (a 429): claim nothing then.
        pause = await self._pause_left(self.worker.clock())
        if pause is not None:
            self._slots.release()
            return pause
        try:
            batch, token = await self._claim()
        except BaseException:
            self._slots.release()
            raise
        if not batch:
            self._slots.release()
            self._log_summary(force=True)
            return self.settings.interval_seconds
        lane = asyncio.create_task(self._lane(batch, token), name=f"{self.crm.value}:lane")
        self.lanes.add(lane)
        lane.add_done_callback(self._lane_done)
        self._log_summary()
        # A short batch means the queue is drained for now: rest until woken or polled.
        return 0 if len(batch) >= self.batch_size else self.settings.interval_seconds

    async def _claim(self, size: int | None = None) -> tuple[list[Claimed], str]:
        """Take the next batch under a new lease token (the lease starts now)."""
        now = self.worker.clock()
        token = uuid.uuid4().hex
        lease_until = now + dt.timedelta(seconds=self.worker.settings.lease_seconds)
        batch = await queue.claim(
            self.worker.engine,
            self.crm,
            size or self.batch_size,
            self.worker.id,
            token,
            now,
            lease_until,
        )
        self.last_cycle_at = now
        return batch, token

    async def run_once(self) -> int:
        """Claim one batch and push it to the end; the number of rows it held (0: none due)."""
        batch, token = await self._claim()
        if batch:
            await self._process(batch, token)
        return len(batch)

    async def _probe(self) -> float:
        """The CRM is in an outage and its probe is due: take it (one worker in all wins) and
        send one contact in a lane of its own. How long to idle afterwards."""
        now = self.worker.clock()
        lease_until = now + dt.timedelta(seconds=self.worker.settings.lease_seconds)
        async with self.worker.engine.begin() as conn:
            failed = await outage.take_probe(conn, self.crm, self.worker.id, now, lease_until)
        self._control_read = -CONTROL_TTL  # see the probe's new time (ours or another's)
        if failed is None:
            return 0  # another worker took it
        await self._slots.acquire()
        try:
            batch, token = await self._claim(size=1)
        except BaseException:
            self._slots.release()
            raise
        if not batch:
            self._slots.release()
            async with self.worker.engine.begin() as conn:
                await outage.give_back_probe(conn, self.crm, self.worker.id, self.worker.clock())
            return self.settings.interval_seconds
        log.info(
            "%s: probing whether the vendor is back (probe %d of this outage)",
            self.crm.value,
            failed + 1,
        )
        self._failed_probes = failed
        lane = asyncio.create_task(
            self._lane(batch, token, probe=True), name=f"{self.crm.value}:probe"
        )
        self.lanes.add(lane)
        lane.add_done_callback(self._lane_done)
        return 0

    async def _lane(self, batch: list[Claimed], token: str, *, probe: bool = False) -> None:
        """Push and record `batch`; while batches come full, claim the next one and go on.

        The lane holds its slot throughout. It ends at a short batch (the queue is drained for
        now: the loop rests), when the worker stops, or when the CRM is paused. A `probe` lane's
        first batch is the outage probe.
        """
        lane = asyncio.current_task()
        assert lane is not None
        while batch:
            self.in_flight[token] = lane
            metrics.IN_FLIGHT.labels(self.crm.value).inc()
            try:
                full = len(batch) >= self.batch_size
                batch, next_token = await self._process(batch, token, claim_next=full, probe=probe)
                probe = False
            finally:
                self.in_flight.pop(token, None)
                metrics.IN_FLIGHT.labels(self.crm.value).dec()
            token = next_token
            self._log_summary()

    async def _durably(self, write: Callable[[], Awaitable[T]]) -> T:
        """Run a record transaction, again on a new connection if the database connection was
        lost during it (a restarted server, a terminated backend, a network cut).

        A lost connection rolled the transaction back, so nothing was written and trying again
        is safe; the vendor's answers are kept instead of being thrown away, and the lease
        fence still decides whether they apply. Other errors, and a third loss, go up.
        """
        for attempt in range(1, RECORD_ATTEMPTS + 1):
            try:
                return await write()
            except DBAPIError as exc:
                if not exc.connection_invalidated or attempt == RECORD_ATTEMPTS:
                    raise
                log.warning(
                    "%s: the database connection was lost while recording a batch (%s); "
                    "trying again",
                    self.crm.value,
                    type(exc.orig).__name__,
                )
                await asyncio.sleep(RECORD_RETRY_SECONDS * attempt)
        raise AssertionError("unreachable")

    def _lane_done(self, lane: asyncio.Task[None]) -> None:
        if not lane.cancelled() and lane.exception() is not None:
            # Its rows stay Processing until the lease runs out; then any worker retries them.
            log.error(
                "%s: a batch failed before its outcome was recorded",
                self.crm.value,
                exc_info=lane.exception(),
            )
        self.lanes.discard(lane)
        self._slots.release()

    async def _pause_left(self, now: dt.datetime) -> float | None:
        """Seconds to wait while the CRM is paused (manual, timed or in an outage), else None.

        In an outage whose probe is due: 0 (the loop then tries to take the probe).
        """
        if time.monotonic() - self._control_read >= CONTROL_TTL:
            async with self.worker.read_engine.connect() as conn:
                self._control = (await control.load(conn))[self.crm]
            self._control_read = time.monotonic()
            await self._note_outage()
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
                await self._budget_used_up(used, now)
                return await self._pause_left(now)
        return None

    async def _check_fields(self) -> float | None:
        """Check the CRM's fields; None when it may sync, else how long to wait (see fields.py)."""
        verdict = await self.fields.check()
        if isinstance(verdict, Pause):
            until = self.worker.clock() + dt.timedelta(seconds=self.settings.auth_retry_seconds)
            await self._pause(verdict.kind, until, verdict.reason)
            return self.settings.interval_seconds
        if isinstance(verdict, Wait):
            log.warning("%s: could not check the fields: %s", self.crm.value, verdict.reason)
            if verdict.vendor_down:
                await self._judge(True, verdict.reason, probe=False)
            return verdict.seconds or self.settings.interval_seconds
        return None

    # -- one batch -----------------------------------------------------------------------------

    async def _process(
        self, batch: list[Claimed], token: str, *, claim_next: bool = False, probe: bool = False
    ) -> tuple[list[Claimed], str]:
        """Push `batch` and record its outcome.

        With `claim_next`, and unless the worker is stopping or the CRM paused (the push may
        just have paused it), the next batch is claimed with the record (one transaction on
        SQLite) and returned with its lease token; otherwise, or when nothing is due, an empty
        batch.
        """
        started = self.worker.clock()
        t0 = time.perf_counter()
        updates: list[RowUpdate] = []
        to_push: list[Claimed] = []
        fingerprints: list[str] = []
        for row in batch:
            fingerprint = self.connector.fingerprint(row.payload)
            if fingerprint == row.synced_hash:
                updates.append(unchanged(row))  # the CRM already holds exactly this
            else:
                to_push.append(row)
                fingerprints.append(fingerprint)
        if to_push:
            updates += await self._push(to_push, fingerprints, probe=probe)
        elif probe:
            # Nothing needed sending (unchanged): no evidence; the probe is due again.
            async with self.worker.engine.begin() as conn:
                await outage.give_back_probe(conn, self.crm, self.worker.id, self.worker.clock())
        if self.requests_sent:
            await self._count_requests()
        duration = time.perf_counter() - t0
        metrics.VENDOR_LATENCY.labels(self.crm.value).observe(duration)
        timing = queue.Timing(self.worker.id, started, int(duration * 1000))
        now = self.worker.clock()
        following: tuple[list[Claimed], str] = ([], "")
        more = claim_next and not self.worker.stopping.is_set()
        if more and await self._pause_left(now) is None:
            next_token = uuid.uuid4().hex
            lease_until = now + dt.timedelta(seconds=self.worker.settings.lease_seconds)
            then = queue.NextClaim(
                self.crm, self.batch_size, self.worker.id, next_token, now, lease_until
            )
            recorded, claimed = await self._durably(
                lambda: queue.record_then_claim(
                    self.worker.engine, self.crm, token, updates, now, timing, then
                )
            )
            self.last_cycle_at = now
            following = (claimed, next_token)
        else:
            recorded = await self._durably(
                lambda: queue.record(self.worker.engine, self.crm, token, updates, now, timing)
            )
        if recorded.lost:
            metrics.LEASE_LOST.labels(self.crm.value).inc(len(recorded.lost))
            log.warning(
                "%s: %d result(s) not applied: their rows changed or were reclaimed meanwhile",
                self.crm.value,
                len(recorded.lost),
            )
        outcomes = Counter(update.outcome.value for update in updates)
        for outcome, count in outcomes.items():
            metrics.PUSHES.labels(self.crm.value, outcome).inc(count)
        self._counts.update(outcomes)
        if recorded.lost:
            self._counts["lost"] += len(recorded.lost)
        self.worker.rows_done += len(updates)
        if self.worker.hooks.on_batch:
            # Listeners (alerts) see only what was applied, not results a person overrode.
            lost = set(recorded.lost)
            applied = [u for u in updates if u.state_id not in lost] if lost else updates
            for listener in self.worker.hooks.on_batch:
                await _quietly(listener(self.crm, applied))
        return following

    async def _push(
        self, rows: list[Claimed], fingerprints: list[str], *, probe: bool = False
    ) -> list[RowUpdate]:
        now = self.worker.clock()
        try:
            results = await self.connector.push([row.payload for row in rows])
            if len(results) != len(rows):
                raise ConnectorError(
                    f"connector returned {len(results)} results for {len(rows)} rows"
                )
        except RateLimited as exc:
            await self._vendor_answered(probe)
            metrics.RATE_LIMITED.labels(self.crm.value).inc()
            until = now + dt.timedelta(seconds=exc.retry_after)
            await self._pause(control.PauseKind.rate_limit, until, exc.message)
            return self._partial(rows, fingerprints, exc, Outcome.rate_limited, until, None)
        except (AuthFailed, Misconfigured) as exc:
            await self._vendor_answered(probe)
            kind = (
                control.PauseKind.auth
                if isinstance(exc, AuthFailed)
                else control.PauseKind.configuration
            )
            until = now + dt.timedelta(seconds=self.settings.auth_retry_seconds)
            await self._pause(kind, until, exc.message)
            outcome = Outcome.auth_failed if isinstance(exc, AuthFailed) else Outcome.misconfigured
            return self._partial(rows, fingerprints, exc, outcome, until, exc.message)
        except ConnectorError as exc:
            # Transient or another batch-wide failure: rows the vendor answered before it keep
            # their answer (an accepted row is Complete, with its vendor id); the others retry.
            partial: list[RowResult | None] = exc.partial or [None] * len(rows)
            down = outage.vendor_down(partial)
            if isinstance(exc, Transient) and down is None:
                down = True  # a timeout or no connection before any answer
            held = await self._judge(down, exc.message, probe)
            if held is None and isinstance(exc, Unreachable):
                # Never sent, so never attempted: back soon, no attempt spent.
                held = now + self.outage.interval(0)
            return self._after_failure(rows, fingerprints, partial, exc, held, now)
        except Exception as exc:
            log.exception("%s: connector failed unexpectedly", self.crm.value)
            if probe:
                await self._judge(None, "", probe)
            reason = f"internal error in the {self.crm.value} connector: {type(exc).__name__}"
            return [retry_or_give_up(row, reason, None, self.policy, now) for row in rows]
        down = outage.vendor_down(results)
        if down:
            reason = next(r.reason for r in results if isinstance(r, Retry))
            held = await self._judge(down, reason, probe)
            if held is not None:
                return self._after_failure(rows, fingerprints, results, None, held, now)
        else:
            await self._judge(down, "", probe)
        return [
            apply_result(row, result, fingerprint, self.policy, now)
            for row, result, fingerprint in zip(rows, results, fingerprints, strict=True)
        ]

    def _after_failure(
        self,
        rows: list[Claimed],
        fingerprints: list[str],
        results: Sequence[RowResult | None],
        exc: ConnectorError | None,
        held: dt.datetime | None,
        now: dt.datetime,
    ) -> list[RowUpdate]:
        """A batch that failed as a whole (`exc`) or on the vendor's side: rows the vendor
        answered keep their answer. The others spend an attempt, unless they are `held`: the
        CRM is in an outage or the request was never sent. Those go back unattempted, due again
        at `held`.
        """
        out = []
        for row, fingerprint, result in zip(rows, fingerprints, results, strict=True):
            if held is not None and (result is None or outage.vendor_failure(result)):
                # A row's own vendor failure (a Retry) says more than the batch's exception.
                cause = result if isinstance(result, Retry) else exc
                assert cause is not None
                reason = cause.reason if isinstance(cause, Retry) else cause.message
                out.append(release(row, Outcome.unavailable, held, reason, cause.http_status))
            elif result is None:
                assert exc is not None
                out.append(retry_or_give_up(row, exc.message, exc.http_status, self.policy, now))
            else:
                out.append(apply_result(row, result, fingerprint, self.policy, now))
        return out

    async def _judge(self, down: bool | None, reason: str, probe: bool) -> dt.datetime | None:
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
            await self._vendor_answered(probe)
            return None
        now = self.worker.clock()
        if probe:
            async with self.worker.engine.begin() as conn:
                until = await outage.probe_failed(
                    conn, self.crm, self.worker.id, self._failed_probes, reason, now, self.outage
                )
            log.warning(
                "%s: still down (%s); next probe at %s",
                self.crm.value,
                reason,
                until.isoformat(timespec="seconds"),
            )
            self._control = replace(
                self._control, next_probe_at=until, outage_probes=self._failed_probes + 1
            )
            self._control_read = time.monotonic()
            return until
        async with self.worker.engine.begin() as conn:
            failure = await outage.record_failure(conn, self.crm, reason, now, self.outage)
        self._control = replace(
            self._control,
            outage_failures=failure.failures,
            outage_since=failure.since,
            next_probe_at=failure.next_probe_at,
        )
        await self._note_outage()
        if failure.opened:
            self._control = replace(self._control, outage_reason=reason, outage_probes=0)
            self._control_read = time.monotonic()
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
                await _quietly(listener(self.crm, control.PauseKind.outage, reason))
        return failure.next_probe_at

    async def _note_outage(self) -> None:
        """Tell the `on_outage` listeners when this worker sees an outage begin or end."""
        since = self._control.outage_since
        if since != self._outage_seen:
            self._outage_seen = since
            for listener in self.worker.hooks.on_outage:
                await _quietly(listener(self.crm, since is not None))

    async def _vendor_answered(self, probe: bool) -> None:
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
            self._control_read = time.monotonic()
            await self._note_outage()
        elif self._control.outage_failures > 0:
            async with self.worker.engine.begin() as conn:
                await outage.reset_failures(conn, self.crm, now)
            self._control = replace(self._control, outage_failures=0)

    def count_request(self) -> None:
        """One HTTP request sent to the vendor (called by the client's request hook)."""
        self.requests_sent += 1

    async def _count_requests(self) -> None:
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
            await self._budget_used_up(used, now)

    async def _budget_used_up(self, used: int, now: dt.datetime) -> None:
        limit = self.settings.daily_request_limit
        zone = self.settings.daily_request_time_zone
        _, reset = budget.vendor_day(now, self.settings.time_zone)
        reason = (
            f"the daily request budget is used: {used} of {limit} requests "
            f"({self.crm.value.upper()}_DAILY_REQUEST_LIMIT); syncing goes on when the day "
            f"resets at midnight {zone}"
        )
        await self._pause(control.PauseKind.budget, reset, reason)

    def _partial(
        self,
        rows: list[Claimed],
        fingerprints: list[str],
        exc: ConnectorError,
        outcome: Outcome,
        until: dt.datetime,
        message: str | None,
    ) -> list[RowUpdate]:
        """Rows the vendor answered keep their result; the others go back, no attempt spent."""
        now = self.worker.clock()
        partial: list[RowResult | None] = exc.partial or [None] * len(rows)
        out = []
        for row, fingerprint, result in zip(rows, fingerprints, partial, strict=True):
            if result is None:
                out.append(release(row, outcome, until, message, exc.http_status))
            else:
                out.append(apply_result(row, result, fingerprint, self.policy, now))
        return out

    async def _pause(self, kind: control.PauseKind, until: dt.datetime, reason: str) -> None:
        log.warning(
            "%s paused until %s (%s): %s", self.crm.value, until.isoformat(), kind.value, reason
        )
        async with self.worker.engine.begin() as conn:
            await control.pause_until(conn, self.crm, until, kind, reason, self.worker.clock())
        self._control = replace(
            self._control, paused_until=until, pause_kind=kind.value, pause_reason=reason
        )
        self._control_read = time.monotonic()
        for listener in self.worker.hooks.on_pause:
            await _quietly(listener(self.crm, kind, reason))

    def _log_summary(self, force: bool = False) -> None:
        """One line per CRM per cycle (at most every SUMMARY_SECONDS while busy)."""
        elapsed = time.monotonic() - self._summary_started
        if not self._counts or (not force and elapsed < SUMMARY_SECONDS):
            return
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self._counts.items()) if v)
        total = sum(v for k, v in self._counts.items() if k != "lost")
        log.info(
            "%s: %s in %.1f s (%.0f rows/s)",
            self.crm.value,
            parts,
            elapsed,
            total / elapsed if elapsed else 0,
            extra={"crm": self.crm.value, "counts": dict(self._counts)},
        )
        self._counts.clear()
        self._summary_started = time.monotonic()


@contextlib.contextmanager
def _process_tuning(switch_interval_ms: float) -> Iterator[None]:
    """Tune the interpreter for a sync while workers run in this process; restore it after.

    - GIL switch interval (`switch_interval_ms`; 0 leaves Python's 5 ms): on SQLite without the
      writer process, the outcome writes and claims run in a thread, on the only write
      connection, and take the GIL back after every statement while the event loop builds and
      parses vendor requests. At 5 ms such a thread can wait milliseconds each time, holding
      that connection, and every lane's next write waits behind it. Measured at 0.2 ms, SQLite,
      one worker: see bench/README.md ("GIL switch interval").
    - Cycle collector: a sync allocates many short-lived objects per contact, and at the default
      thresholds every few hundred batches trigger a full collection that walks the whole heap:
      the app, its modules, SQLAlchemy's caches (measured, SQLite, 50,000 contacts: 0.26 s of
      the event loop's 2.1 CPU-s, 78 ms per full one). The objects alive now are frozen, never
      walked; with the first threshold at 2,000 instead of Python's 700, fewer of a batch's
      objects live long enough to be seen: 0.03 s in the same run. 10,000 saved 0.01 s more but
      let cyclic garbage pile up: +17 MB of peak RSS over 200,000 contacts (2,000: +2 MB).
      Reference counting frees everything as before; only cycles wait a little longer. No
      collection first: garbage frozen with the rest waits until the end, and a test process
      need not walk its whole heap per worker.

    Workers side by side in one process (tests) share it: the first one in sets it, the last one
    out restores Python's values, so a process that runs workers again collects what it made.
    """
    if _tuning.workers == 0:
        _tuning.saved = (sys.getswitchinterval(), gc.get_threshold())
        if switch_interval_ms > 0:
            sys.setswitchinterval(switch_interval_ms / 1000)
        gc.freeze()
        gc.set_threshold(2_000, *_tuning.saved[1][1:])
    _tuning.workers += 1
    try:
        yield
    finally:
        _tuning.workers -= 1
        if _tuning.workers == 0:
            interval, thresholds = _tuning.saved
            sys.setswitchinterval(interval)
            gc.set_threshold(*thresholds)
            gc.unfreeze()


@dataclass
class _Tuning:
    """What `_process_tuning` changed: how many workers use it, and Python's values before."""

    workers: int = 0
    saved: tuple[float, tuple[int, ...]] = (0.005, (700, 10, 10))


_tuning = _Tuning()


def _counter(runner: CrmRunner) -> Callable[[httpx.Request], Awaitable[None]]:
    async def count(request: httpx.Request) -> None:
        runner.count_request()

    return count


async def _quietly(awaitable: Awaitable[None]) -> None:
    """Run a listener; its failure is logged and never disturbs the sync."""
    try:
        await awaitable
    except Exception:
        log.exception("a sync listener failed")


class Worker:
    """All CRM loops of one process, plus heartbeat, pruning and the PostgreSQL listener."""

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        crms: Sequence[Crm] | None = None,
        *,
        connectors: dict[Crm, Connector] | None = None,
        clock: Clock = utcnow,
        wakeup: Wakeup | None = None,
        rand: Callable[[], float] = random.random,
        hooks: Hooks | None = None,
    ) -> None:
        from crmsync.db import read_only

        self.engine = engine
        self.read_engine = read_only(engine)
        self.settings = settings
        self.clock = clock
        self.random = rand
        self.wakeup = wakeup or Wakeup()
        self.hooks = hooks or Hooks()
        self.id = heartbeat.worker_id(uuid.uuid4().hex[:6])
        self.stopping = asyncio.Event()
        self.rows_done = 0
        # time.monotonic() of the last heartbeat written (registration counts): readiness.
        self.beat_at: float | None = None
        self.runners: dict[Crm, CrmRunner] = {}
        self.disabled: dict[Crm, str] = {}
        self._own_connectors: list[Connector] = []
        self._own_clients: list[httpx.AsyncClient] = []
        for crm in crms or list(Crm):
            connector = (connectors or {}).get(crm)
            if connector is None:
                missing = settings.crm(crm).missing()
                if missing:
                    self.disabled[crm] = missing
                    log.warning(
                        "%s is disabled: %s; contacts selected for it stay Queued until it is "
                        "configured",
                        crm.value,
                        missing,
                    )
                    continue
                client = make_client(headers={WORKER_HEADER: self.id})
                connector = create_connector(crm, settings, client)
                self._own_connectors.append(connector)
                self._own_clients.append(client)
            runner = CrmRunner(self, crm, connector, settings.crm(crm))
            self.runners[crm] = runner
            if connector in self._own_connectors and settings.crm(crm).daily_request_limit:
                # Count every request the connector sends, for the daily budget (budget.py).
                self._own_clients[-1].event_hooks["request"].append(_counter(runner))

    async def idle(self, crm: Crm, seconds: float) -> None:
        """Sleep until woken for `crm`, stopped, or `seconds` pass."""
        if not self.stopping.is_set():
            await self.wakeup.wait(crm, seconds)

    def not_ready(self) -> str | None:
        """Why this worker cannot do its work now (readiness), or None."""
        if self.stopping.is_set():
            return "the worker is stopping"
        if self.beat_at is None:
            return "the worker has not registered yet"
        period = heartbeat.period(self.settings.lease_seconds)
        age = time.monotonic() - self.beat_at
        if age > heartbeat.MISSED_BEATS * period:
            return (
                f"the worker's last heartbeat was {age:.0f} s ago (one is due every {period:g} s):"
                " it cannot write to the database"
            )
        return None

    def stop(self) -> None:
        """Stop claiming (in-flight batches finish in `run`'s shutdown)."""
        self.stopping.set()
        self.wakeup.notify(list(Crm))

    async def run(self) -> None:
        """Run until `stop()`; then shut down gracefully. Connectors are closed on the way out."""
        with _process_tuning(self.settings.thread_switch_interval_ms):
            await self._run()

    async def _run(self) -> None:
        now = self.clock()
        async with self.engine.begin() as conn:
            await heartbeat.register(conn, self.id, list(self.runners), now)
        self.beat_at = time.monotonic()
        if self.runners and self.settings.sqlite_writer_process:
            await db.start_writer(self.engine)
        log.info(
            "worker %s started for %s",
            self.id,
            ", ".join(crm.value for crm in self.runners) or "no CRM (none is configured)",
        )
        helpers = [
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
            asyncio.create_task(self._prune(), name="prune"),
        ]
        if self.engine.dialect.name == "postgresql":
            helpers.append(asyncio.create_task(self._listen(), name="listen"))
            helpers.append(asyncio.create_task(self._compact_counts(), name="compact-counts"))
        elif db.is_sqlite_file(self.engine) and self.runners:
            helpers.append(asyncio.create_task(self._watch(), name="watch"))
        loops = [
            asyncio.create_task(runner.run(self.stopping), name=f"loop:{crm.value}")
            for crm, runner in self.runners.items()
        ]
        try:
            if loops:
                await asyncio.gather(*loops)
            else:
                await self.stopping.wait()
        finally:
            for task in loops:
                task.cancel()
            await self._drain()
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await db.stop_writer(self.engine)  # after `_drain`, which writes through it
            async with self.engine.begin() as conn:
                await heartbeat.stopped(conn, self.id, self.clock())
            for connector in self._own_connectors:
                await connector.aclose()
            for client in self._own_clients:
                await client.aclose()
            log.info("worker %s stopped", self.id)

    async def _drain(self) -> None:
        """Give in-flight batches the grace period, then cancel them and hand their rows back.

        Lanes see `stopping` and claim nothing more: each finishes the batch it holds.
        """
        lanes = [lane for runner in self.runners.values() for lane in runner.lanes]
        if not lanes:
            return
        log.info(
            "waiting up to %ss for %d batch(es) in flight",
            self.settings.shutdown_grace_seconds,
            len(lanes),
        )
        _, pending = await asyncio.wait(lanes, timeout=self.settings.shutdown_grace_seconds)
        # The batches still held, by their current lease token, before cancelling drops them.
        unfinished = [
            (runner, token)
            for runner in self.runners.values()
            for token, lane in runner.in_flight.items()
            if lane in pending
        ]
        for lane in pending:
            lane.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        now = self.clock()
        for runner, token in unfinished:
            timing = queue.Timing(self.id, now, 0)
            count = await queue.release_lease(self.engine, runner.crm, token, now, timing)
            log.warning("%s: handed back %d unfinished row(s)", runner.crm.value, count)

    async def _heartbeat(self) -> None:
        period = heartbeat.period(self.settings.lease_seconds)
        while True:
            await asyncio.sleep(period)
            try:
                now = self.clock()
                last = max(
                    (r.last_cycle_at for r in self.runners.values() if r.last_cycle_at),
                    default=None,
                )
                async with self.engine.begin() as conn:
                    await heartbeat.beat(conn, self.id, now, last, self.rows_done)
                tokens = [t for r in self.runners.values() for t in r.in_flight]
                until = now + dt.timedelta(seconds=self.settings.lease_seconds)
                await queue.renew(self.engine, tokens, until)
                self.beat_at = time.monotonic()
                metrics.HEARTBEAT.set(time.time())
            except Exception:
                log.exception("heartbeat failed")

    async def _prune(self) -> None:
        while True:
            try:
                before = self.clock() - dt.timedelta(days=self.settings.event_retention_days)
                while True:
                    async with self.engine.begin() as conn:
                        if await events.prune(conn, before) == 0:
                            break
            except Exception:
                log.exception("pruning sync events failed")
            await asyncio.sleep(PRUNE_SECONDS)

    async def _compact_counts(self) -> None:
        while True:
            await asyncio.sleep(COMPACT_COUNTS_SECONDS)
            try:
                async with self.engine.begin() as conn:
                    await counts.compact(conn)
            except Exception:
                log.exception("compacting the row count deltas failed")

    async def _watch(self) -> None:
        """SQLite: wake the loops when another connection commits, for want of NOTIFY.

        `PRAGMA data_version` on one connection changes whenever any other connection, in any
        process, has committed since it last asked; a selection made through another process's
        API is seen within `WATCH_SECONDS` instead of at the next poll. Any commit wakes the
        loops (another worker's heartbeat too): a wake with nothing due costs one empty claim.
        """
        while True:
            try:
                async with self.read_engine.connect() as conn:
                    seen = None
                    while True:
                        version = (await conn.exec_driver_sql("PRAGMA data_version")).scalar()
                        await conn.rollback()  # hold no read snapshot between looks
                        if seen is not None and version != seen:
                            self.wakeup.notify(self.runners)
                        seen = version
                        await asyncio.sleep(WATCH_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning(
                    "watching the SQLite file failed; polling until it works", exc_info=True
                )
                await asyncio.sleep(5)

    async def _listen(self) -> None:
        """LISTEN for selections committed by other processes; reconnect after errors."""
        while True:
            try:
                async with self.engine.connect() as conn:
                    raw = await conn.get_raw_connection()
                    driver = raw.driver_connection
                    assert driver is not None

                    def _on_notify(_c: object, _pid: int, _ch: str, payload: str) -> None:
                        self.wakeup.notify_payload(payload)

                    await driver.add_listener(CHANNEL, _on_notify)
                    try:
                        await asyncio.Event().wait()
                    finally:
                        with contextlib.suppress(Exception):
                            await driver.remove_listener(CHANNEL, _on_notify)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("LISTEN connection lost; polling until it is back", exc_info=True)
                await asyncio.sleep(5)
