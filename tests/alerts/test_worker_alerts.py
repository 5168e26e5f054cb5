"""Alerts wired into real workers (`runtime.worker_hooks`, `embed_worker`), on both databases."""

from __future__ import annotations

import asyncio
import os
import signal
from asyncio.subprocess import PIPE
from collections.abc import Sequence
from pathlib import Path

import httpx
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import db
from crmsync.api.app import create_app
from crmsync.connectors.base import AuthFailed, ContactPayload, Fail, RowResult
from crmsync.enums import Crm
from crmsync.migrate import upgrade
from crmsync.runtime import embed_worker, worker_hooks
from crmsync.sandbox import SandboxConfig, SandboxServer
from crmsync.settings import Settings
from crmsync.sync.worker import Worker
from tests.alerts.receiver import SECRET_PATH, Receiver
from tests.conftest import SECRET, add_contacts
from tests.sync.fakes import FakeConnector, FrozenClock
from tests.sync.test_engine import select_for, states
from tests.test_cli import CLI

HUB = Crm.hubspot
PREFIXES = ("BREVO", "HUBSPOT", "MAUTIC", "N8N", "JWT", "DATABASE", "CRMSYNC", "SMTP")


def rejected(batch: Sequence[ContactPayload]) -> list[RowResult]:
    return [Fail(f"Property values were not valid: {c.email} is blocked", 400) for c in batch]


async def test_a_batch_ending_in_error_produces_a_digest(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, receiver: Receiver
) -> None:
    settings.alert_webhook_url = receiver.url
    fake = FakeConnector(HUB)
    fake.script = rejected
    ids = await add_contacts(client, 3)
    await select_for(client, ids)
    async with worker_hooks(settings, engine) as hooks:
        assert len(hooks.on_batch) == 1 and len(hooks.on_pause) == 1
        worker = Worker(
            engine, settings, [HUB], connectors={HUB: fake}, clock=FrozenClock(), hooks=hooks
        )
        assert await worker.runners[HUB].run_once() == 3
    # Leaving the block (after the worker) sends what was collected.
    [text] = receiver.texts
    rows = await states(engine)
    assert sorted(rows) == sorted(ids)
    assert all(r["sync_status"] == "Error" for r in rows.values())
    assert text.splitlines()[0] == "[crmsync] hubspot: 3 contacts reached Error"
    for cid in ids:
        [line] = [line for line in text.splitlines() if cid in line]
        assert "Property values were not valid:" in line and "is blocked" in line
    assert "GET /api/v3/crm/status/failed?crm=hubspot" in text


async def test_an_auth_failure_alerts_while_the_worker_runs(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, receiver: Receiver
) -> None:
    settings.alert_webhook_url = receiver.url
    fake = FakeConnector(HUB)
    fake.error = AuthFailed("HubSpot refused the access token (401)", 401)
    ids = await add_contacts(client, 2)
    await select_for(client, ids)
    async with worker_hooks(settings, engine) as hooks:
        worker = Worker(
            engine, settings, [HUB], connectors={HUB: fake}, clock=FrozenClock(), hooks=hooks
        )
        await worker.runners[HUB].run_once()
        [text] = await receiver.wait_for(1)  # at once, not at shutdown
    assert text.splitlines()[0] == "[crmsync] hubspot paused: authentication failed"
    assert "Reason: HubSpot refused the access token (401)" in text
    assert {r["sync_status"] for r in (await states(engine)).values()} == {"Queued"}


async def test_the_embedded_worker_alerts_through_a_real_connector(
    engine: AsyncEngine, settings: Settings, receiver: Receiver, auth: dict[str, str]
) -> None:
    wrong_token = "pat-na1-wrong-token-0123456789"
    async with SandboxServer(SandboxConfig(custom_fields=True)) as sandbox:
        settings.alert_webhook_url = receiver.url
        settings.hubspot.access_token = SecretStr(wrong_token)
        settings.hubspot.api_base_url = sandbox.hubspot_url
        app = create_app(settings, SECRET, engine=engine)
        embed_worker(app, [HUB])
        for hook in app.state.startup_hooks:
            await hook(app)
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://test", headers=auth
            ) as client:
                ids = await add_contacts(client, 2)
                await select_for(client, ids)  # wakes the embedded worker
                [text] = await receiver.wait_for(1)
        finally:
            for hook in reversed(app.state.shutdown_hooks):
                await hook(app)
    assert text.splitlines()[0] == "[crmsync] hubspot paused: authentication failed"
    assert "Fix HUBSPOT_ACCESS_TOKEN" in text and wrong_token not in text
    assert app.state.worker_task.done()


async def test_crmsync_worker_sends_alerts_and_stops_cleanly(
    tmp_path: Path, receiver: Receiver, auth: dict[str, str]
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"
    engine = db.create_engine(url)
    await upgrade(engine)
    settings = Settings(
        database_url=url,
        jwt_secret_key=SECRET,
        state_dir=tmp_path,
        _env_file=None,  # type: ignore[call-arg]
    )
    app = create_app(settings, SECRET, engine=engine)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=auth) as client:
        await select_for(client, await add_contacts(client, 2))
    await engine.dispose()
    wrong_token = "pat-na1-wrong-token-0123456789"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(PREFIXES)}
    async with SandboxServer(SandboxConfig(custom_fields=True)) as sandbox:
        env = {
            **clean,
            "DATABASE_URL": url,
            "HUBSPOT_ACCESS_TOKEN": wrong_token,
            "HUBSPOT_API_BASE_URL": sandbox.hubspot_url,
            "CRMSYNC_ALERT_WEBHOOK_URL": receiver.url,
        }
        proc = await asyncio.create_subprocess_exec(
            *CLI, "worker", "--crm", "hubspot", env=env, cwd=tmp_path, stderr=PIPE
        )
        try:
            [text] = await receiver.wait_for(1)
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                _, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, err
    assert text.splitlines()[0] == "[crmsync] hubspot paused: authentication failed"
    log = err.decode()
    assert "alerts go to webhook (127.0.0.1)" in log and "alert: [crmsync] hubspot paused" in log
    assert SECRET_PATH not in log and wrong_token not in log and wrong_token not in text
