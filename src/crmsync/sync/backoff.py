"""Retry delays (work order 2.2): base·2^n, or base·(n+1) when exponential is off, ±20% jitter."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_DELAY = dt.timedelta(hours=24)
JITTER = 0.2


@dataclass(frozen=True)
class Backoff:
    base_seconds: float
    exponential: bool = True
    jitter: float = JITTER
    random: Callable[[], float] = field(default=random.random, compare=False)

    def delay(self, retry: int) -> dt.timedelta:
        """Wait before retry number `retry` (1 = the first retry after the first failure)."""
        n = max(0, retry - 1)
        # Cap the exponent too: a huge retry count must not overflow the float or timedelta.
        factor = 2.0 ** min(n, 40) if self.exponential else float(n + 1)
        seconds = min(self.base_seconds * factor, MAX_DELAY.total_seconds() * 2)
        # Jitter spreads retries of a failed batch so that they do not return as one burst.
        seconds *= 1 + self.jitter * (2 * self.random() - 1)
        return min(dt.timedelta(seconds=max(0.0, seconds)), MAX_DELAY)
