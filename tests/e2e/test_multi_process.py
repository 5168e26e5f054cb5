"""Several `crmsync worker` processes on one PostgreSQL database, one of them SIGKILLed mid-run.

Ground truth comes from the sandbox's push log: every contact write a fake accepted, with its
time and the `X-Crmsync-Worker` header of the worker that sent it. The checks:

- every row ends Complete and every fake holds exactly one record per email;
- no email was pushed by two workers during overlapping leases: whenever a push by one worker
  follows a push of the same email by another, it comes after the other's lease ended, either
  by its own hand (the outcome it recorded, a `sync_events` row) or, for the killed worker, by
  expiry (the `lease_expires_at` it held when it died, read while it was frozen);
- the killed worker's rows were reclaimed: survivors completed some of them, after its lease,
  and the ones it had already pushed were pushed again a lease apart;
- `sync_events` agree with the push log: every "ok" event stands for a push by the worker that
  recorded it, and a push without one is a row its worker died holding (or, if a transient
  network error happened, one it recorded as a retry).

Freezing the victim (SIGSTOP) before reading its leases and killing it (SIGKILL) makes the
snapshot exact: a frozen process can neither renew nor record.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.api.app import create_app
from crmsync.sandbox import SandboxConfig, SandboxServer
from crmsync.tables import contacts, crm_sync_state
from tests.conftest import SECRET
from tests.e2e.support import (
    CRMS,
    Processes,
    WorkerProcess,
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

COUNT = 20_000
LEASE_SECONDS = 5.0
# Float seconds (sandbox) against microsecond timestamps (database), on the same clock.
CLOCK_EPSILON = 0.001

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("db_url", ["postgres"], indirect=True)]


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    config = SandboxConfig(no_rate_limits=True, push_log=True, custom_fields=True)
    async with SandboxServer(config, subprocess=True) as server:
        yield server


async def _freeze_holding_rows(
    engine: AsyncEngine, victim: WorkerProcess
) -> dict[tuple[str, str], float]:
    """SIGSTOP the victim at a moment it holds leased rows; (crm, email) -> lease expiry."""
    s = crm_sync_state.c
    for _ in range(200):
        os.kill(victim.pid, signal.SIGSTOP)
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(s.crm, contacts.c.email, s.lease_expires_at)
                    .join(contacts, contacts.c.id == s.contact_id)
                    .where(s.lease_owner == victim.worker_id, s.sync_status == "Processing")
                )
            ).all()
        if rows:
            return {(r.crm, r.email.lower()): r.lease_expires_at.timestamp() for r in rows}
        os.kill(victim.pid, signal.SIGCONT)
        await asyncio.sleep(0.02)
    pytest.fail("the victim never held a lease while it was frozen")


@pytest.mark.timeout(300)
async def test_three_workers_one_killed_every_row_once_and_no_overlapping_leases(
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
        CRMSYNC_LEASE_SECONDS=str(LEASE_SECONDS),
        CRMSYNC_LOG_LEVEL="WARNING",
        # Retries never happen here (no faults); if one did, it would come due at once.
        **{f"{crm.upper()}_SYNC_RETRY_DELAY_SECONDS": "0.1" for crm in CRMS},
    )
    settings = settings_from_env(env, monkeypatch, tmp_path)
    app = create_app(settings, SECRET, engine=engine)
    rows = realistic_contacts(COUNT)
    emails = {row["email"].lower() for row in rows}
    total = COUNT * len(CRMS)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://e2e", headers=auth) as api:
        await create_contacts(api, rows)
        workers = [processes.worker(f"worker{n}", env) for n in (1, 2, 3)]
        await wait_registered(engine, *workers)
        victim, survivors = workers[0], workers[1:]
        started = time.monotonic()
        selected = await select_all(api, CRMS)  # NOTIFY wakes every worker
        assert selected["queued_count"] == total

    async def describe() -> str:
        return str(sorted((await status_counts(engine)).items()))

    # Late in the run, so that the survivors soon run out of other work: when they take the dead
    # worker's rows is then decided by its leases alone (too early would show).
    async def mostly_done() -> bool:
        counts = await status_counts(engine)
        return sum(n for (_, st), n in counts.items() if st == "Complete") >= total * 0.7

    await wait_until(mostly_done, 90, "70% of the rows to be Complete", 0.05, describe)
    held = await _freeze_holding_rows(engine, victim)
    counts = await status_counts(engine)
    done_at_kill = sum(n for (_, st), n in counts.items() if st == "Complete")
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(timeout=10)
    assert 0 < done_at_kill < total, "the worker must die mid-run"

    async def all_complete() -> bool:
        counts = await status_counts(engine)
        return counts == Counter({(crm, "Complete"): COUNT for crm in CRMS})

    await wait_until(all_complete, 150, "every row to be Complete", 0.2, describe)
    elapsed = time.monotonic() - started
    for survivor in survivors:
        assert survivor.terminate(timeout=30) == 0, survivor.output()

    # Every fake holds exactly our contacts, one record each.
    states = await state_rows(engine)
    assert all(r.sync_status == "Complete" and r.lease_owner is None for r in states)
    for crm in CRMS:
        stored = sandbox.contacts(crm)
        assert len(stored) == COUNT and {c["email"] for c in stored} == emails, crm

    ids = {w.worker_id for w in workers}
    survivor_ids = {w.worker_id for w in survivors}
    events = await event_rows(engine)
    assert {e.worker for e in events} <= ids
    # Retries are not expected (no faults), but a transient network error is legitimate: the
    # checks below allow them, and the summary line shows them.
    odd = [e for e in events if e.outcome not in ("ok", "retry")]
    assert not odd, odd[:5]
    retries = [e for e in events if e.outcome == "retry"]
    # When a worker's hold on a row ended by its own hand: the events it recorded for it.
    recorded_at: dict[tuple[str, str, str | None], list[float]] = defaultdict(list)
    for event in events:
        recorded_at[(event.crm, event.email, event.worker)].append(event.created_at.timestamp())
    twice: set[tuple[str, str]] = set()
    gaps: list[float] = []
    for crm in CRMS:
        log = sandbox.pushes(crm)
        senders = Counter(p["sender"] for p in log)
        assert set(senders) <= ids, f"{crm}: pushes from unknown senders {senders}"
        by_email: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for push in log:
            by_email[push["email"]].append(push)
        assert set(by_email) == emails
        for email, its in by_email.items():
            its.sort(key=lambda p: p["at"])
            for earlier, later in itertools.pairwise(its):
                if earlier["sender"] == later["sender"]:
                    continue
                key = (crm, email)
                twice.add(key)
                # The later push must come after the earlier worker's lease ended: when it
                # recorded an outcome for the row, or, for the dead worker, when the lease it
                # held at its death expired.
                ends = [
                    t
                    for t in recorded_at[(crm, email, earlier["sender"])]
                    if t >= earlier["at"] - CLOCK_EPSILON
                ]
                if earlier["sender"] == victim.worker_id and key in held:
                    ends.append(held[key])
                    gaps.append(later["at"] - earlier["at"])
                assert ends, f"{key}: {earlier['sender']} never let go of the row: {its}"
                assert later["at"] >= min(ends) - CLOCK_EPSILON, (key, its, min(ends))

        # The history agrees with the push log: each "ok" event stands for a push by the worker
        # that recorded it; a push without one is a row the worker died holding, or one whose
        # answer it did not get (a retry).
        ok = [e for e in events if e.crm == crm and e.outcome == "ok"]
        for worker in ids:
            pushed = Counter(p["email"] for p in log if p["sender"] == worker)
            recorded = Counter(e.email for e in ok if e.worker == worker)
            assert not recorded - pushed, f"{crm}/{worker}: ok events without a push"
            unanswered = {e.email for e in retries if e.crm == crm and e.worker == worker}
            if worker == victim.worker_id:
                unanswered |= {email for (c, email) in held if c == crm}
            assert set(pushed - recorded) <= unanswered, f"{crm}/{worker}: unrecorded pushes"

    # The dead worker's rows were reclaimed: survivors completed some of them, after its lease.
    reclaimed = [
        e
        for e in events
        if (e.crm, e.email) in held and e.worker in survivor_ids and e.outcome == "ok"
    ]
    assert reclaimed, "no row of the killed worker was completed by a survivor"
    for event in reclaimed:
        assert event.created_at.timestamp() >= held[(event.crm, event.email)] - CLOCK_EPSILON
    # Pushed by the dead worker, then by a survivor: a lease apart, less the time between the
    # dead worker's claim and its push (well under a second here; 2.5 s allowed). Two claims of
    # one row under overlapping leases would push within moments of each other.
    assert gaps and min(gaps) >= LEASE_SECONDS - 2.5, min(gaps, default=None)
    print(
        f"\n{COUNT:,} contacts x {len(CRMS)} CRMs, 3 workers, one killed with "
        f"{len(held)} leased rows ({done_at_kill:,} rows done): all Complete in {elapsed:.1f} s; "
        f"{len(reclaimed)} rows reclaimed, {len(twice)} pushed by two workers, "
        f"smallest gap {min(gaps):.2f} s; retries: {[(e.crm, e.message) for e in retries][:5]}"
    )
