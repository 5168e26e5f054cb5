"""An in-process connector and a frozen clock for engine tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from crmsync.connectors.base import ContactPayload, Ok, RowResult, stable_hash
from crmsync.enums import Crm

Script = Callable[[Sequence[ContactPayload]], list[RowResult]]


if TYPE_CHECKING:
    from crmsync.sync.worker import Worker


async def until(
    condition: Callable[[], bool | Awaitable[bool]],
    what: str,
    within: float = 10.0,
    every: float = 0.01,
) -> None:
    """Wait for `condition` (a function, or a coroutine function such as a database read),
    looked at every `every` seconds; fail the test after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        met = condition()
        if inspect.isawaitable(met):
            met = await met
        if met:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(every)


def idle(worker: Worker) -> bool:
    """Every runner has claimed and holds no lane: its loop rests until woken or polled."""
    return all(r.last_cycle_at is not None and not r.lanes for r in worker.runners.values())


class FrozenClock:
    def __init__(self, start: dt.datetime | None = None) -> None:
        # An hour ahead of the real time: rows selected through the API (stamped with the real
        # time) are due at once for a worker on this clock.
        real = dt.datetime.now(dt.UTC).replace(microsecond=0)
        self.now = start or real + dt.timedelta(hours=1)

    def __call__(self) -> dt.datetime:
        return self.now

    def later(self, seconds: float) -> dt.datetime:
        return self.now + dt.timedelta(seconds=seconds)

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def all_ok(batch: Sequence[ContactPayload]) -> list[RowResult]:
    return [Ok(f"ext-{c.email}", 200) for c in batch]


class FakeConnector:
    """Records every push; answers with `script` (a function of the batch) or raises `error`."""

    def __init__(self, crm: Crm = Crm.hubspot, max_batch: int = 100, concurrency: int = 2) -> None:
        self.name = crm
        self.max_batch = max_batch
        self.default_concurrency = concurrency
        self.script: Script = all_ok
        self.error: Exception | None = None
        self.pushes: list[list[ContactPayload]] = []
        self.gate: asyncio.Event | None = None  # when set, pushes wait for it
        self.started = asyncio.Event()  # set once a push has begun

    def fingerprint(self, contact: ContactPayload) -> str:
        return stable_hash([contact.email, contact.name, contact.phone_number])

    @property
    def pushed_emails(self) -> list[str]:
        return [c.email for batch in self.pushes for c in batch]

    async def push(self, batch: Sequence[ContactPayload]) -> list[RowResult]:
        self.pushes.append(list(batch))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.script(batch)

    async def aclose(self) -> None:
        return None
