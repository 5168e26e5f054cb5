"""Summary, failed report and health after a real sync: every number matches the database."""

from __future__ import annotations

import datetime as dt
import uuid

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.sync.worker import Worker
from tests.ops.conftest import World, event_counts, expected_summary, state_rows

SUMMARY = "/api/v3/crm/status/summary"
FAILED = "/api/v3/crm/status/failed"
HEALTH = "/api/v3/crm/health"


async def test_summary_matches_the_database(
    client: httpx.AsyncClient, engine: AsyncEngine, world: tuple[World, Worker]
) -> None:
    response = await client.get(SUMMARY)
    assert response.status_code == 200
    body = response.json()
    assert body == await expected_summary(engine)
    # The scenario's numbers, spelled out: zeros included, never-selected contacts count as New.
    assert body["total_contacts"] == 12
    assert body["crms"]["hubspot"] == {
        "New": 2,
        "Selected": 0,
        "Queued": 0,
        "Processing": 0,
        "Complete": 8,
        "Error": 2,
        "Skipped": 0,
    }
    assert body["crms"]["brevo"]["New"] == 8 and body["crms"]["brevo"]["Skipped"] == 1
    assert body["crms"]["mautic"]["Error"] == 3 and body["crms"]["mautic"]["New"] == 9
    assert body["crms"]["n8n"]["Complete"] == 5
    assert list(body["crms"]) == ["brevo", "hubspot", "mautic", "n8n"]
    assert all(sum(c.values()) == 12 for c in body["crms"].values())


async def test_failed_report_matches_the_database(
    client: httpx.AsyncClient, engine: AsyncEngine, world: tuple[World, Worker]
) -> None:
    scenario, _ = world
    errors = [r for r in await state_rows(engine) if r["sync_status"] == "Error"]
    expected = sorted(errors, key=lambda r: (r["last_attempt_at"], r["id"]), reverse=True)

    response = await client.get(FAILED)
    assert response.status_code == 200
    assert response.headers["X-Total-Count"] == "5"
    items = response.json()
    assert [(i["contact_id"], i["crm"]) for i in items] == [
        (str(r["contact_id"]), r["crm"]) for r in expected
    ]
    by_key = {(str(r["contact_id"]), r["crm"]): r for r in errors}
    for item in items:
        row = by_key[(item["contact_id"], item["crm"])]
        assert item["error"] == row["processing_error"]
        assert item["attempts"] == row["attempts"] == 1
        assert dt.datetime.fromisoformat(item["last_attempt_at"]) == row["last_attempt_at"]
    hubspot = [i for i in items if i["crm"] == "hubspot"]
    assert {i["contact_id"] for i in hubspot} == set(scenario.bad)
    assert all(i["email"].endswith("@example.c0m") for i in hubspot)
    mautic = [i for i in items if i["crm"] == "mautic"]
    assert all(i["error"].startswith("Max retries exceeded") for i in mautic)

    one = await client.get(FAILED, params={"crm": "mautic", "limit": 1, "offset": 1})
    assert one.headers["X-Total-Count"] == "3"
    assert one.json() == [mautic[1]]
    assert (await client.get(FAILED, params={"crm": "n8n"})).json() == []

    unknown = await client.get(FAILED, params={"crm": "zoho"})
    assert unknown.status_code == 400 and "Invalid CRM names" in unknown.json()["detail"]
    for limit in (0, 1001):
        assert (await client.get(FAILED, params={"limit": limit})).status_code == 422


async def test_health_after_a_sync_matches_the_database(
    client: httpx.AsyncClient, engine: AsyncEngine, world: tuple[World, Worker]
) -> None:
    _, worker = world
    response = await client.get(HEALTH)
    assert response.status_code == 200
    health = response.json()
    summary = await expected_summary(engine)
    events = await event_counts(engine)

    for crm, entry in health["crms"].items():
        assert entry["queue"] == summary["crms"][crm]
        assert entry["due"] == 0 and entry["lag_seconds"] == 0
        assert entry["enabled"] and not entry["paused"] and entry["pause_kind"] is None
        assert [w["id"] for w in entry["workers"]] == [worker.id]
        successes = events[crm]["ok"] + events[crm]["unchanged"]
        failures = events[crm]["retry"] + events[crm]["error"]
        assert (entry["successes"], entry["failures"]) == (successes, failures)
        # Every event of this test is within the 5-minute throughput window.
        assert entry["throughput_per_minute"] == successes / 5
    hubspot, mautic = health["crms"]["hubspot"], health["crms"]["mautic"]
    assert (hubspot["successes"], hubspot["failures"], hubspot["error_rate"]) == (8, 2, 0.2)
    assert (mautic["successes"], mautic["failures"], mautic["error_rate"]) == (0, 3, 1.0)
    # 0.2 is not above CRMSYNC_ALERT_ERROR_RATE (0.2); 1.0 is.
    assert hubspot["status"] == "ok" and mautic["status"] == "degraded"
    assert health["status"] == "degraded"
    assert health["reasons"] == [
        "mautic: error rate 1.00 over the last hour (3 of 3 attempts) is above 0.20"
    ]
    assert health["database"] == "ok"
    [alive] = health["workers"]
    assert alive["id"] == worker.id and alive["crms"] == ["brevo", "hubspot", "mautic", "n8n"]
    assert alive["rows_done"] >= 0 and alive["heartbeat_at"]


async def test_health_summary_and_failed_need_a_token(client: httpx.AsyncClient) -> None:
    for path in (HEALTH, SUMMARY, FAILED):
        response = await client.get(path, headers={"Authorization": ""})
        assert response.status_code == 401, path
    response = await client.post(
        "/api/v3/crm/retry",
        json={"crm": "hubspot", "contact_ids": [str(uuid.uuid4())]},
        headers={"Authorization": "Bearer nope"},
    )
    assert response.status_code == 401
