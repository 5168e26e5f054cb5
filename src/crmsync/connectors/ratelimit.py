"""Client-side pacing, so that we stay under a vendor's limit instead of bouncing off it.

A `RateLimiter` combines two things:

- **A pace with headroom.** `rate` is the vendor's limit as configured (requests per second);
  requests go evenly at `rate * headroom`. Vendors count in windows and do not all say how
  (Brevo per second, HubSpot over a rolling 10 s, Mautic per hour), and a request's arrival at
  the vendor jitters: at exactly the limit's pace, a rolling window sometimes holds one request
  too many. With 3% headroom the `limit + 1`-th request of any window arrives 3% of the window
  after the first (30 ms for Brevo's second, 300 ms for HubSpot's ten), whether the vendor's
  windows are fixed or rolling.
- **What the vendor said.** After each answer the connector reports the vendor's rate headers
  as a `Quota`: requests left in the window, when it frees, its limit and length. A request
  then goes only while the vendor's window has room for it, counting the requests sent since
  that answer. When it is used up (another process shares the allowance, the vendor's limit is
  lower than configured, or a jittered arrival filled a rolling window) the next request waits
  until a slot frees, known to a fraction of a second: the vendor's own reset if it says one
  (Brevo in whole seconds, Mautic as a Unix time), or, when our own sends fill its window,
  the time the oldest of them leaves it. A wait longer than `max_wait` raises `RateLimited`,
  so the engine pauses the CRM instead of holding a batch.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from crmsync.connectors.base import RateLimited

# Requests go at 97% of the configured limit (see the module docstring).
HEADROOM = 0.97
# A longer wait for the vendor's window is a pause of the CRM (`RateLimited`), not a sleep.
MAX_WAIT_SECONDS = 5.0
# Send times kept to tell when our own oldest request leaves a vendor's window.
SEND_LOG_SIZE = 1000


@dataclass(frozen=True, slots=True)
class Quota:
    """What a vendor's rate headers said in one answer."""

    # Requests the window still takes (after the answered one was counted).
    remaining: int
    # Seconds until the window (or, when it rolls, its oldest request) frees, as the vendor
    # said it; None when it does not say (HubSpot).
    reset_after: float | None = None
    # The window's limit and its length in seconds, when the vendor says.
    limit: int | None = None
    window: float | None = None


