"""Batch-wide vendor failures: answers already received are kept, whatever ends the batch.

Engine tests with an in-process connector (any `ConnectorError` carrying `partial`), and the real
n8n connector over HTTP to the sandbox, with a connection refused part-way through a batch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.connectors.base import (
    ConnectorError,
    ContactPayload,
    Ok,
    RowResult,
    Transient,
)
from crmsync.connectors.n8n import N8nConnector
from crmsync.enums import Crm
from crmsync.sandbox import SandboxConfig, SandboxServer
from crmsync.settings import N8nSettings, Settings
from crmsync.sync.worker import Worker
from crmsync.tables import crm_sync_state
from tests.conftest import add_contacts
from tests.sync.fakes import FakeConnector, FrozenClock
from tests.sync.test_engine import states

HUB = Crm.hubspot
N8N = Crm.n8n


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(no_rate_limits=True, custom_fields=True)) as server:
        yield server


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
async def hub_worker(
    engine: AsyncEngine, settings: Settings, clock: FrozenClock
) -> AsyncIterator[tuple[Worker, FakeConnector]]:
    settings.hubspot.sync_retry_delay_seconds = 60
    settings.hubspot.sync_max_retries = 3
    fake = FakeConnector(HUB)
    yield Worker(engine, settings, [HUB], connectors={HUB: fake}, clock=clock), fake


async def select(client: httpx.AsyncClient, ids: list[str], crm: Crm) -> None:
    r = await client.put(
        "/api/v3/contacts/crm/select", json={"contact_ids": ids, "crms": [crm.value]}
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "error",
    [
        Transient("Brevo request failed: ReadTimeout", None),
        ConnectorError("n8n answered 502 for the rest of the batch", 502),
    ],
    ids=["transient", "connector-error"],
)
async def test_answers_received_before_a_batch_wide_failure_are_kept(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    hub_worker: tuple[Worker, FakeConnector],
    error: ConnectorError,
) -> None:
    worker, fake = hub_worker
    ids = await add_contacts(client, 3)
    await select(client, ids, HUB)
    # Every row is on its last attempt: a row the vendor accepted must still end Complete.
    async with engine.begin() as conn:
        await conn.execute(update(crm_sync_state).values(attempts=3))
    emails = {(await client.get(f"/api/v3/contacts/{i}")).json()["email"]: i for i in ids}

    def two_answered_then_failed(batch: Sequence[ContactPayload]) -> list[RowResult]:
        error.partial = [
            Ok(f"vendor-{c.email}", 201) if emails[c.email] != ids[2] else None for c in batch
        ]
        raise error

    fake.script = two_answered_then_failed
    assert await worker.runners[HUB].run_once() == 3
    rows = await states(engine)
    for cid in ids[:2]:
        email = next(e for e, i in emails.items() if i == cid)
        assert rows[cid]["sync_status"] == "Complete", rows[cid]
        assert rows[cid]["external_id"] == f"vendor-{email}"
        assert rows[cid]["attempts"] == 0
    # The row that was never answered spends its attempt as before: its last one, so Error.
    assert rows[ids[2]]["sync_status"] == "Error"
    assert rows[ids[2]]["processing_error"].startswith("Max retries exceeded")


class RefuseAfter(httpx.AsyncBaseTransport):
    """A real HTTP transport that refuses the connection from the `n`-th request on."""

    def __init__(self, n: int) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.n = n
        self.sent = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        if self.sent >= self.n:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_n8n_single_mode_keeps_the_deliveries_made_before_a_refused_connection(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    clock: FrozenClock,
    sandbox: SandboxServer,
) -> None:
    """N8N_BATCH_SIZE=1: one request per contact; the third cannot connect."""
    sandbox.reset(faults=True)
    n8n_settings = N8nSettings(
        _env_file=None,  # type: ignore[call-arg]
        webhook_url=sandbox.n8n_webhook_url,
        webhook_secret=sandbox.config.n8n_secret,
        batch_size=1,
        sync_scheduler_batch_size=4,
        sync_max_retries=0,
    )
    settings.n8n = n8n_settings
    transport = RefuseAfter(3)
    async with httpx.AsyncClient(transport=transport) as http:
        connector = N8nConnector(n8n_settings, http)
        worker = Worker(engine, settings, [N8N], connectors={N8N: connector}, clock=clock)
        ids = await add_contacts(client, 4)
        await select(client, ids, N8N)
        assert await worker.runners[N8N].run_once() == 4
    delivered = {c["email"] for c in sandbox.contacts("n8n")}
    assert len(delivered) == 2
    query = crm_sync_state.select().where(crm_sync_state.c.crm == "n8n")
    async with engine.connect() as conn:
        rows = {str(r.contact_id): r for r in await conn.execute(query)}
    complete = [r for r in rows.values() if r.sync_status == "Complete"]
    # The two delivered contacts are Complete, with n8n's delivery id; with no retries left,
    # they would have ended in Error had their answers been dropped.
    assert len(complete) == 2
    assert all(r.external_id for r in complete)
    # The other two were never sent (no connection): back in the queue, no attempt spent.
    others = [r for r in rows.values() if r not in complete]
    assert all(r.sync_status == "Queued" and r.attempts == 0 for r in others)
