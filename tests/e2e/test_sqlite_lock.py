"""SQLite: another process holds the database's write lock for 10 s while a `crmsync worker` has
batches in flight (issue 23). The worker waits for the lock (up to the 30 s busy timeout), says
in its log what it waits for, and loses no outcome: every row Complete, one "ok" event per row,
each contact pushed to the fake exactly once (no outcome was lost and pushed again).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.api.app import create_app
from crmsync.sandbox import SandboxConfig, SandboxServer
from tests.conftest import SECRET
from tests.e2e.support import (
    Processes,
    create_contacts,
    e2e_env,
    event_rows,
    realistic_contacts,
    select_all,
    settings_from_env,
    state_rows,
    status_counts,
    wait_registered,
    wait_until,
)

COUNT = 600
HOLD_SECONDS = 10
# The process that holds the lock: started ahead (a Python start can take longer than the whole
# sync on a loaded machine), it takes the lock when told: BEGIN IMMEDIATE, say so, keep it for
# HOLD_SECONDS, commit.
LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
print("ready", flush=True)
sys.stdin.readline()
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))  # the fault itself: the lock is held this long
conn.execute("COMMIT")
print("released", flush=True)
"""


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    # Each request takes a moment, so batches are in flight when the lock is taken.
    config = SandboxConfig(
        no_rate_limits=True,
        custom_fields=True,
        push_log=True,
        faults={"hubspot": {"latency_ms": 200.0}},
    )
    async with SandboxServer(config) as server:
        yield server


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.timeout(300)
async def test_worker_waits_for_a_write_lock_held_10_s_and_loses_no_outcome(
    sandbox: SandboxServer,
    engine: AsyncEngine,
    db_url: str,
    auth: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    processes: Processes,
) -> None:
    env = e2e_env(
        sandbox.env(),
        db_url,
        CRMSYNC_LEASE_SECONDS="60",  # longer than the hold: no lease may run out meanwhile
        HUBSPOT_SYNC_SCHEDULER_BATCH_SIZE="20",
    )
    app = create_app(settings_from_env(env, monkeypatch, tmp_path), SECRET, engine=engine)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://e2e", headers=auth) as api:
        await create_contacts(api, realistic_contacts(COUNT))
        worker = processes.worker("worker", env, "hubspot")
        await wait_registered(engine, worker)
        await select_all(api, ["hubspot"])

    async def some_done_some_in_flight() -> bool:
        counts = await status_counts(engine)
        return counts[("hubspot", "Complete")] > 0 and counts[("hubspot", "Processing")] > 0

    path = make_url(db_url).database
    assert path is not None
    locker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LOCKER,
        path,
        str(HOLD_SECONDS),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert locker.stdin is not None and locker.stdout is not None
        assert (await asyncio.wait_for(locker.stdout.readline(), 60)).decode().strip() == "ready"
        await wait_until(some_done_some_in_flight, 60, "batches done and in flight", 0.05)
        locker.stdin.write(b"go\n")
        await locker.stdin.drain()
        line = await asyncio.wait_for(locker.stdout.readline(), 60)
        assert line.decode().strip() == "locked"
        locked_at = time.monotonic()
        counts_when_locked = await status_counts(engine)
        done_when_locked = counts_when_locked[("hubspot", "Complete")]
        # The fault's premise: the worker still had batches to record when the lock was taken.
        assert done_when_locked < COUNT, counts_when_locked

        async def says_it_waits() -> bool:
            return "holds the database's write lock" in worker.output()

        await wait_until(says_it_waits, HOLD_SECONDS - 1, "the worker to say what it waits for")
        # Nothing could be written while the lock was held.
        counts_now = await status_counts(engine)
        assert counts_now[("hubspot", "Complete")] == done_when_locked, (
            f"{time.monotonic() - locked_at:.2f} s after the lock: {counts_when_locked} -> "
            f"{counts_now}; worker log: {worker.output()[-2000:]}"
        )
        assert await asyncio.wait_for(locker.wait(), HOLD_SECONDS + 30) == 0
        held = time.monotonic() - locked_at
    finally:
        if locker.returncode is None:
            locker.kill()
            await asyncio.wait_for(locker.wait(), 10)

    async def all_complete() -> bool:
        return (await status_counts(engine)) == Counter({("hubspot", "Complete"): COUNT})

    await wait_until(all_complete, 120, "every row Complete after the lock", 0.2)
    assert worker.proc.poll() is None, worker.output()[-3000:]
    assert worker.terminate(timeout=60) == 0, worker.output()[-3000:]
    rows = await state_rows(engine)
    assert all(r.lease_token is None and r.attempts == 0 for r in rows)
    events = await event_rows(engine)
    assert Counter(e.outcome for e in events) == Counter({"ok": COUNT})
    pushes = Counter(p["email"] for p in sandbox.pushes("hubspot"))
    assert len(pushes) == COUNT and set(pushes.values()) == {1}, pushes.most_common(3)
    print(f"\nwrite lock held {held:.1f} s by another process: {COUNT} rows, none lost or repeated")
