"""End to end against the sandbox: 2,000 contacts selected for all four CRMs, 10% 5xx faults on
every vendor, one real `Worker`, SQLite and PostgreSQL: every row ends Complete and each fake holds
exactly one record per email, written exactly once.

Retries. A 5xx answer costs the rows of that request one attempt; each attempt is a fresh request
and fails independently with p = 0.1 (for a Brevo import, p = 0.1 * 0.1: a failed import falls back
to single upserts in the same attempt). A row ends in Error only after MAX_RETRIES + 1 failed
attempts, so over all 8,000 rows P(any Error) <= 8,000 * 0.1**(MAX_RETRIES + 1) = 8e-8 with
MAX_RETRIES = 10. Backoff is linear, 0.05 s * n (+-20%), so even the unluckiest row waits under 3 s.

HubSpot, Mautic and n8n batches are 20 rows here (vendor maximum: 100, 200, 100), so that each
vendor sees about 100 requests: P(no fault at all on a vendor) = 0.9**100 = 3e-5, and the test
can demand that every vendor did fail and every CRM did retry. Brevo takes 600-row batches: three
go through the import endpoint (>= 500 rows), the last 200 rows one by one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.api.app import create_app
from crmsync.enums import Crm
from crmsync.sandbox import SandboxConfig, SandboxServer
from crmsync.sync.worker import Worker
from tests.conftest import SECRET
from tests.e2e.support import (
    CRMS,
    PLACEHOLDERS,
    create_contacts,
    e2e_env,
    errors_sample,
    event_rows,
    realistic_contacts,
    select_all,
    settings_from_env,
    state_rows,
    status_counts,
    wait_until,
)

COUNT = 2_000
FAULT_RATE = 0.1
MAX_RETRIES = 10
SMALL_BATCH = 20
BREVO_BATCH = 600


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    config = SandboxConfig(
        no_rate_limits=True,
        faults={crm: {"error_rate": FAULT_RATE} for crm in CRMS},
        custom_fields=True,
    )
    async with SandboxServer(config, subprocess=True) as server:
        yield server


def _retry_env() -> dict[str, str]:
    env = {}
    for crm in CRMS:
        prefix = crm.upper()
        env[f"{prefix}_SYNC_MAX_RETRIES"] = str(MAX_RETRIES)
        env[f"{prefix}_SYNC_RETRY_DELAY_SECONDS"] = "0.05"
        env[f"{prefix}_SYNC_RETRY_EXPONENTIAL"] = "false"
        batch = BREVO_BATCH if crm == "brevo" else SMALL_BATCH
        env[f"{prefix}_SYNC_SCHEDULER_BATCH_SIZE"] = str(batch)
    return env


@pytest.mark.timeout(180)
async def test_2000_contacts_reach_all_four_fakes_once_despite_5xx_faults(
    sandbox: SandboxServer,
    engine: AsyncEngine,
    db_url: str,
    auth: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = e2e_env(sandbox.env(), db_url, **_retry_env())
    settings = settings_from_env(env, monkeypatch, tmp_path)
    assert settings.hubspot.sync_max_retries == MAX_RETRIES
    assert settings.brevo.list_id == 7 and settings.brevo.rate_limit_per_second == 0
    app = create_app(settings, SECRET, engine=engine)
    rows = realistic_contacts(COUNT)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://e2e", headers=auth) as api:
        await create_contacts(api, rows)
        worker = Worker(engine, settings)
        assert set(worker.runners) == set(Crm) and not worker.disabled
        app.state.contacts.on_queued = worker.wakeup.notify  # a selection wakes it at once
        task = asyncio.create_task(worker.run())
        try:
            started = time.monotonic()
            selected = await select_all(api, CRMS)
            assert selected["updated_count"] == COUNT
            assert selected["queued_count"] == COUNT * len(CRMS)

            async def all_complete() -> bool:
                counts = await status_counts(engine)
                if any(status == "Error" for _, status in counts):
                    pytest.fail(f"rows ended in Error: {await errors_sample(engine)}")
                return sum(n for (_, s), n in counts.items() if s == "Complete") == 4 * COUNT

            async def describe() -> str:
                return str(sorted((await status_counts(engine)).items()))

            await wait_until(all_complete, 60, "every row to be Complete", 0.2, describe)
            elapsed = time.monotonic() - started
        finally:
            worker.stop()
            await asyncio.wait_for(task, 30)
        first = (await api.get("/api/v3/contacts", params={"limit": 1})).json()[0]
        history = (await api.get(f"/api/v3/contacts/{first['id']}/sync-history")).json()
    assert {h["crm"] for h in history if h["outcome"] == "ok"} == set(CRMS), history
    assert [h["created_at"] for h in history] == sorted(
        (h["created_at"] for h in history), reverse=True
    )

    states = await state_rows(engine)
    assert len(states) == 4 * COUNT
    assert all(r.sync_status == "Complete" and r.attempts == 0 for r in states)
    assert all(r.lease_owner is None and r.lease_token is None for r in states)
    emails = {row["email"].lower() for row in rows}
    assert len(emails) == COUNT

    stats = sandbox.stats()
    events = await event_rows(engine)
    outcomes = Counter((e.crm, e.outcome) for e in events)
    for crm in CRMS:
        # Faults happened on every vendor and every CRM retried (the test is not vacuous) ...
        assert stats[crm]["5xx"] > 0, stats[crm]
        assert outcomes[(crm, "retry")] > 0, outcomes
        # ... and each success was recorded once: one "ok" event per row, no other outcome.
        assert outcomes[(crm, "ok")] == COUNT, outcomes
        assert outcomes[(crm, "error")] == 0 and outcomes[(crm, "unchanged")] == 0

        stored = sandbox.contacts(crm)
        by_email = {c["email"]: c for c in stored}
        # Exactly one record per email, for exactly our contacts ...
        assert len(stored) == len(by_email) == COUNT, crm
        assert set(by_email) == emails, crm
        # ... each written exactly once: a failed request (5xx) wrote nothing, and no success was
        # pushed a second time.
        pushes = Counter(c["push_count"] for c in stored)
        assert pushes == Counter({1: COUNT}), (crm, pushes)
        # The scraper's placeholders never reach a vendor; real values do.
        for contact in stored:
            text = orjson.dumps(contact["fields"]).decode()
            assert not any(p in text for p in PLACEHOLDERS), (crm, contact)
        source = {row["email"].lower(): row for row in rows}
        for email, contact in by_email.items():
            if source[email]["domain_id"]:
                assert source[email]["domain_id"] in orjson.dumps(contact["fields"]).decode()

        # The ids the database keeps are the fakes' ids.
        ids = {r.email: r.external_id for r in states if r.crm == crm}
        if crm in ("hubspot", "mautic"):
            assert all(ids[e] == str(c["id"]) for e, c in by_email.items()), crm
        elif crm == "n8n":
            # n8n answers without an id: our delivery id (the batch's Idempotency-Key) is kept.
            assert all(ids[e] == c["extra"]["idempotency_key"] for e, c in by_email.items())
        else:
            # Brevo: 201 carries its id; an import returns none, so the email is kept.
            created = {e for e, c in by_email.items() if ids[e] == str(c["id"])}
            imported = {e for e in by_email if (ids[e] or "").lower() == e}
            assert created | imported == emails and not created & imported
            # The last 200 rows (fewer than the import threshold) went one by one.
            assert len(created) >= COUNT - 3 * BREVO_BATCH, len(created)
    brevo_calls = stats["brevo"]["by_endpoint"]
    assert brevo_calls.get("POST /contacts/import", 0) >= 3, brevo_calls
    assert brevo_calls.get("POST /contacts", 0) >= COUNT - 3 * BREVO_BATCH, brevo_calls
    print(f"\n{COUNT} contacts x 4 CRMs Complete in {elapsed:.1f} s on {engine.dialect.name}")


def test_the_retry_budget_makes_failure_negligible() -> None:
    """The arithmetic of the module docstring, kept honest."""
    rows = COUNT * len(CRMS)
    assert rows * FAULT_RATE ** (MAX_RETRIES + 1) < 1e-7
    worst_wait = sum(0.05 * 1.2 * n for n in range(1, MAX_RETRIES + 1))
    assert dt.timedelta(seconds=worst_wait) < dt.timedelta(seconds=5)