class RateLimiter:
    """An async pacer that also heeds the vendor's rate headers (see the module docstring).

    `rate` 0 turns the pace off; the vendor's headers are still heeded. `window` is the length
    in seconds of the vendor's short window when known (Brevo's second, HubSpot's ten seconds;
    a `Quota` may update it). `acquire` returns a ticket for the request; the connector hands it
    back with the answer's `Quota` to `observe`.
    """

    def __init__(
        self,
        rate: float,
        burst: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        headroom: float = HEADROOM,
        window: float | None = None,
        vendor: str = "the vendor",
        max_wait: float = MAX_WAIT_SECONDS,
    ) -> None:
        self.rate = rate
        self.headroom = headroom
        self.burst = max(1.0, burst)
        self.window = window
        self.vendor = vendor
        self.max_wait = max_wait
        self._clock = clock
        # GCRA: the theoretical time at which the next request would go at the steady pace.
        # One sleep per request, computed from times rather than summed fractional tokens: a
        # float token count could settle just below 1 and make the wait loop spin on sleeps too
        # short to move the clock.
        self._next_at = clock()
        # Tickets handed out, and the send times of the last SEND_LOG_SIZE of them.
        self._sent = 0
        self._sends: deque[float] = deque(maxlen=SEND_LOG_SIZE)
        # The newest answer's word: its ticket, requests left then, and when a slot frees.
        self._seen = 0
        self._remaining: int | None = None
        self._free_at = 0.0
        self._limit: int | None = None

    @property
    def enabled(self) -> bool:
        """Whether a pace is set (the vendor's headers are heeded either way)."""
        return self.rate > 0

    @property
    def pace(self) -> float:
        """Requests per second actually sent at most: the rate less the headroom."""
        return self.rate * self.headroom

    async def acquire(self) -> int:
        """Wait for this request's turn; its ticket for `observe`. May raise `RateLimited`."""
        if self.enabled:
            now = self._clock()
            go_at = self._go_at(now)
            self._next_at = max(self._next_at, now) + 1.0 / self.pace
            if go_at > now:
                await asyncio.sleep(go_at - now)
        while (wait := self._quota_wait(self._clock())) > 0:
            if wait > self.max_wait:
                raise RateLimited(wait, self._exhausted_message(wait))
            await asyncio.sleep(wait)
        self._sent += 1
        self._sends.append(self._clock())
        return self._sent

    def observe(self, ticket: int, quota: Quota) -> None:
        """The vendor's rate headers from the answer to request `ticket`."""
        if ticket < self._seen:
            return  # an answer overtaken by a newer one
        now = self._clock()
        if quota.window is not None and quota.window > 0:
            self.window = quota.window
        self._seen = ticket
        self._remaining = max(0, quota.remaining)
        self._limit = quota.limit
        self._free_at = self._slot_frees_at(ticket, quota, now)

    def wait_for_next(self) -> float:
        """Seconds the next request would wait now (0 when it may go at once)."""
        now = self._clock()
        pace = max(0.0, self._go_at(now) - now) if self.enabled else 0.0
        return max(pace, self._quota_wait(now))

    def _go_at(self, now: float) -> float:
        """When a request made at `now` may go: up to `burst` go ahead of the steady pace."""
        return max(self._next_at, now) - (self.burst - 1.0) / self.pace

    def _quota_wait(self, now: float) -> float:
        """Seconds until the vendor's window has room for one more request of ours."""
        if self._remaining is None:
            return 0.0
        if self._remaining - (self._sent - self._seen) > 0:
            return 0.0
        if now >= self._free_at:
            # A slot has freed since; how many the vendor tells with its next answer.
            self._remaining = None
            return 0.0
        return self._free_at - now

    def _slot_frees_at(self, ticket: int, quota: Quota, now: float) -> float:
        """When the vendor's window next frees a slot once it is full, as well as we can tell."""
        candidates = []
        if quota.reset_after is not None:
            candidates.append(now + max(0.0, quota.reset_after))
        own = self._own_slot_frees_at(ticket, quota)
        if own is not None:
            candidates.append(own)
        if candidates:
            return min(candidates)
        # Nothing says when: a whole window has surely freed a slot.
        return now + (self.window or 1.0)

    def _own_slot_frees_at(self, ticket: int, quota: Quota) -> float | None:
        """When the oldest of our requests the vendor counted leaves its window.

        The window holds `limit - remaining` requests, the last of them `ticket`. If we sent all
        of them, the oldest one leaves a rolling window a window after we sent it (plus the
        headroom, for the jitter of its arrival); a fixed window has ended by then too, as it
        began before that request. Unknown without the window's length and limit, or when the
        vendor's reset is further away than that window (its headers speak of a longer one).
        """
        if not self.window or not quota.limit:
            return None
        if quota.reset_after is not None and quota.reset_after > self.window + 1:
            return None  # the headers speak of a longer window (Brevo's hour)
        oldest = ticket - (quota.limit - quota.remaining) + 1
        first_logged = self._sent - len(self._sends) + 1
        if oldest < first_logged or oldest > ticket:
            return None
        return self._sends[oldest - first_logged] + self.window / self.headroom

    def _exhausted_message(self, wait: float) -> str:
        limit = f" of {self._limit}" if self._limit else ""
        return (
            f"{self.vendor}'s rate limit window is used up (0{limit} requests left); "
            f"waiting {math.ceil(wait * 10) / 10:g} s for it to free"
        )


__all__ = ["HEADROOM", "Quota", "RateLimiter"]
