"""Operations tests: real syncs against the sandbox, on SQLite and PostgreSQL.

`settings` (overriding the root fixture) points all four CRMs at one session sandbox, with our
pacing off, no retries (a failure is final at once), a short poll interval and a short lease (so
heartbeats, and with them `last_cycle_at`, come every second). `build_world` runs the standard
scenario through the API and a real `Worker`:

| CRM | selected | outcome |
|---|---|---|
| hubspot | 8 good + 2 bad emails | 8 Complete, 2 Error (the vendor refuses the emails) |
| brevo | 3 good; 1 more set Skipped | 3 Complete, 1 Skipped |
| mautic | 3 good, vendor answering 5xx | 3 Error ("Max retries exceeded") |
| n8n | 5 good | 5 Complete |

Two more contacts are never selected anywhere (12 contacts in all).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner, Result

from crmsync import cli
from crmsync.api.app import create_app
from crmsync.enums import Crm, SyncStatus
from crmsync.sandbox import SandboxConfig, SandboxServer
from crmsync.settings import Settings
from crmsync.sync.worker import Worker
from crmsync.tables import contacts, crm_sync_state, sync_events
from tests.conftest import SECRET, add_contacts

SELECT = "/api/v3/contacts/crm/select"
ACTIVE = ("Selected", "Queued", "Processing")


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(no_rate_limits=True, custom_fields=True)) as server:
        yield server


@pytest.fixture
def sb(sandbox_server: SandboxServer) -> SandboxServer:
    sandbox_server.reset(faults=True)
    return sandbox_server


@pytest.fixture
def settings(
    db_url: str, tmp_path: Any, sb: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    env = {**sb.env(), "BREVO_RATE_LIMIT_PER_SECOND": "0", "HUBSPOT_RATE_LIMIT_PER_SECOND": "0"}
    for crm in ("BREVO", "HUBSPOT", "MAUTIC", "N8N"):
        env[f"{crm}_SYNC_MAX_RETRIES"] = "0"
        env[f"{crm}_SYNC_SCHEDULER_INTERVAL_SECONDS"] = "0.05"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings(
        database_url=db_url,
        jwt_secret_key=SECRET,
        state_dir=tmp_path / ".crmsync",
        lease_seconds=3,  # heartbeat every second; alive = a beat in the last 3 s
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
def app(settings: Settings, engine: AsyncEngine) -> FastAPI:
    return create_app(settings, SECRET, engine=engine)


@pytest.fixture
async def client(app: FastAPI, auth: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=auth) as http:
        yield http


# -- a running worker ------------------------------------------------------------------------


@asynccontextmanager
async def running_worker(
    engine: AsyncEngine, settings: Settings, app: FastAPI, crms: list[Crm] | None = None
) -> AsyncIterator[Worker]:
    """A real worker (connectors from `settings`: the sandbox), woken by the app's selections."""
    worker = Worker(engine, settings, crms)
    app.state.contacts.on_queued = worker.wakeup.notify
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        app.state.contacts.on_queued = None
        await asyncio.wait_for(task, 15)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for: {what}")
        await asyncio.sleep(0.05)


async def active_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        stmt = select(func.count()).where(crm_sync_state.c.sync_status.in_(ACTIVE))
        return int((await conn.execute(stmt)).scalar_one())


async def drained(engine: AsyncEngine) -> None:
    async def check() -> bool:
        return await active_rows(engine) == 0

    await eventually(check, "every selected row to reach Complete or Error")


# -- the database, read directly (the truth the API is compared with) --------------------------


async def state_rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(crm_sync_state))
        return [dict(row._mapping) for row in rows]


async def contact_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(contacts))).scalar_one())


async def expected_summary(engine: AsyncEngine) -> dict[str, Any]:
    """The summary computed in Python from every row: no SQL shared with the code under test."""
    total = await contact_count(engine)
    rows = await state_rows(engine)
    out: dict[str, dict[str, int]] = {}
    for crm in Crm:
        counts = Counter(r["sync_status"] for r in rows if r["crm"] == crm.value)
        selected_somehow = sum(n for status, n in counts.items() if status != "New")
        out[crm.value] = {s.value: counts.get(s.value, 0) for s in SyncStatus}
        out[crm.value]["New"] = total - selected_somehow
    return {"crms": out, "total_contacts": total}


