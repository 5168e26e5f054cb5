"""When to alert: three small state machines fed from the worker's hooks, with time passed in.

Nothing here does I/O or reads a clock; the alerter calls them with `now` and sends what they
return. All state is in memory and per process: each worker process alerts on the rows it
pushed itself (see docs/OPERATIONS.md ("Alerts") for why that is enough).

The error rate, precisely: per CRM, over the last 15 minutes (in 10-second buckets),

    rate = rows with outcome (retry or error) / rows with outcome (ok, retry or error)

i.e. failed pushes over attempted pushes. Not counted at all: `unchanged` (no call was made),
`rate_limited`, `auth_failed`, `misconfigured`, `released` (handed back without spending an
attempt; auth and configuration have their own alert). A contact retried three times counts
three times: the rate measures pushes, like the health endpoint's. Below `MIN_SAMPLE` attempted
rows in the window the rate is not judged, so one failing contact on a quiet day pages no one.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from crmsync.alerts.messages import Digest, ErrorSample, RateReading
from crmsync.enums import Crm
from crmsync.sync.state import Outcome, RowUpdate

WINDOW_MINUTES = 15
BUCKET_SECONDS = 10
MIN_SAMPLE = 20
# Errors shown in one digest (all are counted).
SAMPLES = 10
# The first digest waits this long (at most the min interval) so that a burst of failing
# batches arrives as one message rather than as a first one with a single batch.
GATHER_SECONDS = 10.0

ATTEMPTED = frozenset({Outcome.ok, Outcome.retry, Outcome.error})
FAILED = frozenset({Outcome.retry, Outcome.error})


class ErrorDigest:
    """Collects contacts that reached Error; hands out a digest at most once per interval.

    Counts are kept in full, so nothing is lost between digests; only the first `SAMPLES`
    errors of each CRM are kept to be shown.
    """

    def __init__(self, min_interval: float, gather: float = GATHER_SECONDS) -> None:
        self.min_interval = dt.timedelta(seconds=min_interval)
        self.gather = dt.timedelta(seconds=min(gather, min_interval))
        self._counts: Counter[Crm] = Counter()
        self._samples: dict[Crm, list[ErrorSample]] = {}
        self._since: dt.datetime | None = None
        self._last_sent: dt.datetime | None = None

    @property
    def pending(self) -> int:
        return sum(self._counts.values())

    def add(self, crm: Crm, updates: Sequence[RowUpdate], now: dt.datetime) -> int:
        """Count the updates that reached Error; the number added."""
        added = 0
        samples = self._samples.setdefault(crm, [])
        for update in updates:
            if update.outcome is Outcome.error:
                added += 1
                if len(samples) < SAMPLES:
                    samples.append(ErrorSample(crm, update.contact_id, update.message or ""))
        if added:
            self._counts[crm] += added
            if self._since is None:
                self._since = now
        return added

    def due_at(self) -> dt.datetime | None:
        """When the pending errors may go out (None: nothing pending)."""
        if self._since is None:
            return None
        at = self._since + self.gather
        if self._last_sent is not None:
            at = max(at, self._last_sent + self.min_interval)
        return at

    def take(self, now: dt.datetime, force: bool = False) -> Digest | None:
        """The digest if it is due (or `force`d, at shutdown), and start collecting anew."""
        due = self.due_at()
        if due is None or self._since is None or (now < due and not force):
            return None
        digest = Digest(dict(self._counts), self._pick(), self._since, now)
        self._counts.clear()
        self._samples.clear()
        self._since = None
        self._last_sent = now
        return digest

    def _pick(self) -> list[ErrorSample]:
        """Up to `SAMPLES` errors, taken in turn from each CRM so that none is hidden."""
        queues = [deque(self._samples[c]) for c in sorted(self._samples) if self._samples[c]]
        picked: list[ErrorSample] = []
        while queues and len(picked) < SAMPLES:
            for q in list(queues):
                if len(picked) < SAMPLES:
                    picked.append(q.popleft())
                if not q:
                    queues.remove(q)
        return picked


class Dedup:
    """True for a key at most once per interval."""

    def __init__(self, min_interval: float) -> None:
        self.min_interval = dt.timedelta(seconds=min_interval)
        self._last: dict[Hashable, dt.datetime] = {}

    def allow(self, key: Hashable, now: dt.datetime) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.min_interval:
            return False
        if len(self._last) > 100:  # reasons vary; forget the ones long past
            self._last = {k: t for k, t in self._last.items() if now - t < self.min_interval}
        self._last[key] = now
        return True


@dataclass
class _Bucket:
    index: int
    attempted: int = 0
    failed: int = 0
    errors: int = 0


@dataclass
class _CrmRate:
    buckets: deque[_Bucket] = field(default_factory=deque)
    attempted: int = 0
    failed: int = 0
    errors: int = 0
    last_failure: str | None = None
    alerted: bool = False  # an above-threshold alert went out and no recovery since
    last_alert: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class RateChange:
    reading: RateReading
    above: bool  # False: back at or below the threshold
    again: bool = False  # a reminder while still above


class ErrorRateWatch:
    """The per-CRM error rate over a sliding window, and when it crosses the threshold.

    Alerts when the rate goes above the threshold (not on every batch); while it stays above,
    reminds at most once per min interval; says once when it is back at or below (only after
    an alert, and only with enough rows to judge). Threshold 1 turns it off.
    """

    def __init__(
        self,
        threshold: float,
        min_interval: float,
        window_minutes: int = WINDOW_MINUTES,
        min_sample: int = MIN_SAMPLE,
    ) -> None:
        self.threshold = threshold
        self.min_interval = dt.timedelta(seconds=min_interval)
        self.window_minutes = window_minutes
        self.min_sample = min_sample
        self._crms: dict[Crm, _CrmRate] = {}

    def reading(self, crm: Crm, now: dt.datetime) -> RateReading:
        state = self._crms.setdefault(crm, _CrmRate())
        self._expire(state, now)
        return RateReading(
            crm,
            state.attempted,
            state.failed,
            state.errors,
            self.threshold,
            self.window_minutes,
            state.last_failure,
        )

    def add(self, crm: Crm, updates: Sequence[RowUpdate], now: dt.datetime) -> RateChange | None:
        attempted = failed = errors = 0
        last_failure = None
        for update in updates:
            if update.outcome in ATTEMPTED:
                attempted += 1
            if update.outcome in FAILED:
                failed += 1
                last_failure = update.message
            if update.outcome is Outcome.error:
                errors += 1
        if not attempted:
            return None  # nothing new to judge by
        state = self._crms.setdefault(crm, _CrmRate())
        index = int(now.timestamp()) // BUCKET_SECONDS
        if not state.buckets or state.buckets[-1].index != index:
            state.buckets.append(_Bucket(index))
        bucket = state.buckets[-1]
        bucket.attempted += attempted
        bucket.failed += failed
        bucket.errors += errors
        state.attempted += attempted
        state.failed += failed
        state.errors += errors
        if last_failure is not None:
            state.last_failure = last_failure
        reading = self.reading(crm, now)
        if reading.attempted < self.min_sample:
            return None
        if reading.rate > self.threshold:
            if state.last_alert is not None and now - state.last_alert < self.min_interval:
                return None
            change = RateChange(reading, above=True, again=state.alerted)
            state.alerted = True
            state.last_alert = now
            return change
        if state.alerted:
            state.alerted = False
            return RateChange(reading, above=False)
        return None

    def forget(self, crm: Crm) -> None:
        """Start the CRM's window afresh (its failures are explained by another alert)."""
        self._crms.pop(crm, None)

    def _expire(self, state: _CrmRate, now: dt.datetime) -> None:
        """Drop buckets that ended before the window's start."""
        start = now.timestamp() - self.window_minutes * 60
        while state.buckets and (state.buckets[0].index + 1) * BUCKET_SECONDS <= start:
            old = state.buckets.popleft()
            state.attempted -= old.attempted
            state.failed -= old.failed
            state.errors -= old.errors
