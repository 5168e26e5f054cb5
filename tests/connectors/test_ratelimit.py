"""The client-side pacer: an even pace by default, bursts when asked, off at rate 0."""

from __future__ import annotations

import asyncio

import pytest

import crmsync.connectors.ratelimit as ratelimit
from crmsync.connectors.ratelimit import RateLimiter


class FakeTime:
    """A clock that only moves when the pacer sleeps; every sleep is recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(ratelimit.asyncio, "sleep", fake.sleep)
    return fake


async def test_even_pace_without_a_burst(time: FakeTime) -> None:
    limiter = RateLimiter(10, clock=time.clock)
    for _ in range(21):
        await limiter.acquire()
    # The first request goes at once, then one every 0.1 s: 21 requests take 2 s, never faster.
    assert abs(time.now - 2.0) < 1e-9
    assert len(time.slept) == 20 and all(abs(s - 0.1) < 1e-9 for s in time.slept)


async def test_burst_lets_requests_ahead_then_paces(time: FakeTime) -> None:
    limiter = RateLimiter(10, burst=5, clock=time.clock)
    for _ in range(15):
        await limiter.acquire()
    # Five go at once, the next ten at the steady 0.1 s pace.
    assert abs(time.now - 1.0) < 1e-9
    assert len(time.slept) == 10


def test_drain_makes_the_next_request_wait_one_interval() -> None:
    time = FakeTime()
    limiter = RateLimiter(4, burst=4, clock=time.clock)
    assert limiter.wait_for_next() == 0
    limiter.drain()
    assert abs(limiter.wait_for_next() - 0.25) < 1e-9
    time.now += 0.25
    assert limiter.wait_for_next() == 0


async def test_rate_zero_does_not_pace() -> None:
    limiter = RateLimiter(0)
    start = asyncio.get_running_loop().time()
    for _ in range(1000):
        await limiter.acquire()
    assert asyncio.get_running_loop().time() - start < 0.5
    assert not limiter.enabled
