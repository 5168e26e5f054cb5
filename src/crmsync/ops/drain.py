"""`crmsync worker --until-empty`: run a worker until the queue is empty, then say how it ended.

Empty, for one CRM, means no row in Selected, Queued or Processing: nothing due now, nothing in
flight (here or on another worker), and nothing waiting for a retry. Rows waiting for a retry
backoff or a rate-limit pause are not done: they are waited for (until the timeout, if any).
Retries are finite (`{CRM}_SYNC_MAX_RETRIES`), so without a timeout the wait still ends.

A CRM that cannot make progress is not waited for: one paused by an operator, one paused after
its vendor refused our credentials or configuration, and one this process has no settings for
and no live worker serves. Its rows stay as they are; the run ends once every other CRM is
empty, and the outcome says which CRM blocked and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.enums import Crm, SyncStatus
from crmsync.ops.health import BLOCKING_PAUSES
from crmsync.ops.service import OpsService
from crmsync.ops.snapshot import Snapshot
from crmsync.runtime import check_schema, worker_hooks
from crmsync.settings import Settings
from crmsync.sync.worker import Worker

log = logging.getLogger(__name__)

# How often the queue is read while draining: every POLL_SECONDS, or less often when one read
# takes longer than READ_SHARE of that time, so that watching never slows the worker much (a
# read is a few grouped counts over the state table, so it grows with the queue).
POLL_SECONDS = 0.5
READ_SHARE = 0.1
# A database that cannot be read for this long ends the run (the worker cannot write either).
UNREADABLE_SECONDS = 30.0

_ACTIVE = (SyncStatus.Selected, SyncStatus.Queued, SyncStatus.Processing)


class Ending(IntEnum):
    """How a run ended, as the command's exit code."""

    complete = 0  # every selected contact of these CRMs is Complete
    errors = 1  # the queue is empty, and some selected contacts are in Error
    not_drained = 3  # timeout, or a CRM that cannot make progress still has rows
    interrupted = 130  # SIGINT or SIGTERM


@dataclass(frozen=True, slots=True)
class CrmProgress:
    crm: Crm
    complete: int
    error: int
    active: int  # Selected + Queued + Processing
    processing: int
    due: int  # rows a worker would claim now
    finished: int  # rows that reached Complete or Error since the run started
    blocked: str | None  # why this CRM cannot make progress now (it is then not waited for)
    next_retry: dt.datetime | None = None  # when the first waiting row comes due

    @property
    def waiting(self) -> int:
        """Rows neither due nor in flight: waiting for a retry backoff or a rate-limit pause."""
        return max(0, self.active - self.due - self.processing)

    @property
    def empty(self) -> bool:
        return self.active == 0


@dataclass(frozen=True, slots=True)
class Progress:
    crms: dict[Crm, CrmProgress]
    elapsed: float

    @property
    def settled(self) -> bool:
        """Nothing left to wait for: every CRM is empty or blocked."""
        return all(p.empty or p.blocked for p in self.crms.values())


@dataclass(frozen=True, slots=True)
class Outcome:
    ending: Ending
    progress: Progress
    timed_out: bool = False


ProgressListener = Callable[[Progress], None]


def assess(
    snap: Snapshot,
    crms: Sequence[Crm],
    disabled: dict[Crm, str],
    baseline: dict[Crm, int],
    elapsed: float,
    next_waiting: dict[str, dt.datetime] | None = None,
) -> Progress:
    """Where each CRM of the run stands, from one snapshot (and when its waiting rows are due)."""
    out = {}
    for crm in crms:
        queue = snap.queue(crm)
        active = sum(queue[st.value] for st in _ACTIVE)
        complete, error = queue[SyncStatus.Complete.value], queue[SyncStatus.Error.value]
        blocked = _blocked(snap, crm, disabled) if active else None
        out[crm] = CrmProgress(
            crm=crm,
            complete=complete,
            error=error,
            active=active,
            processing=queue[SyncStatus.Processing.value],
            due=snap.due_count(crm),
            finished=max(0, complete + error - baseline.get(crm, 0)),
            blocked=blocked,
            next_retry=(next_waiting or {}).get(crm.value),
        )
    return Progress(out, elapsed)


