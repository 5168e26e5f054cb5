"""Health: ok, down (and strict 503), a paused CRM, an auth pause lifted by resume, a CRM that is
not configured, and a database that cannot be read."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import Result

from crmsync import db
from crmsync.api.app import create_app
from crmsync.enums import Crm
from crmsync.sandbox import SandboxServer
from crmsync.settings import Settings
from crmsync.sync.worker import Worker
from crmsync.tables import crm_control
from tests.conftest import SECRET, add_contacts
from tests.ops.conftest import drained, eventually, running_worker, select_for, state_rows

HEALTH = "/api/v3/crm/health"
RunCli = Callable[..., Awaitable[Result]]


async def statuses(engine: AsyncEngine, crm: str) -> list[str]:
    return sorted(r["sync_status"] for r in await state_rows(engine) if r["crm"] == crm)


async def test_ok_when_every_crm_is_served_and_healthy(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, app: FastAPI
) -> None:
    async with running_worker(engine, settings, app) as worker:
        ids = await add_contacts(client, 3)
        await select_for(client, "hubspot", ids)
        await select_for(client, "n8n", ids)
        await drained(engine)

        async def cycled() -> bool:  # the heartbeat (every second here) records the last cycle
            body = (await client.get(HEALTH)).json()
            return body["crms"]["n8n"]["workers"][0]["last_cycle_at"] is not None

        await eventually(cycled, "a heartbeat with last_cycle_at")
        for strict in ("false", "true"):
            response = await client.get(HEALTH, params={"strict": strict})
            assert response.status_code == 200
            body = response.json()
            assert body["status"] == "ok" and body["reasons"] == []
        for entry in body["crms"].values():
            assert entry["status"] == "ok" and entry["workers"][0]["id"] == worker.id
        assert body["crms"]["hubspot"]["queue"]["Complete"] == 3
        assert body["crms"]["hubspot"]["successes"] == 3 and body["crms"]["n8n"]["error_rate"] == 0


async def test_down_when_rows_are_due_and_no_worker_is_alive(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, app: FastAPI
) -> None:
    async with running_worker(engine, settings, app, [Crm.n8n]):
        pass  # it registered, then stopped: a stopped worker is not alive
    ids = await add_contacts(client, 3)
    await select_for(client, "hubspot", ids)

    response = await client.get(HEALTH)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "down" and body["workers"] == []
    assert body["reasons"][0] == "3 row(s) are due and no worker is alive"
    hubspot = body["crms"]["hubspot"]
    assert hubspot["status"] == "down" and hubspot["due"] == 3 and hubspot["lag_seconds"] >= 0
    assert hubspot["reasons"] == ["3 row(s) are due and no live worker serves it"]
    assert body["crms"]["brevo"]["status"] == "degraded"  # configured, nobody serves it
    strict = await client.get(HEALTH, params={"strict": "true"})
    assert strict.status_code == 503 and strict.json()["status"] == "down"

    # A tight lag bound turns the waiting rows into a lag reason as well (once they waited it).
    async def lag_reported() -> bool:
        tight = (await client.get(HEALTH, params={"max_lag_seconds": 0.01})).json()
        return any("oldest due row has waited" in r for r in tight["crms"]["hubspot"]["reasons"])

    await eventually(lag_reported, "the lag reason for hubspot")


async def test_a_paused_crm_is_skipped_by_the_worker_and_shown_paused(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    app: FastAPI,
    sb: SandboxServer,
    run_cli: RunCli,
) -> None:
    paused = await run_cli("pause", "--crm", "hubspot")
    assert paused.exit_code == 0 and "hubspot paused" in paused.stdout
    async with running_worker(engine, settings, app) as worker:
        hubspot_cycles = count_idles(worker, Crm.hubspot)
        ids = await add_contacts(client, 3)
        await select_for(client, "hubspot", ids)
        await select_for(client, "n8n", ids)

        async def n8n_done() -> bool:
            return await statuses(engine, "n8n") == ["Complete"] * 3

        await eventually(n8n_done, "n8n to sync while hubspot is paused")
        seen = len(hubspot_cycles)

        async def hubspot_cycled() -> bool:
            return len(hubspot_cycles) >= seen + 2

        # Two more hubspot cycles ran (each found the pause): still nothing claimed for it.
        await eventually(hubspot_cycled, "two more hubspot cycles")
        assert await statuses(engine, "hubspot") == ["Selected"] * 3
        assert sb.contacts("hubspot") == []

        body = (await client.get(HEALTH)).json()
        hubspot = body["crms"]["hubspot"]
        assert hubspot["paused"] and hubspot["manual_pause"] and hubspot["pause_kind"] is None
        assert hubspot["status"] == "degraded" and body["status"] == "degraded"
        assert "hubspot: paused by an operator (`crmsync resume --crm hubspot`)" in body["reasons"]

        resumed = await run_cli("resume", "--crm", "hubspot")
        assert resumed.exit_code == 0 and "operator pause lifted" in resumed.stdout

        async def hubspot_done() -> bool:
            return await statuses(engine, "hubspot") == ["Complete"] * 3

        await eventually(hubspot_done, "hubspot to sync after resume")
        assert len(sb.contacts("hubspot")) == 3
        hubspot = (await client.get(HEALTH)).json()["crms"]["hubspot"]
        assert not hubspot["paused"] and not hubspot["manual_pause"]


async def test_auth_pause_is_down_and_resume_retries_at_once(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    app: FastAPI,
    sb: SandboxServer,
    run_cli: RunCli,
) -> None:
    settings.brevo.api_key = None  # hubspot is the only configured CRM
    settings.mautic.base_url = None
    settings.n8n.webhook_url = None
    sb.set_faults("hubspot", bad_credentials=True)
    async with running_worker(engine, settings, app, [Crm.hubspot]):
        ids = await add_contacts(client, 3)
        await select_for(client, "hubspot", ids)

        async def paused_for_auth() -> bool:
            async with engine.connect() as conn:
                kind = (await conn.execute(select(crm_control.c.pause_kind))).scalar()
            return kind == "auth"

        # The worker's field check meets the 401 before any push: the rows wait, unclaimed.
        await eventually(paused_for_auth, "the auth pause after the 401")
        assert set(await statuses(engine, "hubspot")) <= {"Selected", "Queued"}
        rows = [r for r in await state_rows(engine) if r["crm"] == "hubspot"]
        assert all(r["attempts"] == 0 for r in rows)  # an auth failure spends no attempt

        response = await client.get(HEALTH, params={"strict": "true"})
        assert response.status_code == 503
        body = response.json()
        hubspot = body["crms"]["hubspot"]
        assert body["status"] == "down" and body["reasons"][0] == "every configured CRM is down"
        assert hubspot["status"] == "down" and hubspot["paused"] and not hubspot["manual_pause"]
        assert hubspot["pause_kind"] == "auth" and hubspot["pause_reason"]
        until = dt.datetime.fromisoformat(hubspot["paused_until"])
        assert until > dt.datetime.now(dt.UTC) + dt.timedelta(seconds=250)  # 300 s auth wait
        assert body["crms"]["brevo"]["status"] == "disabled"

        sb.set_faults("hubspot", bad_credentials=False)  # the operator fixes the token
        resumed = await run_cli("resume", "--crm", "hubspot")
        assert resumed.exit_code == 0, resumed.output
        assert "auth pause cleared" in resumed.stdout

        async def synced() -> bool:
            return await statuses(engine, "hubspot") == ["Complete"] * 3

        await eventually(synced, "hubspot to sync right after resume (not in 300 s)")
        body = (await client.get(HEALTH)).json()
        assert body["status"] == "ok" and body["crms"]["hubspot"]["pause_kind"] is None


async def test_a_crm_without_credentials_is_disabled(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    settings.mautic.base_url = None
    body = (await client.get(HEALTH)).json()
    mautic = body["crms"]["mautic"]
    assert mautic["enabled"] is False and mautic["status"] == "disabled"
    assert mautic["disabled_reason"] == "MAUTIC_BASE_URL is not set" and mautic["reasons"] == []
    assert body["crms"]["hubspot"]["enabled"] is True

    ids = await add_contacts(client, 2)
    await select_for(client, "mautic", ids)
    body = (await client.get(HEALTH)).json()
    mautic = body["crms"]["mautic"]
    assert mautic["status"] == "down" and mautic["due"] == 2
    assert mautic["reasons"] == [
        "not configured (MAUTIC_BASE_URL is not set) while 2 row(s) are due"
    ]
    # Rows waiting for an unconfigured CRM do not make the service down, only degraded.
    assert body["status"] == "degraded"


async def test_health_and_metrics_when_the_database_cannot_be_read(
    tmp_path: Path, auth: dict[str, str]
) -> None:
    threads_before = set(threading.enumerate())
    url = f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'dir' / 'crmsync.db'}"
    settings = Settings(database_url=url, _env_file=None)  # type: ignore[call-arg]
    engine = db.create_engine(url)
    app = create_app(settings, SECRET, engine=engine)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=auth) as http:
        body = (await http.get(HEALTH)).json()
        assert body["status"] == "down" and body["database"] == "error"
        assert body["reasons"] == ["the database could not be read"]
        assert (await http.get(HEALTH, params={"strict": "true"})).status_code == 503
        metrics = await http.get("/metrics")
        assert metrics.status_code == 200 and "crmsync_database_up 0.0" in metrics.text
    await engine.dispose()
    await _aiosqlite_threads_finished(threads_before)


async def _aiosqlite_threads_finished(before: set[threading.Thread]) -> None:
    """Wait for the threads of aiosqlite's failed connects to end while this loop still runs.

    After a failed connect aiosqlite queues a stop whose result its thread posts to the loop. If
    the test's loop closes first, the thread dies with "Event loop is closed" and pytest blames
    whichever test runs next (seen in CI).
    """
    for thread in set(threading.enumerate()) - before:
        if thread.name.endswith("(_connection_worker_thread)"):
            await asyncio.to_thread(thread.join, 10)


def count_idles(worker: Worker, crm: Crm) -> list[float]:
    """The waits `crm`'s runner idled for from now on, one per finished cycle."""
    idles: list[float] = []
    original = worker.idle

    async def counted(which: Crm, seconds: float) -> None:
        if which is crm:
            idles.append(seconds)
        await original(which, seconds)

    worker.idle = counted  # type: ignore[method-assign]
    return idles
