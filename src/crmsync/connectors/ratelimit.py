"""Client-side pacing, so that we stay under a vendor's limit instead of bouncing off it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class RateLimiter:
    """An async pacer: `rate` requests per second on average, bursts up to `burst`.

    A rate of 0 disables pacing. Each caller reserves the next free slot before it sleeps (no
    await between reading and moving the schedule), so concurrent pushes are served in arrival
    order and share the budget fairly instead of racing for it. The default burst of 1 is an even
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
        self.burst = max(1.0, burst)
        self._clock = clock
        # GCRA: the theoretical time at which the next request would go at the steady pace.
        # One sleep per request, computed from times rather than summed fractional tokens: a
        # float token count could settle just below 1 and make the wait loop spin on sleeps too
        # short to move the clock.
        self._next_at = clock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    async def acquire(self) -> None:
        if not self.enabled:
            return
        now = self._clock()
        go_at = self._go_at(now)
        self._next_at = max(self._next_at, now) + 1.0 / self.rate
        if go_at > now:
            await asyncio.sleep(go_at - now)

    def _go_at(self, now: float) -> float:
        """When a request made at `now` may go: up to `burst` go ahead of the steady pace."""
        return max(self._next_at, now) - (self.burst - 1.0) / self.rate

    def drain(self) -> None:
        """Forget saved-up allowance (after a 429 the vendor's window is known to be full).

        The next request then waits one full interval from now.
        """
        if self.enabled:
            self._next_at = max(self._next_at, self._clock() + self.burst / self.rate)

    def wait_for_next(self) -> float:
        """Seconds the next request would wait now (0 when it may go at once)."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        return max(0.0, self._go_at(now) - now)
