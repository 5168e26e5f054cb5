"""Client-side pacing, so that we stay under a vendor's limit instead of bouncing off it.

Vendors count requests in windows and do not all say how (Brevo per second, HubSpot over a
rolling 10 s, Mautic per hour; fixed or rolling), and a request's arrival at the vendor
jitters. A `RateLimiter` therefore does three things:

- **A pace with headroom.** `rate` is the vendor's limit as configured (requests per second);
  requests go evenly at `rate * headroom` (97%). Requests that came late (a busy moment on our
  side) may catch up on a quarter of the window's limit.
- **Never more than the window takes.** With the window's length known (Brevo's second,
  HubSpot's interval header), a request goes only while fewer than the window's limit of our
  requests are in flight or were answered within the last window. The vendor counted each one
  somewhere between our sending it and its answer, so counting it until a window after its
  answer over-counts, never under-counts: however late a request reaches the vendor or its
  answer reaches us (a busy host, a stalled vendor), no window the vendor may slice, fixed or
  rolling, holds more than its limit of our requests. The price is the latency, once: at a
  steady pace an answer's delay shifts when its slot frees, not how many go per window.
- **What the vendor said.** After each answer the connector reports the vendor's rate headers
  as a `Quota` (`observe`). A request goes only while the vendor's window has room for it after
  our requests still in flight. When it is used up (another process shares the allowance, the
  vendor's limit is lower than configured) the next request waits until a slot frees, known to
  a fraction of a second: the vendor's own reset if it says one (Brevo in whole seconds, Mautic
  as a Unix time), or, when our own requests fill its window, when the oldest of them leaves
  it. A wait longer than `max_wait` raises `RateLimited`, so the engine pauses the CRM instead
  of holding a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from crmsync.connectors.base import RateLimited

# Requests go at 97% of the configured limit (see the module docstring).
HEADROOM = 0.97
# A longer wait for the vendor's window is a pause of the CRM (`RateLimited`), not a sleep.
MAX_WAIT_SECONDS = 5.0
# Requests kept to tell when our own oldest one leaves a vendor's window.
SEND_LOG_SIZE = 1000
# Requests that came late may catch up on this share of the window's limit (see `_go_at`).
CATCH_UP_SHARE = 0.25


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
        # Tickets handed out; those not answered yet; and, sorted, when each answered one was
        # answered, while the vendor's window may still hold it.
        self._sent = 0
        self._unanswered: set[int] = set()
        self._answered_at: list[float] = []
        # What the answers said: requests left in the vendor's window (see `observe`), and when
        # it next frees a slot. None when no answer said (or it no longer holds).
        self._left: int | None = None
        self._free_at = 0.0
        self._limit: int | None = None
        # Set by the next answer, for requests waiting on what it will say.
        self._answer: asyncio.Event | None = None

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
        while True:
            now = self._clock()
            if (wait := self._log_wait(now)) > 0:
                if self._answered_at:
                    await asyncio.sleep(wait)
                else:
                    await self._next_answer(wait)  # all in flight: the next answer tells
                continue
            if (wait := self._quota_wait(now)) <= 0:
                break
            if self._unanswered:
                # Answers still to come may show room (they were counted already): look again
                # at each answer rather than decide on a count that is out of date.
                await self._next_answer(min(wait, self.max_wait))
            elif wait > self.max_wait:
                raise RateLimited(wait, self._exhausted_message(wait))
            else:
                await asyncio.sleep(wait)
        self._sent += 1
        self._unanswered.add(self._sent)
        return self._sent

    def observe(self, ticket: int, quota: Quota | None) -> None:
        """The answer to request `ticket` came, with these rate headers (None: without any, or
        no answer at all). Every ticket must be observed once: requests in flight count.

        Within a window the vendor's `remaining` only falls, so the lowest one heard is its
        latest count, even when answers arrive out of order; a higher one is believed once
        the window has freed a slot since (a new fixed window, or a rolling one moving on).
        What is left for us is that count less our requests still unanswered, as any of them
        may be counted after it.
        """
        now = self._clock()
        if ticket in self._unanswered:
            self._unanswered.remove(ticket)
            # The vendor counted it before now: counting it from now is on the safe side,
            # whatever the jitter (see the module docstring). The clock only moves forward, so
            # appending keeps the list sorted.
            self._answered_at.append(now)
            if len(self._answered_at) > SEND_LOG_SIZE:
                del self._answered_at[0]
        if self._answer is not None:
            self._answer.set()
            self._answer = None
        if quota is None:
            return
        if quota.window is not None and quota.window > 0:
            self.window = quota.window
        remaining = max(0, quota.remaining)
        free_at = self._slot_frees_at(quota, now)
        if self._left is None or remaining < self._left or now >= self._free_at:
            self._left, self._limit, self._free_at = remaining, quota.limit, free_at
        elif remaining == self._left:
            # Two answers with the same count: the later freeing holds.
            self._free_at = max(self._free_at, free_at)

    async def _next_answer(self, seconds: float) -> None:
        """Wait for the next answer, or `seconds`."""
        if self._answer is None:
            self._answer = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._answer.wait(), seconds)

    def wait_for_next(self) -> float:
        """Seconds the next request would wait now (0 when it may go at once)."""
        now = self._clock()
        pace = max(0.0, self._go_at(now) - now) if self.enabled else 0.0
        return max(pace, self._quota_wait(now))

    def _go_at(self, now: float) -> float:
        """When a request made at `now` may go: up to `burst` go ahead of the steady pace.

        When the window's length is known, requests that came late (a busy moment on our side)
        may catch up on a quarter of the window's limit; the send log (`_log_wait`) still keeps
        any window to its limit, so a catch-up never overfills a window.
        """
        burst = self.burst
        if (limit := self._window_limit()) is not None:
            burst = max(burst, limit * CATCH_UP_SHARE)
        return max(self._next_at, now) - (burst - 1.0) / self.pace

    def _window_limit(self) -> int | None:
        """Requests the vendor's short window takes, from the configured rate and its length."""
        if not self.enabled or not self.window:
            return None
        return max(1, math.floor(self.rate * self.window + 1e-9))

    def _log_wait(self, now: float) -> float:
        """Seconds until fewer than the window's limit of our requests may be in the vendor's
        window: those in flight, and those answered in the last `window` seconds.
        """
        limit = self._window_limit()
        if limit is None or self.window is None:
            return 0.0
        answered = self._answered_at
        # Written as `leaves <= now` here and `leaves - now` below, so that a request still in
        # the window always means a wait above zero (`now - window` may round the other way).
        while answered and answered[0] + self.window <= now:
            del answered[0]
        if len(self._unanswered) + len(answered) < limit:
            return 0.0
        return answered[0] + self.window - now if answered else self.window

    def _quota_wait(self, now: float) -> float:
        """Seconds until the vendor's window has room for one more request of ours."""
        if self._left is None:
            return 0.0
        if self._left - len(self._unanswered) > 0:
            return 0.0
        if now >= self._free_at:
            # A slot has freed since; how many the vendor tells with its next answer.
            self._left = None
            return 0.0
        return self._free_at - now

    def _slot_frees_at(self, quota: Quota, now: float) -> float:
        """When the vendor's window next frees a slot once it is full, as well as we can tell."""
        candidates = []
        if quota.reset_after is not None:
            candidates.append(now + max(0.0, quota.reset_after))
        own = self._own_slot_frees_at(quota)
        if own is not None:
            candidates.append(own)
        if candidates:
            return min(candidates)
        # Nothing says when: a whole window has surely freed a slot.
        return now + (self.window or 1.0)

    def _own_slot_frees_at(self, quota: Quota) -> float | None:
        """When the oldest of our requests the vendor counted leaves its window.

        The window holds `limit - remaining` requests. If ours explain them (those answered
        within the window, and those in flight), the oldest answered one has left a rolling
        window a window after its answer; a fixed window has ended by then too, as it began
        before the vendor counted that request. Unknown without the window's length and
        limit, or when the vendor's reset is further away than that window (its headers speak
        of a longer one, like Brevo's hour).
        """
        if not self.window or not quota.limit:
            return None
        if quota.reset_after is not None and quota.reset_after > self.window + 1:
            return None
        answered = quota.limit - max(0, quota.remaining) - len(self._unanswered)
        if not 0 < answered <= len(self._answered_at):
            return None
        return self._answered_at[-answered] + self.window

    def _exhausted_message(self, wait: float) -> str:
        limit = f" of {self._limit}" if self._limit else ""
        return (
            f"{self.vendor}'s rate limit window is used up (0{limit} requests left); "
            f"waiting {math.ceil(wait * 10) / 10:g} s for it to free"
        )


__all__ = ["HEADROOM", "Quota", "RateLimiter"]
