"""The client-side pacer: an even pace by default, off at rate 0."""

from __future__ import annotations

import asyncio

from crmsync.connectors.ratelimit import RateLimiter


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now


async def test_even_pace_without_a_burst(monkeypatch: object) -> None:
    time = FakeTime()
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        time.now += seconds

    limiter = RateLimiter(10, clock=time.clock)
    import crmsync.connectors.ratelimit as module

    original = module.asyncio.sleep
    module.asyncio.sleep = fake_sleep  # type: ignore[assignment]
    try:
        for _ in range(21):
            await limiter.acquire()
    finally:
        module.asyncio.sleep = original
    # The first request goes at once, then one every 0.1 s: 21 requests take 2 s, never faster.
    assert abs(time.now - 2.0) < 1e-9
    assert all(abs(s - 0.1) < 1e-9 for s in slept)


async def test_rate_zero_does_not_pace() -> None:
    limiter = RateLimiter(0)
    start = asyncio.get_running_loop().time()
    for _ in range(1000):
        await limiter.acquire()
    assert asyncio.get_running_loop().time() - start < 0.5
    assert not limiter.enabled


def test_drain_makes_the_next_request_wait_one_interval() -> None:
    time = FakeTime()
    limiter = RateLimiter(4, burst=4, clock=time.clock)
    assert limiter.wait_for_next() == 0
    limiter.drain()
    assert abs(limiter.wait_for_next() - 0.25) < 1e-9
    time.now += 0.25
    assert limiter.wait_for_next() == 0


async def test_burst_lets_requests_ahead_then_paces(monkeypatch: object) -> None:
    time = FakeTime()
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        time.now += seconds

    import crmsync.connectors.ratelimit as module

    limiter = RateLimiter(10, burst=5, clock=time.clock)
    original = module.asyncio.sleep
    module.asyncio.sleep = fake_sleep  # type: ignore[assignment]
    try:
        for _ in range(15):
            await limiter.acquire()
    finally:
        module.asyncio.sleep = original
    # Five go at once, the next ten at the steady 0.1 s pace.
    assert abs(time.now - 1.0) < 1e-9
    assert len(slept) == 10
