"""Three `crmsync worker` hosts on one PostgreSQL, over a network the test can cut.

Each worker runs in a network namespace of its own, with its own host name, and reaches
PostgreSQL and the vendor sandbox (both on a hub namespace) over its own virtual link
(`tests/e2e/netlab.py`). Two scenarios, one after the other on the same cluster:

1. A cut link: midway through 20,000 contacts x 4 CRMs, one host's link is cut for twice the
   lease while it holds rows, then restored. The other hosts take its rows over once the lease
   ran out; the cut host's results that arrive late are refused by the fence and logged; every
   contact ends Complete and each vendor holds exactly one record per email.
2. A rolling restart: while 12,000 more contacts sync, each host's worker in turn is stopped
   with SIGTERM while it holds rows and started again. Nothing is lost and nothing is pushed
   twice: every (CRM, email) of this round appears exactly once in the vendors' push log.

Needs root, iproute2 and PostgreSQL's server binaries; skipped with the reason otherwise
(`CRMSYNC_REQUIRE_NETNS=1`, set by CI, makes that a failure).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import db
from crmsync.api.app import create_app
from crmsync.sandbox import SandboxConfig, SandboxServer
from crmsync.sandbox.config import VENDORS
from crmsync.sandbox.server import sandbox_env
from crmsync.tables import crm_sync_state
from tests.conftest import SECRET
from tests.conftest import _migrate as migrate_schema
from tests.e2e import netlab
from tests.e2e.support import (
    CRMS,
    WorkerProcess,
    create_contacts,
    e2e_env,
    event_rows,
    process_env,
    realistic_contacts,
    select_all,
    settings_from_env,
    state_rows,
    status_counts,
    wait_registered,
    wait_until,
)

COUNT = 20_000
MORE = 12_000
LEASE_SECONDS = 8.0
CUT_SECONDS = 2 * LEASE_SECONDS
SANDBOX_PORT = 8900
LOST_RESULTS = "result(s) not applied: their rows changed or were reclaimed meanwhile"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def lab() -> Iterator[netlab.Lab]:
    reason = netlab.unavailable()
    if reason is not None:
        if os.environ.get("CRMSYNC_REQUIRE_NETNS") == "1":
            pytest.fail(f"CRMSYNC_REQUIRE_NETNS=1 but {reason}")
        pytest.skip(f"multi-host test: {reason}")
    made = netlab.Lab(hosts=3)
    try:
        yield made.up()
    finally:
        made.close()


@pytest.fixture
async def hub_engine(lab: netlab.Lab) -> AsyncIterator[tuple[str, AsyncEngine]]:
    """The lab's PostgreSQL, migrated: (its URL as the hosts use it, an engine for the test)."""
    for_hosts = await asyncio.to_thread(lab.start_postgres)
    here = lab.control_url(for_hosts)
    await migrate_schema(here)
    engine = db.create_engine(here)
    yield for_hosts, engine
    await engine.dispose()


class Hub:
    """The sandbox running on the hub: its settings for the hosts, its control API for us."""

    def __init__(self, lab: netlab.Lab, config: SandboxConfig, log: Path) -> None:
        self.config = config
        self.env = sandbox_env(f"http://{lab.hub_ip}:{SANDBOX_PORT}", config)
        self.control = SandboxServer(config, host=lab.control_ip, port=SANDBOX_PORT)
        argv = [sys.executable, "-m", "crmsync.sandbox", "--host", "0.0.0.0"]
        argv += ["--port", str(SANDBOX_PORT), "--config-json", config.to_json(), "--quiet"]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(lab.command("hub", argv), stdout=out, stderr=out)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.control.stats()
                return
            except httpx.TransportError:
                assert self.proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the hub's sandbox did not start"
                time.sleep(0.05)

    def set_latency(self, ms: float) -> None:
        for vendor in VENDORS:
            self.control.set_faults(vendor, latency_ms=ms)

    def close(self) -> None:
        self.control.stop()
        self.proc.terminate()
        self.proc.wait(timeout=30)


