"""Client-side pacing, so that we stay under a vendor's limit instead of bouncing off it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class RateLimiter:
    """An async token bucket: `rate` requests per second on average, bursts up to `burst`.

    A rate of 0 disables pacing. Waiters are served in arrival order (one lock), so concurrent
    pushes share the budget fairly instead of racing for it. The default burst of 1 is an even
    pace: saved-up tokens let a burst through on top of the steady rate, and vendors count in
    windows (Brevo per second, HubSpot over a rolling 10 s), so a burst overflows the window
    (measured against the sandbox: 3% of HubSpot requests answered 429 with burst = rate).
    """

    def __init__(
        self,
        rate: float,
        burst: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = self.burst
        self._updated = clock()
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    async def acquire(self) -> None:
        if not self.enabled:
            return
        async with self._lock:
            while True:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.rate)

    def drain(self) -> None:
        """Forget saved-up tokens (after a 429 the vendor's window is known to be full)."""
        self._tokens = 0
        self._updated = self._clock()
