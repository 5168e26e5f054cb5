"""Stopping a real `crmsync worker` process while batches are in flight at a slow fake.

SIGTERM: no new claims; a batch the vendor answers within `CRMSYNC_SHUTDOWN_GRACE_SECONDS`
finishes, one it does not is cancelled and its rows handed back (Queued, no attempt spent); the
process exits 0 within the grace period and leaves no row in Processing.

SIGKILL: nothing is handed back. The rows stay Processing under the dead worker's lease, no other
worker touches them before it expires, and then another worker completes them.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
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

COUNT = 150  # two batches per CRM (100 + 50), both in flight at once
GRACE_SECONDS = 4.0
HUBSPOT_LATENCY_MS = 1_500  # answered within the grace period
N8N_LATENCY_MS = 60_000  # not answered within it
CLOCK_EPSILON = 0.001


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    config = SandboxConfig(no_rate_limits=True, push_log=True, custom_fields=True)
    async with SandboxServer(config) as server:
        yield server


async def _api(
    sandbox: SandboxServer,
    engine: AsyncEngine,
    db_url: str,
    auth: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    **extra: str,
) -> tuple[dict[str, str], httpx.AsyncClient]:
    env = e2e_env(sandbox.env(), db_url, **extra)
    app = create_app(settings_from_env(env, monkeypatch, tmp_path), SECRET, engine=engine)
    transport = httpx.ASGITransport(app=app)
    return env, httpx.AsyncClient(transport=transport, base_url="http://e2e", headers=auth)


def _in_flight(sandbox: SandboxServer, crm: str) -> int:
    count: int = sandbox.stats()[crm]["in_flight"]
    return count


@pytest.mark.timeout(120)
async def test_sigterm_finishes_or_hands_back_in_flight_batches_and_exits_0(
    sandbox: SandboxServer,
    engine: AsyncEngine,
    db_url: str,
    auth: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    processes: Processes,
) -> None:
    sandbox.set_faults("hubspot", latency_ms=HUBSPOT_LATENCY_MS)
    sandbox.set_faults("n8n", latency_ms=N8N_LATENCY_MS)
    env, api = await _api(
        sandbox,
        engine,
        db_url,
        auth,
        tmp_path,
        monkeypatch,
        CRMSYNC_SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS),
    )
    rows = realistic_contacts(COUNT)
    async with api:
        await create_contacts(api, rows)
        worker = processes.worker("worker", env, "hubspot", "n8n")
        await wait_registered(engine, worker)
        await select_all(api, ["hubspot", "n8n"])

    async def all_at_the_vendor() -> bool:
        counts = await status_counts(engine)
        return (
            counts == Counter({("hubspot", "Processing"): COUNT, ("n8n", "Processing"): COUNT})
            and _in_flight(sandbox, "hubspot") == 2
            and _in_flight(sandbox, "n8n") == 2
        )

    await wait_until(all_at_the_vendor, 30, "both CRMs' batches to be at the vendor")
    assert worker.terminate(timeout=GRACE_SECONDS + 20) == 0, worker.output()
    assert worker.exit_seconds is not None
    # Within the grace period (plus the process's own start-up of its shutdown and exit).
    assert worker.exit_seconds < GRACE_SECONDS + 3, worker.exit_seconds
    log = worker.output()
    assert "handed back" in log and f"worker {worker.worker_id} stopped" in log, log
    assert "Traceback" not in log, log

    states = await state_rows(engine)
    assert not [r for r in states if r.sync_status == "Processing"]
    hubspot = [r for r in states if r.crm == "hubspot"]
    n8n = [r for r in states if r.crm == "n8n"]
    # The slow-but-answered batches finished ...
    assert all(r.sync_status == "Complete" for r in hubspot)
    assert {c["email"] for c in sandbox.contacts("hubspot")} == {r.email for r in hubspot}
    # ... the unanswered ones were handed back: due now, no attempt spent, no lease.
    assert all(r.sync_status == "Queued" and r.attempts == 0 and r.lease_token is None for r in n8n)
    events = Counter((e.crm, e.outcome, e.worker, e.message) for e in await event_rows(engine))
    assert events == Counter(
        {
            ("hubspot", "ok", worker.worker_id, None): COUNT,
            ("n8n", "released", worker.worker_id, "worker stopped"): COUNT,
        }
    )

    # The next worker takes the handed-back rows at once.
    sandbox.set_faults("n8n", latency_ms=0)
    successor = processes.worker("successor", env, "n8n")

    async def n8n_complete() -> bool:
        return (await status_counts(engine)).get(("n8n", "Complete")) == COUNT

    await wait_until(n8n_complete, 30, "the successor to complete the handed-back rows")
    assert successor.terminate(timeout=30) == 0, successor.output()
    assert {c["email"] for c in sandbox.contacts("n8n")} == {r.email for r in n8n}


@pytest.mark.timeout(120)
async def test_after_sigkill_rows_wait_for_the_lease_then_another_worker_completes_them(
    sandbox: SandboxServer,
    engine: AsyncEngine,
    db_url: str,
    auth: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    processes: Processes,
) -> None:
    lease = 3.0
    env, api = await _api(
        sandbox, engine, db_url, auth, tmp_path, monkeypatch, CRMSYNC_LEASE_SECONDS=str(lease)
    )
    async with api:
        await create_contacts(api, realistic_contacts(COUNT))
        doomed = processes.worker("doomed", env, "hubspot")
        await wait_registered(engine, doomed)
        await wait_until(
            lambda: _fields_checked(sandbox, 1), 30, "the first worker to check HubSpot's fields"
        )
        # The dead worker's requests never get an answer while this test looks.
        sandbox.set_faults("hubspot", latency_ms=60_000)
        await select_all(api, ["hubspot"])

    async def doomed_holds_everything() -> bool:
        rows = await state_rows(engine, "hubspot")
        return (
            len(rows) == COUNT
            and all(r.sync_status == "Processing" for r in rows)
            and {r.lease_owner for r in rows} == {doomed.worker_id}
            and _in_flight(sandbox, "hubspot") == 2
        )

    await wait_until(doomed_holds_everything, 30, "the first worker to hold every row")
    # Requests already in flight keep hanging; the heir's own (its field check) are answered.
    sandbox.set_faults("hubspot", latency_ms=0)
    # The other worker is up and polling (every 0.2 s) before the first one dies.
    heir = processes.worker("heir", env, "hubspot")
    await wait_registered(engine, heir)
    assert await doomed_holds_everything()
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait(timeout=10)
    sandbox.set_faults("hubspot", latency_ms=0)
    held = {r.email: r for r in await state_rows(engine, "hubspot")}
    expiries = {
        email: r.lease_expires_at.timestamp() for email, r in held.items() if r.lease_expires_at
    }
    assert len(expiries) == COUNT
    first_expiry = min(expiries.values())
    assert first_expiry > time.time(), "the lease ran out before the test could watch it"

    # Until the lease expires the rows stay exactly as the dead worker left them.
    checks = 0
    while time.time() < first_expiry - 0.1:
        now_rows = await state_rows(engine, "hubspot")
        assert all(
            r.sync_status == "Processing"
            and r.lease_owner == doomed.worker_id
            and r.lease_token == held[r.email].lease_token
            for r in now_rows
        ), "a row was taken before its lease expired"
        checks += 1
        await asyncio.sleep(0.1)
    assert checks > 0

    async def heir_completed() -> bool:
        return (await status_counts(engine)) == Counter({("hubspot", "Complete"): COUNT})

    await wait_until(heir_completed, 30, "the other worker to complete the rows")
    assert heir.terminate(timeout=30) == 0, heir.output()
    events = await event_rows(engine)
    assert {(e.outcome, e.worker) for e in events} == {("ok", heir.worker_id)}
    assert Counter(e.email for e in events) == Counter({email: 1 for email in held})
    for event in events:
        assert event.created_at.timestamp() >= expiries[event.email] - CLOCK_EPSILON
    heir_pushes = [p for p in sandbox.pushes("hubspot") if p["sender"] == heir.worker_id]
    assert Counter(p["email"] for p in heir_pushes) == Counter({email: 1 for email in held})
    assert all(p["at"] >= expiries[p["email"]] - CLOCK_EPSILON for p in heir_pushes)
    assert {c["email"] for c in sandbox.contacts("hubspot")} == set(held)


async def _fields_checked(sandbox: SandboxServer, workers: int) -> bool:
    """Whether `workers` field checks (`GET /crm/v3/properties/contacts`) were answered."""
    stats = sandbox.stats()["hubspot"]
    return bool(stats["by_endpoint"].get("GET /crm/v3/properties/contacts", 0) >= workers)
