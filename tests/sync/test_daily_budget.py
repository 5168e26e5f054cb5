"""The daily request budget (`{CRM}_DAILY_REQUEST_LIMIT`): a real worker and HubSpot connector
over HTTP to the sandbox, on both databases, with a frozen clock to cross the vendor's midnight."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.api.app import create_app
from crmsync.enums import Crm
from crmsync.sandbox import SandboxConfig, SandboxServer
from crmsync.settings import HubSpotSettings, Settings
from crmsync.sync import budget, control
from crmsync.sync.worker import Worker
from tests.conftest import SECRET, add_contacts
from tests.sync.fakes import FrozenClock
from tests.sync.test_engine import select_for, states

HUB = Crm.hubspot
ZONE = "America/New_York"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(
        SandboxConfig(no_rate_limits=True, request_log=True, custom_fields=True)
    ) as server:
        yield server


@pytest.fixture
def budget_settings(settings: Settings, sandbox: SandboxServer) -> Settings:
    sandbox.reset(faults=True)
    settings.hubspot = HubSpotSettings(
        _env_file=None,  # type: ignore[call-arg]
        api_base_url=sandbox.url + "/hubspot",
        access_token=sandbox.config.hubspot_access_token,
        rate_limit_per_second=0,
        sync_scheduler_batch_size=10,
        daily_request_limit=3,
        daily_request_time_zone=ZONE,
    )
    return settings


def test_the_vendor_day_starts_at_midnight_in_its_time_zone() -> None:
    zone = ZoneInfo(ZONE)
    # 03:30 UTC on 8 March 2026 is still 7 March in New York (UTC-5)...
    day, reset = budget.vendor_day(dt.datetime(2026, 3, 8, 3, 30, tzinfo=dt.UTC), zone)
    assert day == "2026-03-07" and reset == dt.datetime(2026, 3, 8, 5, 0, tzinfo=dt.UTC)
    # ...and the day of the spring clock change is 23 hours long: it ends at 04:00 UTC.
    day, reset = budget.vendor_day(dt.datetime(2026, 3, 8, 12, 0, tzinfo=dt.UTC), zone)
    assert day == "2026-03-08" and reset == dt.datetime(2026, 3, 9, 4, 0, tzinfo=dt.UTC)
    day, reset = budget.vendor_day(dt.datetime(2026, 3, 8, 23, 0, tzinfo=dt.UTC), ZoneInfo("UTC"))
    assert day == "2026-03-08" and reset == dt.datetime(2026, 3, 9, tzinfo=dt.UTC)


def test_a_time_zone_that_does_not_exist_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="not a time zone name: use an IANA name"):
        HubSpotSettings(_env_file=None, daily_request_time_zone="Mars/Olympus")  # type: ignore[call-arg]


async def test_the_budget_pauses_the_crm_until_the_vendor_day_resets(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    budget_settings: Settings,
    sandbox: SandboxServer,
    auth: dict[str, str],
) -> None:
    clock = FrozenClock()
    worker = Worker(engine, budget_settings, [HUB], clock=clock)
    runner = worker.runners[HUB]
    ids = await add_contacts(client, 50)
    await select_for(client, ids)
    try:
        for _ in range(3):
            assert await runner.run_once() == 10  # one request each
        _, reset = budget.vendor_day(clock.now, ZoneInfo(ZONE))
        async with engine.connect() as conn:
            ctl = (await control.load(conn))[HUB]
        assert ctl.budget_used == 3 and ctl.pause_kind == "budget"
        assert ctl.paused_until == reset
        assert "3 of 3 requests" in (ctl.pause_reason or "")
        assert await runner.gate.pause_left(clock.now) is not None  # claims nothing more today
        assert len(sandbox.requests("hubspot")) == 3

        # Read on the worker's clock: the `client` app reads the real time, an hour behind it, so
        # in the hour before the vendor's midnight it would still be in the day before.
        on_clock = create_app(budget_settings, SECRET, engine=engine, clock=clock)
        transport = httpx.ASGITransport(app=on_clock)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=auth) as api:
            health = (await api.get("/api/v3/crm/health")).json()["crms"]["hubspot"]
        assert health["daily_requests"] == {
            "limit": 3,
            "used": 3,
            "time_zone": ZONE,
            "resets_at": reset.isoformat().replace("+00:00", "Z"),
        }
        assert health["pause_kind"] == "budget"
        [reason] = [r for r in health["reasons"] if "daily request budget is used" in r]
        assert reason.startswith(f"paused until {reset.isoformat(timespec='seconds')}")

        # The vendor's day resets: the CRM goes on, and the count starts again.
        clock.now = reset + dt.timedelta(seconds=1)
        runner.gate.control_read = -10.0
        assert await runner.gate.pause_left(clock.now) is None
        assert await runner.run_once() == 10
        async with engine.connect() as conn:
            ctl = (await control.load(conn))[HUB]
        assert ctl.budget_used == 1
        assert (
            ctl.budget_day
            == (reset + dt.timedelta(seconds=1)).astimezone(ZoneInfo(ZONE)).date().isoformat()
        )
    finally:
        for connector in worker._own_connectors:
            await connector.aclose()
        for http in worker._own_clients:
            await http.aclose()
    complete = [r for r in (await states(engine)).values() if r["sync_status"] == "Complete"]
    assert len(complete) == 40


async def test_without_a_limit_nothing_is_counted(
    client: httpx.AsyncClient, engine: AsyncEngine, budget_settings: Settings
) -> None:
    budget_settings.hubspot.daily_request_limit = None
    worker = Worker(engine, budget_settings, [HUB], clock=FrozenClock())
    ids = await add_contacts(client, 20)
    await select_for(client, ids)
    try:
        assert await worker.runners[HUB].run_once() == 10
    finally:
        for http in worker._own_clients:
            await http.aclose()
    async with engine.connect() as conn:
        ctl = (await control.load(conn))[HUB]
    assert ctl.budget_used == 0 and ctl.budget_day is None
    health = (await client.get("/api/v3/crm/health")).json()["crms"]["hubspot"]
    assert health["daily_requests"] is None
