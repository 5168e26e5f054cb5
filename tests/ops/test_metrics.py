"""`/metrics`: the documented names, worker counters moved by a real sync, database gauges equal
to the database, and who may read it."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.sandbox import SandboxServer
from crmsync.settings import Settings
from tests.conftest import add_contacts
from tests.ops.conftest import build_world, expected_summary, running_worker, select_for

DB_GAUGES = (
    "crmsync_database_up",
    "crmsync_contacts",
    "crmsync_queue_depth",
    "crmsync_queue_due",
    "crmsync_queue_lag_seconds",
    "crmsync_workers_alive",
    "crmsync_crm_enabled",
    "crmsync_crm_paused",
)
WORKER_METRICS = (
    "crmsync_pushes",
    "crmsync_vendor_request_seconds",
    "crmsync_rate_limited",
    "crmsync_lease_lost",
    "crmsync_worker_heartbeat_timestamp_seconds",
    "crmsync_batches_in_flight",
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: httpx.AsyncClient) -> tuple[set[str], Samples]:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    names: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        names.add(family.name)
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return names, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_after_a_real_sync(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    app: FastAPI,
    sb: SandboxServer,
) -> None:
    _, before = await scrape(client)  # the counters are process-wide: compare differences
    async with running_worker(engine, settings, app) as worker:
        await build_world(client, engine, sb, worker)
        names, after = await scrape(client)

    assert set(DB_GAUGES) | set(WORKER_METRICS) <= names

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("crmsync_pushes_total", crm="hubspot", outcome="ok") == 8
    assert moved("crmsync_pushes_total", crm="hubspot", outcome="error") == 2
    assert moved("crmsync_pushes_total", crm="mautic", outcome="error") == 3
    assert moved("crmsync_pushes_total", crm="n8n", outcome="ok") == 5
    assert moved("crmsync_vendor_request_seconds_count", crm="hubspot") >= 1
    assert value(after, "crmsync_batches_in_flight", crm="hubspot") == 0

    expected = await expected_summary(engine)
    assert value(after, "crmsync_database_up") == 1
    assert value(after, "crmsync_contacts") == expected["total_contacts"] == 12
    for crm, counts in expected["crms"].items():
        for status, count in counts.items():
            assert value(after, "crmsync_queue_depth", crm=crm, status=status) == count
        assert value(after, "crmsync_queue_due", crm=crm) == 0
        assert value(after, "crmsync_queue_lag_seconds", crm=crm) == 0
        assert value(after, "crmsync_workers_alive", crm=crm) == 1
        assert value(after, "crmsync_crm_enabled", crm=crm) == 1
        for reason in ("manual", "rate_limit", "auth", "configuration"):
            assert value(after, "crmsync_crm_paused", crm=crm, reason=reason) == 0
    assert value(after, "crmsync_queue_depth", crm="hubspot", status="Complete") == 8


async def test_queue_gauges_follow_the_database_at_each_scrape(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    ids = await add_contacts(client, 4)
    await select_for(client, "brevo", ids[:3])
    _, samples = await scrape(client)
    assert value(samples, "crmsync_queue_depth", crm="brevo", status="Selected") == 3
    assert value(samples, "crmsync_queue_depth", crm="brevo", status="New") == 1
    assert value(samples, "crmsync_queue_due", crm="brevo") == 3
    assert value(samples, "crmsync_queue_lag_seconds", crm="brevo") > 0
    assert value(samples, "crmsync_workers_alive", crm="brevo") == 0
    await client.put(
        "/api/v3/contacts/crm/select",
        json={"contact_ids": ids[:1], "crms": ["brevo"], "action": "unselect"},
    )
    settings.n8n.webhook_url = None
    _, samples = await scrape(client)
    assert value(samples, "crmsync_queue_depth", crm="brevo", status="Selected") == 2
    assert value(samples, "crmsync_queue_depth", crm="brevo", status="New") == 2
    assert value(samples, "crmsync_crm_enabled", crm="n8n") == 0


async def test_metrics_need_a_token_unless_public(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    anonymous = {"Authorization": ""}
    response = await client.get("/metrics", headers=anonymous)
    assert response.status_code == 401
    settings.metrics_public = True
    response = await client.get("/metrics", headers=anonymous)
    assert response.status_code == 200 and "crmsync_queue_depth" in response.text
