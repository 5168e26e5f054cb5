"""Issue 20, section 6: Brevo phones. A number without a country code is read in
`CRMSYNC_DEFAULT_PHONE_REGION` when set, and a phone dropped after Brevo's SMS conflict is
written into the contact's sync history (worker, real database, the sandbox over HTTP)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.connectors.base import ContactPayload, Ok
from crmsync.connectors.brevo import BrevoConnector
from crmsync.enums import Crm
from crmsync.sandbox import SandboxConfig, SandboxServer
from crmsync.settings import BrevoSettings, Settings
from crmsync.sync.worker import Worker
from tests.conftest import add_contacts

US_PHONE = "(650) 253-0000"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(no_rate_limits=True, custom_fields=True)) as server:
        yield server


@pytest.fixture(autouse=True)
def clean(sandbox: SandboxServer) -> None:
    sandbox.reset(faults=True)


def brevo_settings(sandbox: SandboxServer, **extra: Any) -> BrevoSettings:
    return BrevoSettings(  # type: ignore[call-arg]
        _env_file=None,
        api_key=sandbox.config.brevo_api_key,
        api_base_url=sandbox.brevo_url,
        rate_limit_per_second=0,
        **extra,
    )


def sms(sandbox: SandboxServer, email: str) -> Any:
    [stored] = [c for c in sandbox.contacts("brevo") if c["email"] == email]
    return stored["fields"]["attributes"].get("SMS")


@pytest.mark.parametrize(("region", "expected"), [(None, None), ("US", "+16502530000")])
async def test_a_national_number_is_read_in_the_default_region(
    sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch, region: str | None, expected: Any
) -> None:
    if region is not None:
        monkeypatch.setenv("CRMSYNC_DEFAULT_PHONE_REGION", region.lower())
    connector = BrevoConnector(brevo_settings(sandbox))
    contact = ContactPayload(uuid.UUID(int=1), "us@example.com", phone_number=US_PHONE)
    [result] = await connector.push([contact])
    await connector.aclose()
    assert isinstance(result, Ok)
    assert sms(sandbox, "us@example.com") == expected


def test_an_unknown_region_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="CRMSYNC_DEFAULT_PHONE_REGION must be a two-letter"):
        BrevoSettings(_env_file=None, CRMSYNC_DEFAULT_PHONE_REGION="USA")  # type: ignore[call-arg]


async def test_a_phone_dropped_for_an_sms_conflict_is_in_the_sync_history(
    sandbox: SandboxServer, client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    phone = "+33 1 42 68 53 00"
    ids = await add_contacts(client, 2, phone_number=phone)
    connector = BrevoConnector(brevo_settings(sandbox))
    worker = Worker(engine, settings, [Crm.brevo], connectors={Crm.brevo: connector})
    for contact_id in ids:  # one after the other: the second one's phone is taken
        r = await client.put(
            "/api/v3/contacts/crm/select", json={"contact_ids": [contact_id], "crms": ["brevo"]}
        )
        assert r.status_code == 200, r.text
        assert await worker.runners[Crm.brevo].run_once() == 1
    await connector.aclose()

    first = (await client.get(f"/api/v3/contacts/{ids[0]}/sync-history")).json()
    second = (await client.get(f"/api/v3/contacts/{ids[1]}/sync-history")).json()
    assert [(h["outcome"], h["message"]) for h in first] == [("ok", None)]
    [event] = second
    assert event["outcome"] == "ok"
    assert event["message"].startswith("Brevo would not take the phone +33142685300 (")
    assert "already associated with another Contact" in event["message"]
    contact = (await client.get(f"/api/v3/contacts/{ids[1]}")).json()
    assert contact["brevo_sync_status"] == "Complete"
    assert contact["brevo_processing_error"] is None
