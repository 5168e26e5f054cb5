"""One channel's bounded queue and the task that delivers it, so that no sync ever waits on it.

`put` never blocks and never fails: when the queue is full the oldest alert is dropped and
counted. The task sends alerts in order; a failure that may heal (timeout, connection refused,
5xx, 429, SMTP 4xx) is retried after `retry_delays` (or the server's Retry-After, up to a
minute), then given up and logged; a permanent one (4xx, SMTP login refused) is logged at once.
Channels are independent: a dead webhook never holds back the e-mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence

from prometheus_client import Counter

from crmsync.alerts.channels import Channel, DeliveryError
from crmsync.alerts.messages import Alert
from crmsync.alerts.redact import Redactor

log = logging.getLogger(__name__)

CAPACITY = 100
RETRY_DELAYS = (2.0, 10.0, 30.0)
MAX_RETRY_AFTER = 60.0

DELIVERIES = Counter(
    "crmsync_alert_deliveries",
    "Alerts by channel and result (sent, failed: given up, dropped: queue full or shutdown)",
    ["channel", "result"],
)


class Outbox:
    def __init__(
        self,
        channel: Channel,
        redact: Redactor,
        *,
        capacity: int = CAPACITY,
        retry_delays: Sequence[float] = RETRY_DELAYS,
    ) -> None:
        self.channel = channel
        self._redact = redact
        self._queue: deque[Alert] = deque()
        self._capacity = capacity
        self._delays = tuple(retry_delays)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.sent = self.failed = self.dropped = 0

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def put(self, alert: Alert) -> None:
        if len(self._queue) >= self._capacity:
            old = self._queue.popleft()
            self._count("dropped")
            if self.dropped == 1 or self.dropped % 100 == 0:  # a storm logs a line, not a flood
                log.warning(
                    "alert queue for %s is full: dropped the oldest alert (%s); %d dropped so far",
                    self.channel.name,
                    old.subject,
                    self.dropped,
                )
        self._queue.append(alert)
        self._idle.clear()
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"alerts:{self.channel.kind}")

    async def wait_idle(self) -> None:
        """Return once everything queued was delivered or given up (bound it with a timeout)."""
        await self._idle.wait()

    async def aclose(self, grace: float) -> None:
        """Deliver what is queued for up to `grace` seconds, then stop."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._idle.wait()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue:
            count = len(self._queue)
            self._queue.clear()
            for _ in range(count):
                self._count("dropped")
            log.warning("shutting down: %d alert(s) for %s not delivered", count, self.channel.name)
        await self.channel.aclose()

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
            await self._deliver(self._queue.popleft())

    async def _deliver(self, alert: Alert) -> None:
        attempts = len(self._delays) + 1
        for attempt in range(1, attempts + 1):
            try:
                await self.channel.send(alert)
            except DeliveryError as exc:
                reason = self._redact(str(exc))
                if not exc.retryable or attempt == attempts:
                    self._count("failed")
                    log.error(
                        "alert %r not delivered via %s after %d attempt(s): %s; dropped",
                        alert.subject,
                        self.channel.name,
                        attempt,
                        reason,
                    )
                    return
                delay = self._delays[attempt - 1]
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, MAX_RETRY_AFTER))
                log.warning(
                    "alert delivery via %s failed (attempt %d of %d): %s; retrying in %g s",
                    self.channel.name,
                    attempt,
                    attempts,
                    reason,
                    delay,
                )
                await asyncio.sleep(delay)
            except Exception as exc:
                # A bug, not the network: retrying would fail the same way.
                self._count("failed")
                log.error(
                    "alert %r not delivered via %s: unexpected %s; dropped",
                    alert.subject,
                    self.channel.name,
                    type(exc).__name__,
                    exc_info=True,
                )
                return
            else:
                self._count("sent")
                log.info("alert %r sent via %s", alert.subject, self.channel.name)
                return

    def _count(self, result: str) -> None:
        if result == "sent":
            self.sent += 1
        elif result == "failed":
            self.failed += 1
        else:
            self.dropped += 1
        DELIVERIES.labels(self.channel.kind, result).inc()
