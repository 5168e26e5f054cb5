"""`POST /api/v3/crm/retry`: by ids and all failed, after a real sync; and bad requests."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.enums import Crm
from crmsync.sandbox import SandboxServer
from crmsync.settings import Settings
from crmsync.sync.worker import Worker
from tests.ops.conftest import (
    World,
    build_world,
    drained,
    running_worker,
    state_rows,
)

RETRY = "/api/v3/crm/retry"


def by_key(rows: list[dict[str, object]]) -> dict[tuple[str, str], dict[str, object]]:
    return {(str(r["contact_id"]), str(r["crm"])): r for r in rows}


async def test_retry_by_ids_requeues_only_error_rows(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    app: FastAPI,
    sb: SandboxServer,
) -> None:
    async with running_worker(engine, settings, app) as worker:
        world = await build_world(client, engine, sb, worker)
    before = by_key(await state_rows(engine))  # the worker is stopped: the rows hold still
    started = dt.datetime.now(dt.UTC)

    # One failed contact, one synced one (left alone), one that does not exist.
    ids = [world.bad[0], world.good[0], str(uuid.uuid4())]
    response = await client.post(RETRY, json={"crm": "hubspot", "contact_ids": ids})
    assert response.status_code == 200 and response.json() == {"requeued_count": 1}

    after = by_key(await state_rows(engine))
    row = after[(world.bad[0], "hubspot")]
    assert row["sync_status"] == "Selected" and row["processing_status"] == "Queued"
    assert row["attempts"] == 0 and row["processing_error"] is None
    assert row["lease_token"] is None
    assert isinstance(row["next_attempt_at"], dt.datetime) and row["next_attempt_at"] >= started
    changed = {key for key in after if after[key] != before[key]}
    assert changed == {(world.bad[0], "hubspot")}

    # The retried contact is pushed again, and the vendor refuses it again.
    async with running_worker(engine, settings, app):
        await drained(engine)
    row = by_key(await state_rows(engine))[(world.bad[0], "hubspot")]
    assert row["sync_status"] == "Error" and row["attempts"] == 1


async def test_retry_all_failed_wakes_the_worker_and_the_rows_sync(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    world: tuple[World, Worker],
) -> None:
    scenario, worker = world
    settings.mautic.sync_scheduler_interval_seconds = 30  # idle: only a wake-up is this fast
    resting = asyncio.Event()
    original = worker.idle

    async def idle(crm: Crm, seconds: float) -> None:
        if crm is Crm.mautic and seconds >= 30:
            resting.set()
        await original(crm, seconds)

    worker.idle = idle  # type: ignore[method-assign]
    # The mautic runner is in its 30 s rest: only the retry's wake-up can make it sync now.
    await asyncio.wait_for(resting.wait(), 10)
    response = await client.post(RETRY, json={"crm": "mautic", "all_failed": True})
    assert response.json() == {"requeued_count": 3}
    await asyncio.wait_for(drained(engine), 5)
    rows = [r for r in await state_rows(engine) if r["crm"] == "mautic"]
    assert sorted(str(r["contact_id"]) for r in rows) == sorted(scenario.good[:3])
    assert all(r["sync_status"] == "Complete" and r["attempts"] == 0 for r in rows)
    # Nothing left to retry for mautic; hubspot's refused emails are still there.
    again = await client.post(RETRY, json={"crm": "mautic", "all_failed": True})
    assert again.json() == {"requeued_count": 0}
    summary = (await client.get("/api/v3/crm/status/summary")).json()
    assert summary["crms"]["mautic"]["Complete"] == 3 and summary["crms"]["hubspot"]["Error"] == 2


async def test_retry_rejects_bad_requests(client: httpx.AsyncClient) -> None:
    some = [str(uuid.uuid4())]
    cases = [
        ({"crm": "hubspot"}, 400, "Nothing to retry"),
        ({"crm": "hubspot", "all_failed": False}, 400, "Nothing to retry"),
        ({"crm": "hubspot", "contact_ids": some, "all_failed": True}, 400, "not both"),
        ({"crm": "zoho", "all_failed": True}, 400, "Invalid CRM names: ['zoho']"),
        ({"crm": "hubspot", "contact_ids": ["nope"]}, 422, "contact_ids"),
        ({"all_failed": True}, 422, "crm"),
    ]
    for body, status, message in cases:
        response = await client.post(RETRY, json=body)
        assert response.status_code == status, body
        assert message in response.json()["message"], (body, response.json())
    empty = await client.post(RETRY, json={"crm": "hubspot", "contact_ids": []})
    assert empty.status_code == 200 and empty.json() == {"requeued_count": 0}