async def event_counts(engine: AsyncEngine) -> dict[str, Counter[str]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(sync_events.c.crm, sync_events.c.outcome))).all()
    found: dict[str, Counter[str]] = {crm.value: Counter() for crm in Crm}
    for crm, outcome in rows:
        found[crm][outcome] += 1
    return found


# -- the standard scenario -----------------------------------------------------------------------


@dataclass
class World:
    good: list[str]
    bad: list[str]
    idle: list[str]


async def add_bad_contacts(client: httpx.AsyncClient, count: int) -> list[str]:
    """Contacts our API accepts but the vendors refuse (a digit in the top-level domain)."""
    prefix = uuid.uuid4().hex[:8]
    rows = [{"email": f"bad{i}-{prefix}@example.c0m"} for i in range(count)]
    response = await client.post("/api/v3/contacts/bulk", json=rows)
    assert response.json()["created_count"] == count, response.text
    listed = await client.get("/api/v3/contacts", params={"email_contains": prefix})
    return [c["id"] for c in listed.json()]


async def select_for(client: httpx.AsyncClient, crm: str, ids: list[str]) -> None:
    response = await client.put(SELECT, json={"contact_ids": ids, "crms": [crm]})
    assert response.status_code == 200, response.text


async def fields_checked(worker: Worker) -> None:
    """Wait until the worker has checked every CRM's custom fields (before it syncs)."""

    async def check() -> bool:
        return not any(runner.fields.pending for runner in worker.runners.values())

    await eventually(check, "the worker to check each CRM's custom fields")


async def build_world(
    client: httpx.AsyncClient, engine: AsyncEngine, sb: SandboxServer, worker: Worker
) -> World:
    """Run the standard scenario; `worker` must be running."""
    good = await add_contacts(client, 8)
    bad = await add_bad_contacts(client, 2)
    idle = await add_contacts(client, 2)
    # Faults set once the field check is done hit the pushes, not the check.
    await fields_checked(worker)
    sb.set_faults("mautic", error_rate=1.0)
    await select_for(client, "hubspot", good + bad)
    await select_for(client, "brevo", good[:3])
    skip = await client.put(f"/api/v3/contacts/{good[3]}", json={"brevo_sync_status": "Skipped"})
    assert skip.status_code == 200, skip.text
    await select_for(client, "mautic", good[:3])
    await select_for(client, "n8n", good[:5])
    await drained(engine)
    sb.set_faults("mautic", error_rate=0.0)
    return World(good, bad, idle)


@pytest.fixture
async def world(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    app: FastAPI,
    sb: SandboxServer,
) -> AsyncIterator[tuple[World, Worker]]:
    """The standard scenario, with its worker still running during the test."""
    async with running_worker(engine, settings, app) as worker:
        yield await build_world(client, engine, sb, worker), worker


@pytest.fixture
async def stopped_world(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    app: FastAPI,
    sb: SandboxServer,
) -> World:
    """The standard scenario, its worker stopped again (the database holds still)."""
    async with running_worker(engine, settings, app) as worker:
        return await build_world(client, engine, sb, worker)


# -- the CLI in-process ------------------------------------------------------------------------


@pytest.fixture
def run_cli(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Awaitable[Result]]:
    """Invoke `crmsync ...` in a thread (its commands call asyncio.run), with these settings.

    Settings are injected instead of read from the environment, which also keeps the command
    from reconfiguring the test run's logging.
    """
    monkeypatch.setattr(cli.common, "load_settings", lambda: settings)

    async def invoke(*args: str, input: str | None = None) -> Result:
        runner = CliRunner()
        return await asyncio.to_thread(runner.invoke, cli.app, list(args), input=input)

    return invoke
