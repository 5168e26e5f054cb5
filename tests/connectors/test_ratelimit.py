"""The client-side pacer: an even pace with headroom by default, bursts when asked, off at rate 0;
and what a vendor's rate headers say (`Quota`) holds requests until its window has room."""

from __future__ import annotations

import asyncio
import heapq
import random

import pytest

import crmsync.connectors.ratelimit as ratelimit
from crmsync.connectors.base import RateLimited
from crmsync.connectors.ratelimit import HEADROOM, Quota, RateLimiter


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
    limiter = RateLimiter(10, clock=time.clock, headroom=1.0)
    for _ in range(21):
        await limiter.acquire()
    # The first request goes at once, then one every 0.1 s: 21 requests take 2 s, never faster.
    assert abs(time.now - 2.0) < 1e-9
    assert len(time.slept) == 20 and all(abs(s - 0.1) < 1e-9 for s in time.slept)


async def test_burst_lets_requests_ahead_then_paces(time: FakeTime) -> None:
    limiter = RateLimiter(10, burst=5, clock=time.clock, headroom=1.0)
    for _ in range(15):
        await limiter.acquire()
    # Five go at once, the next ten at the steady 0.1 s pace.
    assert abs(time.now - 1.0) < 1e-9
    assert len(time.slept) == 10


async def test_headroom_keeps_every_window_under_the_limit(time: FakeTime) -> None:
    """At 97% of 10/s, no one-second window, fixed or rolling, ever holds more than 10."""
    limiter = RateLimiter(10, clock=time.clock, window=1.0)
    sent = []
    for _ in range(101):
        limiter.observe(await limiter.acquire(), None)  # answered at once
        sent.append(time.now)
    assert HEADROOM == 0.97
    assert all(later - first >= 1.0 for first, later in zip(sent, sent[10:], strict=False))
    # ... and 97% of the allowance is used.
    assert 9.7 <= 100 / sent[-1] <= 10


async def test_an_exhausted_window_holds_requests_until_our_oldest_leaves_it(
    time: FakeTime,
) -> None:
    """Brevo says 0 left and "reset 1" (whole seconds): the slot frees when the oldest of the
    10 requests it counted, all ours, leaves the one-second window, not a second later."""
    limiter = RateLimiter(0, clock=time.clock, window=1.0)
    for left in range(9, -1, -1):
        ticket = await limiter.acquire()
        time.now += 0.05
        limiter.observe(ticket, Quota(remaining=left, reset_after=1.0, limit=10))
    assert time.now == pytest.approx(0.5)
    await limiter.acquire()
    # The first request went at 0 and was answered at 0.05: Brevo counted it by then, so it
    # has surely left the window a second after its answer.
    assert time.slept == [pytest.approx(0.05 + 1.0 - 0.5)]


async def test_requests_sent_since_an_answer_count_against_what_it_said_was_left(
    time: FakeTime,
) -> None:
    limiter = RateLimiter(0, clock=time.clock, window=10.0)
    first = await limiter.acquire()
    await limiter.acquire()  # in flight when the first answer comes
    # Two left when the first was answered: one more may go, the next must wait.
    limiter.observe(first, Quota(remaining=2, limit=100, window=10.0))
    await limiter.acquire()
    assert time.slept == []
    assert limiter.wait_for_next() > 0
    # An older answer does not override a newer one.
    limiter.observe(first - 1, Quota(remaining=50, limit=100))
    assert limiter.wait_for_next() > 0


async def test_the_vendors_reset_is_used_when_other_requests_fill_its_window(
    time: FakeTime,
) -> None:
    """Mautic: 0 of 300 left, reset in 40 min (Unix time): a pause, not a sleep."""
    limiter = RateLimiter(0, clock=time.clock, vendor="Mautic")
    ticket = await limiter.acquire()
    limiter.observe(ticket, Quota(remaining=0, reset_after=2400.0, limit=300))
    with pytest.raises(RateLimited) as caught:
        await limiter.acquire()
    assert caught.value.retry_after == pytest.approx(2400.0)
    assert "Mautic's rate limit window is used up (0 of 300 requests left)" in str(caught.value)
    time.now += 2400.0
    await limiter.acquire()  # the hour is over: go, and learn the new count from the answer
    assert time.slept == []


async def test_without_a_reset_or_our_own_sends_a_whole_window_is_waited(time: FakeTime) -> None:
    limiter = RateLimiter(0, clock=time.clock, window=2.0)
    ticket = await limiter.acquire()
    # 100 counted in the window but we sent one: someone else fills it; HubSpot gives no reset.
    limiter.observe(ticket, Quota(remaining=0, limit=100, window=2.0))
    assert limiter.wait_for_next() == pytest.approx(2.0)


async def test_rate_zero_does_not_pace() -> None:
    limiter = RateLimiter(0)
    start = asyncio.get_running_loop().time()
    for _ in range(1000):
        await limiter.acquire()
    assert asyncio.get_running_loop().time() - start < 0.5
    assert not limiter.enabled


@pytest.mark.parametrize("seed", range(5))
async def test_no_window_overfills_however_late_requests_reach_the_vendor(
    time: FakeTime, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Four lanes at Brevo's 10/s; most answers take 5 ms, but now and then the vendor (or our
    host) stalls for up to 300 ms, and the vendor counts each request anywhere between our
    sending it and its answer. No one-second interval, fixed or rolling, ever holds more than
    10 counted requests, and the pace stays near the limit."""
    rng = random.Random(seed)
    limiter = RateLimiter(10, clock=time.clock, window=1.0)
    in_flight: list[tuple[float, int]] = []  # (answered at, ticket), a heap
    counted: list[float] = []

    def deliver(until: float) -> None:
        while in_flight and in_flight[0][0] <= until:
            answered_at, ticket = heapq.heappop(in_flight)
            time.now = max(time.now, answered_at)
            limiter.observe(ticket, None)

    async def sleep(seconds: float) -> None:
        target = time.now + seconds
        deliver(target)
        time.now = target

    monkeypatch.setattr(ratelimit.asyncio, "sleep", sleep)
    for _ in range(400):
        deliver(time.now)
        if len(in_flight) >= 4:
            deliver(in_flight[0][0])
        ticket = await limiter.acquire()
        latency = rng.uniform(0.1, 0.3) if rng.random() < 0.1 else 0.005
        counted.append(time.now + rng.random() * latency)
        heapq.heappush(in_flight, (time.now + latency, ticket))
    counted.sort()
    assert all(later - first >= 1.0 for first, later in zip(counted, counted[10:], strict=False))
    assert 400 / counted[-1] >= 0.9 * 10
