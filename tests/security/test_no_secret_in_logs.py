"""No secret in any log line of a full sync run with faults, all four CRMs, logging at DEBUG.

Two phases against the sandbox, with every credential a distinctive random value:
1. 150 contacts to Brevo, HubSpot, Mautic and n8n while every vendor answers 20% 5xx and drops 5%
   of connections after taking the request, and all but Mautic start with a burst of 429s: all
   Complete.
2. The same contacts re-selected with credentials every vendor refuses, and an n8n webhook URL
   whose path n8n does not know (n8n's 404 names the path): every CRM pauses, alerts go out.
Every line logged (crmsync's, httpx's, uvicorn's, the alerts') is kept, formatted as the service
formats it, exceptions included; none may hold a key, token, secret, password, the webhook URLs
or their paths, the JWT secret or a bearer token.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import logs
from crmsync.alerts.alerter import from_settings as alerter_from_settings
from crmsync.api.app import create_app
from crmsync.auth import mint_token
from crmsync.sandbox import SandboxConfig, SandboxServer
from crmsync.sync.worker import Worker
from tests.alerts.receiver import SECRET_PATH, Receiver
from tests.conftest import SECRET
from tests.e2e.support import (
    CRMS,
    create_contacts,
    e2e_env,
    errors_sample,
    realistic_contacts,
    settings_from_env,
    status_counts,
    wait_until,
)

COUNT = 150


def _secret(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


CONFIG = SandboxConfig(
    no_rate_limits=True,
    custom_fields=True,
    brevo_api_key=_secret("xkeysib"),
    hubspot_access_token=_secret("pat-na1"),
    mautic_password=_secret("mautic-pw"),
    mautic_client_secret=_secret("mautic-cs"),
    n8n_secret=_secret("n8n-secret"),
    n8n_webhooks=(_secret("hook-path"),),
    faults={
        crm: {
            "error_rate": 0.2,
            "timeout_rate": 0.05,
            "timeout_ms": 50,
            "timeout_action": "drop",
            # Mautic's 429 is its hourly limit: a burst would pause it until the next hour.
            "burst_429": 0 if crm == "mautic" else 2,
        }
        for crm in CRMS
    },
)
# Phase 2: values every vendor refuses, and a webhook path n8n does not know.
WRONG = {
    "BREVO_API_KEY": _secret("xkeysib-wrong"),
    "HUBSPOT_ACCESS_TOKEN": _secret("pat-na1-wrong"),
    "MAUTIC_PASSWORD": _secret("mautic-pw-wrong"),
    "N8N_WEBHOOK_SECRET": _secret("n8n-secret-wrong"),
}
UNKNOWN_HOOK = _secret("unknown-hook-path")


class Everything(logging.Handler):
    """Keeps every record, formatted by the service's own formatter (tracebacks included)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured() -> Iterator[Everything]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "aiosqlite")}
    logs.configure("text", "DEBUG")
    handler = Everything()
    handler.setFormatter(root.handlers[0].formatter)
    root.addHandler(handler)
    yield handler
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    async with SandboxServer(CONFIG, subprocess=True) as server:
        yield server


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


def _retry_env() -> dict[str, str]:
    env = {"CRMSYNC_ALERT_MIN_INTERVAL_SECONDS": "0", "CRMSYNC_LOG_LEVEL": "DEBUG"}
    for crm in CRMS:
        env[f"{crm.upper()}_SYNC_MAX_RETRIES"] = "20"
        env[f"{crm.upper()}_SYNC_RETRY_DELAY_SECONDS"] = "0.05"
        env[f"{crm.upper()}_SYNC_RETRY_EXPONENTIAL"] = "false"
        env[f"{crm.upper()}_SYNC_SCHEDULER_BATCH_SIZE"] = "25"
        env[f"{crm.upper()}_AUTH_RETRY_SECONDS"] = "600"
    return env


async def _describe(engine: AsyncEngine) -> str:
    return f"{sorted((await status_counts(engine)).items())}: {await errors_sample(engine)}"