def start_worker(
    lab: netlab.Lab, n: int, env: dict[str, str], tmp_path: Path, run: int
) -> WorkerProcess:
    name = f"host{n}"
    log = tmp_path / f"{name}-{run}.log"
    argv = lab.command(f"h{n}", [sys.executable, "-m", "crmsync.cli", "worker"], hostname=name)
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=process_env(env), stdout=out, stderr=out)
    return WorkerProcess(name, proc, log)


async def held_by(engine: AsyncEngine, worker_id: str | None) -> int:
    s = crm_sync_state.c
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(s.contact_id).where(s.lease_owner == worker_id, s.sync_status == "Processing")
        )
        return len(rows.all())


async def wait_holding(engine: AsyncEngine, worker: WorkerProcess) -> int:
    """Poll until the worker holds leased rows (so that what happens next hits work in flight)."""
    found = 0

    async def holding() -> bool:
        nonlocal found
        found = await held_by(engine, worker.worker_id)
        return found > 0

    await wait_until(holding, 30, f"{worker.name} to hold leased rows", 0.02)
    return found


def complete(total_per_crm: int) -> Counter[tuple[str, str]]:
    return Counter({(crm, "Complete"): total_per_crm for crm in CRMS})


async def test_hosts_survive_a_cut_link_and_a_rolling_restart(
    lab: netlab.Lab,
    hub_engine: tuple[str, AsyncEngine],
    auth: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url_for_hosts, engine = hub_engine
    config = SandboxConfig(
        no_rate_limits=True,
        push_log=True,
        custom_fields=True,
        faults={vendor: {"latency_ms": 30} for vendor in VENDORS},
    )
    hub = await asyncio.to_thread(Hub, lab, config, tmp_path / "sandbox.log")
    workers: list[WorkerProcess] = []
    try:
        env = e2e_env(
            hub.env,
            url_for_hosts,
            CRMSYNC_LEASE_SECONDS=str(LEASE_SECONDS),
            # Long enough for any batch in flight to finish at 2 s a request: a clean stop.
            CRMSYNC_SHUTDOWN_GRACE_SECONDS="90",
            **{f"{crm.upper()}_SYNC_RETRY_DELAY_SECONDS": "0.5" for crm in CRMS},
        )
        api_env = {**env, "DATABASE_URL": lab.control_url(url_for_hosts)}
        app = create_app(settings_from_env(api_env, monkeypatch, tmp_path), SECRET, engine=engine)
        transport = httpx.ASGITransport(app=app)
        api = httpx.AsyncClient(transport=transport, base_url="http://hub", headers=auth)
        first = realistic_contacts(COUNT + MORE)
        rows, later = first[:COUNT], first[COUNT:]

        async def describe() -> str:
            async with engine.connect() as conn:
                backends = (
                    await conn.execute(
                        text(
                            "SELECT client_addr, state, wait_event, left(query, 60) "
                            "FROM pg_stat_activity WHERE client_addr IS NOT NULL"
                        )
                    )
                ).all()
            counts = sorted((await status_counts(engine)).items())
            return f"{counts}\nbackends: {[tuple(map(str, b)) for b in backends]}"

        # --- 1. a cut link ----------------------------------------------------------------
        await create_contacts(api, rows)
        workers = [start_worker(lab, n, env, tmp_path, 1) for n in (1, 2, 3)]
        await wait_registered(engine, *workers)
        assert {w.worker_id.split(":")[0] for w in workers if w.worker_id} == {
            "host1",
            "host2",
            "host3",
        }
        total = COUNT * len(CRMS)
        assert (await select_all(api, CRMS))["queued_count"] == total

        async def a_quarter_done() -> bool:
            counts = await status_counts(engine)
            return sum(n for (_, st), n in counts.items() if st == "Complete") >= total // 4

        await wait_until(
            a_quarter_done, 120, "a quarter of the rows to be Complete", 0.05, describe
        )
        cut_host = workers[0]
        held = await wait_holding(engine, cut_host)
        lab.cut(1)
        cut_at = time.monotonic()
        cut_log_before = len(cut_host.output())

        # The others finish everything they can reach; the cut host's rows wait for its lease.
        async def only_the_cut_hosts_rows_left() -> bool:
            counts = await status_counts(engine)
            not_done = sum(n for (_, st), n in counts.items() if st != "Complete")
            return not_done <= await held_by(engine, cut_host.worker_id)

        await wait_until(
            only_the_cut_hosts_rows_left, 120, "the reachable work to be done", 0.1, describe
        )
        if (left := CUT_SECONDS - (time.monotonic() - cut_at)) > 0:
            await asyncio.sleep(left)  # the cut lasts twice the lease, whatever else happened
        reclaimed_during_cut = held - await held_by(engine, cut_host.worker_id)
        lab.restore(1)

        async def all_complete() -> bool:
            return await status_counts(engine) == complete(COUNT)

        await wait_until(all_complete, 180, "every row to be Complete after the cut", 0.2, describe)

        # The cut host's answers that arrived late were refused by the fence, and it said so.
        async def refused_logged() -> bool:
            return LOST_RESULTS in cut_host.output()[cut_log_before:]

        await wait_until(refused_logged, 60, "the cut host to log its refused late results", 0.2)
        assert reclaimed_during_cut > 0, "no other host took the cut host's rows over"
        states = await state_rows(engine)
        assert all(r.sync_status == "Complete" and r.lease_owner is None for r in states)
        emails = {row["email"].lower() for row in rows}
        for crm in CRMS:
            stored = hub.control.contacts(crm)
            assert len(stored) == COUNT and {c["email"] for c in stored} == emails, crm
        events = await event_rows(engine)
        survivors = {w.worker_id for w in workers[1:]}
        assert any(e.worker in survivors for e in events)

        # --- 2. a rolling restart -----------------------------------------------------------
        await asyncio.to_thread(hub.set_latency, 2000)  # each request in flight for 2 s
        await create_contacts(api, later)
        pushed_before = {crm: len(hub.control.pushes(crm)) for crm in CRMS}
        ids = await _ids(api, later)
        queued = 0
        for start in range(0, len(ids), 10_000):  # the select API's maximum per request
            response = await api.put(
                "/api/v3/contacts/crm/select",
                json={"contact_ids": ids[start : start + 10_000], "crms": list(CRMS)},
                timeout=120,
            )
            assert response.status_code == 200, response.text
            queued += response.json()["queued_count"]
        assert queued == MORE * len(CRMS)
        restarted = []
        for n, old in enumerate(workers, start=1):
            await wait_holding(engine, old)
            assert old.terminate(timeout=120) == 0, old.output()
            new = start_worker(lab, n, env, tmp_path, 2)
            restarted.append(new)
            await wait_registered(engine, new)
        workers = restarted

        async def all_new_complete() -> bool:
            return await status_counts(engine) == complete(COUNT + MORE)

        await wait_until(
            all_new_complete, 240, "every row to be Complete after the restarts", 0.2, describe
        )
        more_emails = {row["email"].lower() for row in later}
        for crm in CRMS:
            stored = hub.control.contacts(crm)
            assert len(stored) == COUNT + MORE, crm
            round_two = hub.control.pushes(crm)[pushed_before[crm] :]
            twice = [e for e, n in Counter(p["email"] for p in round_two).items() if n > 1]
            assert not twice, f"{crm}: pushed twice across the restart: {twice[:5]}"
            assert {p["email"] for p in round_two} == more_emails, crm
        for worker in workers:
            assert worker.terminate(timeout=60) == 0, worker.output()
        print(
            f"\ncut host held {held} rows, {reclaimed_during_cut} taken over during the cut; "
            f"rolling restart of 3 hosts with {MORE:,} x {len(CRMS)} rows in flight"
        )
    finally:
        for worker in workers:
            worker.kill()
        await asyncio.to_thread(hub.close)


async def _ids(api: httpx.AsyncClient, rows: list[dict[str, Any]]) -> list[str]:
    wanted = {row["email"].lower() for row in rows}
    found: list[str] = []
    offset = 0
    while True:
        page = await api.get("/api/v3/contacts", params={"limit": 1000, "offset": offset})
        assert page.status_code == 200, page.text
        batch = page.json()
        found += [c["id"] for c in batch if c["email"].lower() in wanted]
        if len(batch) < 1000:
            return found
        offset += 1000