def _blocked(snap: Snapshot, crm: Crm, disabled: dict[Crm, str]) -> str | None:
    ctl = snap.controls[crm]
    if ctl.manual_pause:
        return f"paused by an operator; `crmsync resume --crm {crm.value}` continues"
    if (
        ctl.pause_kind in BLOCKING_PAUSES
        and ctl.paused_until is not None
        and ctl.paused_until > snap.now
    ):
        what = "credentials" if ctl.pause_kind == "auth" else "configuration"
        return (
            f"paused: the vendor refused our {what} ({ctl.pause_reason or 'no reason given'}); "
            f"fix it, then `crmsync resume --crm {crm.value}`"
        )
    if crm in disabled and not snap.serving(crm):
        return f"not configured ({disabled[crm]}) and no live worker serves it"
    return None


def _ending(progress: Progress) -> Ending:
    if any(not p.empty for p in progress.crms.values()):
        return Ending.not_drained
    if any(p.error for p in progress.crms.values()):
        return Ending.errors
    return Ending.complete


async def until_empty(
    engine: AsyncEngine,
    settings: Settings,
    crms: Sequence[Crm] | None,
    *,
    give_up_after: float | None,
    on_progress: ProgressListener,
    poll_seconds: float = POLL_SECONDS,
) -> Outcome:
    """Run a worker for `crms` (default: all) until every one is empty or blocked.

    Stops early on SIGINT/SIGTERM (in-flight batches finish, as in `crmsync worker`) and after
    `give_up_after` seconds; either way, rows not done stay queued for the next run.
    """
    await check_schema(engine)
    run = _Run(OpsService(engine, settings), list(crms or Crm), on_progress, give_up_after)
    progress = await run.start()
    if progress.settled:  # nothing to push: no worker needed
        return Outcome(_ending(progress), progress)

    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, run.stop.set)
    try:
        async with worker_hooks(settings, engine) as hooks:
            worker = Worker(engine, settings, run.scope, hooks=hooks)
            task = asyncio.create_task(worker.run(), name="worker")
            try:
                timed_out = await run.watch(task, poll_seconds)
            finally:
                worker.stop()
                await task
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    # The last batches were recorded while the worker stopped: report the final state.
    progress = await run.read()
    interrupted = run.stop.is_set() and not timed_out
    return Outcome(Ending.interrupted if interrupted else _ending(progress), progress, timed_out)


@dataclass
class _Run:
    ops: OpsService
    scope: list[Crm]
    on_progress: ProgressListener
    give_up_after: float | None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = field(default_factory=time.monotonic)
    # Per CRM, rows in Complete or Error when the run started: what it finished is the rest.
    baseline: dict[Crm, int] = field(default_factory=dict)
    disabled: dict[Crm, str] = field(default_factory=dict)

    async def start(self) -> Progress:
        settings = self.ops.settings
        self.disabled = {crm: why for crm in self.scope if (why := settings.crm(crm).missing())}
        snap = await self.ops.snapshot(with_outcomes=False)
        for crm in self.scope:
            queue = snap.queue(crm)
            self.baseline[crm] = queue[SyncStatus.Complete.value] + queue[SyncStatus.Error.value]
        return self._report(snap, await self.ops.next_waiting())

    async def read(self) -> Progress:
        snap = await self.ops.snapshot(with_outcomes=False)
        return self._report(snap, await self.ops.next_waiting())

    def _report(self, snap: Snapshot, next_waiting: dict[str, dt.datetime]) -> Progress:
        elapsed = time.monotonic() - self.started
        progress = assess(snap, self.scope, self.disabled, self.baseline, elapsed, next_waiting)
        self.on_progress(progress)
        return progress

    async def watch(self, worker: asyncio.Task[None], poll_seconds: float) -> bool:
        """Poll until the queue is settled (False) or the run is stopped or timed out (True
        when timed out); a worker that ends by itself ends the run with its error."""
        unreadable_since: float | None = None
        while True:
            read_started = time.monotonic()
            try:
                progress = await self.read()
            except Exception:
                unreadable_since = unreadable_since or time.monotonic()
                if time.monotonic() - unreadable_since > UNREADABLE_SECONDS:
                    raise
                log.warning("the queue could not be read; trying again", exc_info=True)
            else:
                unreadable_since = None
                if progress.settled:
                    return False
            if worker.done():
                worker.result()
                raise RuntimeError("the worker stopped on its own")
            left = self._left()
            if left is not None and left <= 0:
                self.stop.set()
                return True
            if self.stop.is_set():
                return False
            every = max(poll_seconds, (time.monotonic() - read_started) / READ_SHARE)
            wait = every if left is None else min(every, left)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=wait)

    def _left(self) -> float | None:
        if self.give_up_after is None:
            return None
        return self.give_up_after - (time.monotonic() - self.started)