async def _run_until(
    engine: AsyncEngine, settings: object, what: str, done: object, api: httpx.AsyncClient
) -> None:
    alerter = alerter_from_settings(settings)  # type: ignore[arg-type]
    assert alerter is not None
    async with alerter:
        from crmsync.runtime import build_hooks

        worker = Worker(engine, settings, hooks=build_hooks(settings, engine, alerter))  # type: ignore[arg-type]
        task = asyncio.create_task(worker.run())
        try:
            await wait_until(done, 90, what, 0.1, describe=lambda: _describe(engine))  # type: ignore[arg-type]
        finally:
            worker.stop()
            await asyncio.wait_for(task, 30)


@pytest.mark.timeout(240)
async def test_a_full_run_with_faults_logs_no_secret(
    captured: Everything,
    sandbox: SandboxServer,
    receiver: Receiver,
    engine: AsyncEngine,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = mint_token(SECRET, "leak-test", dt.timedelta(hours=1))
    auth = {"Authorization": f"Bearer {token}"}
    base = sandbox.env()
    env = e2e_env(base, db_url, CRMSYNC_ALERT_WEBHOOK_URL=receiver.url, **_retry_env())
    settings = settings_from_env(env, monkeypatch, tmp_path)
    app = create_app(settings, SECRET, engine=engine)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://leak", headers=auth) as api:
        await create_contacts(api, realistic_contacts(COUNT))
        select = {"all": True, "crms": list(CRMS), "force": True}
        assert (await api.put("/api/v3/contacts/crm/select/filtered", json=select)).is_success

        async def all_complete() -> bool:
            counts = await status_counts(engine)
            return sum(n for (_, s), n in counts.items() if s == "Complete") == 4 * COUNT

        await _run_until(engine, settings, "every row Complete", all_complete, api)
        stats = sandbox.stats()
        assert all(stats[crm]["5xx"] > 0 for crm in CRMS), stats  # the faults did happen

        # Phase 2: refused credentials everywhere, and an unknown n8n webhook path.
        hook_url = base["N8N_WEBHOOK_URL"].rsplit("/", 1)[0] + f"/{UNKNOWN_HOOK}"
        wrong_env = {**env, **WRONG, "N8N_WEBHOOK_URL": hook_url}
        wrong = settings_from_env(wrong_env, monkeypatch, tmp_path)
        app.state.settings = wrong
        assert (await api.put("/api/v3/contacts/crm/select/filtered", json=select)).is_success

        async def all_paused() -> bool:
            health = (await api.get("/api/v3/crm/health")).json()
            return all(health["crms"][crm]["paused"] for crm in CRMS)

        await _run_until(engine, wrong, "every CRM paused", all_paused, api)
        health = await api.get("/api/v3/crm/health")
        await receiver.wait_for(4)  # a pause alert per CRM went out

    # The run did log, and said why each CRM paused (without saying the secrets) ...
    text = "\n".join(captured.lines)
    assert len(captured.lines) > 50 and "paused" in text
    reasons = [health.json()["crms"][crm]["pause_reason"] for crm in CRMS]
    assert any("404" in (reason or "") for reason in reasons), reasons
    # ... and nothing secret appears: in the logs, the health answer, or the alerts sent.
    forbidden = {
        "JWT secret": SECRET,
        "bearer token": token,
        "Brevo key": CONFIG.brevo_api_key,
        "HubSpot token": CONFIG.hubspot_access_token,
        "Mautic password": CONFIG.mautic_password,
        "Mautic client secret": CONFIG.mautic_client_secret,
        "n8n secret": CONFIG.n8n_secret,
        "n8n webhook URL": base["N8N_WEBHOOK_URL"],
        "n8n webhook path": CONFIG.n8n_webhooks[0],
        "unknown n8n webhook path": UNKNOWN_HOOK,
        "alert webhook path": SECRET_PATH,
        **{f"wrong {name}": value for name, value in WRONG.items()},
    }
    for where, content in (
        ("logs", text),
        ("health", health.text),
        ("alerts", "\n".join(receiver.texts)),
    ):
        leaked = [name for name, value in forbidden.items() if value in content]
        assert not leaked, f"{leaked} in the {where}"
