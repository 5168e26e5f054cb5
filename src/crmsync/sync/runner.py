"""The per-CRM runner: claims batches and pushes them in lanes, at the vendor's pace.

One loop per CRM claims a batch (short transaction) and hands it to a lane, a task that pushes
it (no transaction open) and records the outcome (short transaction); up to
`{CRM}_SYNC_SCHEDULER_MAX_INSTANCES` lanes run at once, so claims overlap vendor calls. Each
lane holds one of those slots in an `async with` from before its first claim to its end, so no
path can forget to give it back. A lane whose batch came full claims the next batch itself, with
its outcome write (one transaction on SQLite, `record.record_then_claim`), and goes on: a SQLite
sync then commits once per batch, not twice. A short or empty batch ends it; the loop then rests
`{CRM}_SYNC_SCHEDULER_INTERVAL_SECONDS`, or less if a selection wakes it.

Whether the CRM may sync now (pauses, outage, budget, fields) is the gate's (`gate.py`); turning
the vendor's answers into row updates is `push.py`'s.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.exc import DBAPIError

from crmsync import metrics
from crmsync.connectors.base import Connector
from crmsync.enums import Crm
from crmsync.settings import CrmSettings
from crmsync.sync import outage, queue
from crmsync.sync.backoff import Backoff
from crmsync.sync.gate import CONTROL_TTL, Gate
from crmsync.sync.hooks import quietly
from crmsync.sync.push import Push
from crmsync.sync.state import Claimed, RetryPolicy, RowUpdate, unchanged
from crmsync.writes import is_write_conflict

if TYPE_CHECKING:
    from crmsync.sync.worker import Worker

__all__ = ["RECORD_ATTEMPTS", "RECORD_RETRY_SECONDS", "CrmRunner"]

log = logging.getLogger(__name__)

# A record transaction whose database connection was lost is tried this many times in all,
# waiting RECORD_RETRY_SECONDS x the attempt number in between.
RECORD_ATTEMPTS = 3
RECORD_RETRY_SECONDS = 0.5
SUMMARY_SECONDS = 10.0
T = TypeVar("T")
# A lane's first batch: the rows, their lease token, and how long the loop idles afterwards.
First = tuple[list[Claimed], str, float]


def _settle(head: asyncio.Future[float], wait: float) -> None:
    if not head.done():  # a cancelled loop no longer waits for it
        head.set_result(wait)


class CrmRunner:
    """Drains one CRM's queue."""

    def __init__(
        self, worker: Worker, crm: Crm, connector: Connector, crm_settings: CrmSettings
    ) -> None:
        self.worker = worker
        self.crm = crm
        self.connector = connector
        self.settings = crm_settings
        self.batch_size = crm_settings.sync_scheduler_batch_size or connector.max_batch
        self.max_instances = (
            crm_settings.sync_scheduler_max_instances or connector.default_concurrency
        )
        self.policy = RetryPolicy(
            crm_settings.sync_max_retries,
            Backoff(
                crm_settings.retry_delay_seconds,
                crm_settings.sync_retry_exponential,
                random=worker.random,
            ),
        )
        self.gate = Gate(worker, crm, connector, crm_settings)
        self.fields = self.gate.fields
        self.push = Push(crm, connector, crm_settings, self.policy, self.gate, worker.clock)
        # Batches being pushed or recorded, by lease token (renewed by the heartbeat).
        self.in_flight: dict[str, asyncio.Task[None]] = {}
        # Every running lane, whether it waits for a slot, holds a batch or claims the next one.
        self.lanes: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(self.max_instances)
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
        pause = await self.gate.pause_left(self.worker.clock())
        if pause is not None:
            if pause == 0 and self.gate.in_outage:
                return await self._probe()
            return pause
        if self.fields.pending:
            wait = await self.gate.check_fields()
            if wait is not None:
                return wait
        return await self._open_lane(self._first_batch)

    async def _first_batch(self) -> First:
        """A lane's first claim, made once it holds its slot."""
        if self.worker.stopping.is_set():
            return [], "", 0
        # The batch that held the slot may have paused the CRM (a 429): claim nothing then.
        pause = await self.gate.pause_left(self.worker.clock())
        if pause is not None:
            return [], "", pause
        batch, token = await self._claim()
        if not batch:
            self._log_summary(force=True)
            return [], "", self.settings.interval_seconds
        self._log_summary()
        # A short batch means the queue is drained for now: rest until woken or polled.
        return batch, token, 0 if len(batch) >= self.batch_size else self.settings.interval_seconds

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
        self.gate.control_read = -CONTROL_TTL  # see the probe's new time
        if failed is None:
            return 0  # another worker took it
        return await self._open_lane(functools.partial(self._probe_batch, failed), probe=True)

    async def _probe_batch(self, failed: int) -> First:
        batch, token = await self._claim(size=1)
        if not batch:
            async with self.worker.engine.begin() as conn:
                await outage.give_back_probe(conn, self.crm, self.worker.id, self.worker.clock())
            return [], "", self.settings.interval_seconds
        log.info(
            "%s: probing whether the vendor is back (probe %d of this outage)",
            self.crm.value,
            failed + 1,
        )
        self.gate.failed_probes = failed
        return batch, token, 0

    # -- lanes ---------------------------------------------------------------------------------

    async def _open_lane(self, first: Callable[[], Awaitable[First]], probe: bool = False) -> float:
        """Start a lane that takes a slot and then `first`'s batch; how long to idle after."""
        head: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        name = f"{self.crm.value}:{'probe' if probe else 'lane'}"
        lane = asyncio.create_task(self._lane(first, head, probe), name=name)
        self.lanes.add(lane)
        lane.add_done_callback(self._lane_done)
        return await head

    async def _lane(
        self, first: Callable[[], Awaitable[First]], head: asyncio.Future[float], probe: bool
    ) -> None:
        """Hold a slot; claim a batch, push and record it; while batches come full, go on.

        `head` tells the loop how its cycle went once the first claim is made (or failed). The
        lane ends at a short batch (the queue is drained for now), when the worker stops, or
        when the CRM is paused. A `probe` lane's first batch is the outage probe.
        """
        try:
            async with self._slots:
                batch, token, wait = await first()
                _settle(head, wait)
                await self._push_while_full(batch, token, probe)
        except Exception as exc:
            if head.done():
                raise
            head.set_exception(exc)  # the claim failed: the loop logs it and backs off
        finally:
            _settle(head, 0)

    async def _push_while_full(self, batch: list[Claimed], token: str, probe: bool) -> None:
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

    def _lane_done(self, lane: asyncio.Task[None]) -> None:
        if not lane.cancelled() and lane.exception() is not None:
            # Its rows stay Processing until the lease runs out; then any worker retries them.
            log.error(
                "%s: a batch failed before its outcome was recorded",
                self.crm.value,
                exc_info=lane.exception(),
            )
        self.lanes.discard(lane)

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
            updates += await self.push(to_push, fingerprints, probe=probe)
        elif probe:
            # Nothing needed sending (unchanged): no evidence; the probe is due again.
            async with self.worker.engine.begin() as conn:
                await outage.give_back_probe(conn, self.crm, self.worker.id, self.worker.clock())
        if self.gate.requests_sent:
            await self.gate.count_requests()
        duration = time.perf_counter() - t0
        metrics.VENDOR_LATENCY.labels(self.crm.value).observe(duration)
        timing = queue.Timing(self.worker.id, started, int(duration * 1000))
        recorded, following = await self._record(token, updates, timing, claim_next)
        await self._recorded(updates, recorded)
        return following

    async def _record(
        self, token: str, updates: list[RowUpdate], timing: queue.Timing, claim_next: bool
    ) -> tuple[queue.Recorded, tuple[list[Claimed], str]]:
        """Record the outcome; with `claim_next` (and the CRM free to go on) claim the next."""
        engine = self.worker.engine
        now = self.worker.clock()
        more = claim_next and not self.worker.stopping.is_set()
        if more and await self.gate.pause_left(now) is None:
            next_token = uuid.uuid4().hex
            lease_until = now + dt.timedelta(seconds=self.worker.settings.lease_seconds)
            then = queue.NextClaim(
                self.crm, self.batch_size, self.worker.id, next_token, now, lease_until
            )
            recorded, claimed = await self._durably(
                lambda: queue.record_then_claim(engine, self.crm, token, updates, now, timing, then)
            )
            self.last_cycle_at = now
            return recorded, (claimed, next_token)
        recorded = await self._durably(
            lambda: queue.record(engine, self.crm, token, updates, now, timing)
        )
        return recorded, ([], "")

    async def _recorded(self, updates: list[RowUpdate], recorded: queue.Recorded) -> None:
        """Count the batch and tell the listeners what was applied."""
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
                await quietly(listener(self.crm, applied))

    async def _durably(self, write: Callable[[], Awaitable[T]]) -> T:
        """Run a record transaction, again if the database connection was lost during it (a
        restarted server, a terminated backend, a network cut) or PostgreSQL aborted it to break
        a deadlock or a serialization conflict with another transaction.

        Either way the transaction was rolled back, so nothing was written and trying again is
        safe; the vendor's answers are kept instead of being thrown away, and the lease fence
        still decides whether they apply. Other errors, and a third failure, go up.
        """
        for attempt in range(1, RECORD_ATTEMPTS + 1):
            try:
                return await write()
            except DBAPIError as exc:
                lost = exc.connection_invalidated
                if not (lost or is_write_conflict(exc)) or attempt == RECORD_ATTEMPTS:
                    raise
                log.warning(
                    "%s: %s while recording a batch (%s); trying again",
                    self.crm.value,
                    "the database connection was lost" if lost else "a conflict",
                    type(exc.orig).__name__,
                )
                await asyncio.sleep(RECORD_RETRY_SECONDS * attempt)
        raise AssertionError("unreachable")

    def count_request(self) -> None:
        """One HTTP request sent to the vendor (called by the client's request hook)."""
        self.gate.count_request()

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
