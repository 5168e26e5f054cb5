"""The worker's lifecycle: start, run the CRM runners, drain, shut down; and beside them.

A `Worker` is every CRM's runner (`runner.py`) in one process, on one host or many. It
registers itself, starts the SQLite writer process where there is one, and runs beside the
runners: a heartbeat (its row, and the renewal of the leases of batches still in flight,
`lease.renew`), event pruning, on PostgreSQL a LISTEN connection for selections committed
elsewhere and the folding of count deltas, on a SQLite file a watch for other processes'
commits. On stop, no new claims; in-flight batches get `CRMSYNC_SHUTDOWN_GRACE_SECONDS` to
finish, then are cancelled and their rows handed back (`lease.release`).

While the vendor is down (`outage.py`) a CRM claims nothing but the probe: one contact, sent by
the one worker that took the probe. With `{CRM}_DAILY_REQUEST_LIMIT` set, the requests each
connector sends are counted (`budget.py`) and the CRM pauses when the day's budget is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import counts, db, metrics, writer_process
from crmsync.clock import Clock, utcnow
from crmsync.connectors.base import Connector, make_client
from crmsync.connectors.registry import create_connector
from crmsync.enums import Crm
from crmsync.settings import Settings
from crmsync.sync import events, heartbeat, queue, tuning
from crmsync.sync.gate import CONTROL_TTL
from crmsync.sync.hooks import BatchListener, Hooks, OutageListener, PauseListener
from crmsync.sync.runner import CrmRunner
from crmsync.sync.wakeup import CHANNEL, Wakeup

__all__ = [
    "CONTROL_TTL",
    "WORKER_HEADER",
    "BatchListener",
    "CrmRunner",
    "Hooks",
    "OutageListener",
    "PauseListener",
    "Worker",
]

log = logging.getLogger(__name__)

# Sent with every vendor request: which worker pushed (the sandbox's push log records it).
WORKER_HEADER = "X-Crmsync-Worker"
PRUNE_SECONDS = 3600.0
# How often the count deltas (PostgreSQL) are folded: a busy sync adds a few per batch.
COMPACT_COUNTS_SECONDS = 60.0
# SQLite: how often an idle worker looks for commits by other processes (its NOTIFY).
WATCH_SECONDS = 0.25
# PostgreSQL: the pause before listening again once the LISTEN connection ended.
LISTEN_RETRY_SECONDS = 1.0


def _counter(runner: CrmRunner) -> Callable[[httpx.Request], Awaitable[None]]:
    async def count(request: httpx.Request) -> None:
        runner.count_request()

    return count


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
        # Set once this worker hears commits made by other processes (LISTEN on PostgreSQL, the
        # first look at `PRAGMA data_version` on a SQLite file).
        self.listening = asyncio.Event()
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
        with tuning.process_tuning(self.settings.thread_switch_interval_ms):
            await self._run()

    async def _run(self) -> None:
        now = self.clock()
        async with self.engine.begin() as conn:
            await heartbeat.register(conn, self.id, list(self.runners), now)
        self.beat_at = time.monotonic()
        if self.runners and self.settings.sqlite_writer_process:
            await writer_process.start(self.engine)
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
            await writer_process.stop(self.engine)  # after `_drain`, which writes through it
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
                tokens = {crm: list(r.in_flight) for crm, r in self.runners.items()}
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
                        self.listening.set()
                        await asyncio.sleep(WATCH_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning(
                    "watching the SQLite file failed; polling until it works", exc_info=True
                )
                await asyncio.sleep(5)

    async def _listen(self) -> None:
        """LISTEN for selections committed by other processes; listen again on a new connection
        when this one ends (a server restart, a terminated backend) or cannot be made."""
        while True:
            try:
                async with self.engine.connect() as conn:
                    raw = await conn.get_raw_connection()
                    driver = raw.driver_connection
                    assert driver is not None
                    lost = asyncio.Event()

                    def _on_notify(_c: object, _pid: int, _ch: str, payload: str) -> None:
                        self.wakeup.notify_payload(payload)

                    def _on_end(_c: object, lost: asyncio.Event = lost) -> None:
                        lost.set()

                    driver.add_termination_listener(_on_end)
                    await driver.add_listener(CHANNEL, _on_notify)
                    # Work committed while no one listened is looked for now, not at the poll.
                    self.wakeup.notify(self.runners)
                    self.listening.set()
                    try:
                        await lost.wait()
                    finally:
                        self.listening.clear()
                        with contextlib.suppress(Exception):
                            await driver.remove_listener(CHANNEL, _on_notify)
                log.warning("LISTEN connection lost; listening again on a new one")
                await asyncio.sleep(LISTEN_RETRY_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("LISTEN connection lost; polling until it is back", exc_info=True)
                await asyncio.sleep(5)
