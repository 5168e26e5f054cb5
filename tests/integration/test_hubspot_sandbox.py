"""The HubSpot connector over real HTTP against the sandbox's HubSpot fake."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from crmsync.connectors.base import AuthFailed, ContactPayload, Fail, Ok, RateLimited, Retry
from crmsync.connectors.hubspot import HubSpotConnector, ensure_properties
from crmsync.sandbox import SandboxConfig, SandboxServer
from crmsync.settings import HubSpotSettings

DOMAIN = uuid.UUID("11111111-1111-1111-1111-111111111111")
UPSERT = "POST /crm/v3/objects/contacts/batch/upsert"
CUSTOM = [
    "scrapersky_domain_id",
    "scrapersky_page_id",
    "scrapersky_email_type",
    "scrapersky_source_url",
    "scrapersky_has_gmail",
]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(no_rate_limits=True, custom_fields=True)) as server:
        yield server


@pytest.fixture(autouse=True)
def clean(sandbox: SandboxServer) -> None:
    sandbox.reset(faults=True)


def make_settings(sandbox: SandboxServer, **overrides: Any) -> HubSpotSettings:
    values: dict[str, Any] = {
        "access_token": sandbox.config.hubspot_access_token,
        "api_base_url": sandbox.hubspot_url,
        "rate_limit_per_second": 0,
    }
    values.update(overrides)
    return HubSpotSettings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
async def hubspot(sandbox: SandboxServer) -> AsyncIterator[HubSpotConnector]:
    connector = HubSpotConnector(make_settings(sandbox))
    yield connector
    await connector.aclose()


def contact(n: int, **fields: Any) -> ContactPayload:
    values: dict[str, Any] = {
        "contact_id": uuid.UUID(int=n),
        "email": f"person{n}@example.com",
        "name": f"Jane Number{n}",
        "phone_number": f"+33 1 42 68 {n // 100 % 100:02d} {n % 100:02d}",
        "email_type": "CORPORATE",
        "has_gmail": n % 2 == 0,
        "source_url": "https://example.com/team",
        "domain_id": DOMAIN,
        "page_id": uuid.UUID(int=1000 + n),
    }
    values.update(fields)
    return ContactPayload(**values)


def stored(sandbox: SandboxServer) -> dict[str, dict[str, Any]]:
    return {c["email"]: c for c in sandbox.contacts("hubspot")}


def upserts(sandbox: SandboxServer) -> int:
    count: int = sandbox.stats()["hubspot"]["by_endpoint"].get(UPSERT, 0)
    return count


async def test_create_then_update_keeps_one_record_per_email(
    sandbox: SandboxServer, hubspot: HubSpotConnector
) -> None:
    batch = [contact(1), contact(2, name="Contact at example.com", phone_number="Phone not found")]

    first = await hubspot.push(batch)

    assert all(isinstance(r, Ok) and r.external_id for r in first)
    records = stored(sandbox)
    assert records["person1@example.com"]["id"] == first[0].external_id  # type: ignore[union-attr]
    fields = records["person1@example.com"]["fields"]
    assert fields["firstname"] == "Jane"
    assert fields["lastname"] == "Number1"
    assert fields["scrapersky_domain_id"] == str(DOMAIN)
    assert fields["scrapersky_has_gmail"] == "false"
    assert "firstname" not in records["person2@example.com"]["fields"]
    assert "phone" not in records["person2@example.com"]["fields"]

    second = await hubspot.push([contact(1, name="Janet Renamed"), contact(2)])

    assert [r.external_id for r in second if isinstance(r, Ok)] == [
        r.external_id for r in first if isinstance(r, Ok)
    ]
    records = stored(sandbox)
    assert len(records) == 2
    assert records["person1@example.com"]["fields"]["firstname"] == "Janet"
    assert records["person1@example.com"]["push_count"] == 2


async def test_more_than_100_contacts_in_requests_of_100(
    sandbox: SandboxServer, hubspot: HubSpotConnector
) -> None:
    sandbox.set_faults("hubspot", shuffle_results=True)
    batch = [contact(n) for n in range(250)]

    results = await hubspot.push(batch)

    records = stored(sandbox)
    assert len(records) == 250
    assert results == [Ok(records[c.email]["id"], 200) for c in batch]
    assert upserts(sandbox) == 3


# An internationalized domain passes our check (HubSpot's rules for them are not documented)
# and the sandbox refuses it: what a vendor stricter than our check does.
IDN = "jane@exämple.com"


async def test_invalid_email_gives_a_207_for_that_row_only(
    sandbox: SandboxServer, hubspot: HubSpotConnector
) -> None:
    sandbox.set_faults("hubspot", shuffle_results=True)
    batch = [contact(1), contact(2, email=IDN), contact(3)]

    results = await hubspot.push(batch)

    assert isinstance(results[0], Ok)
    assert isinstance(results[2], Ok)
    assert isinstance(results[1], Fail)
    assert f"Email address {IDN} is invalid" in results[1].reason
    assert upserts(sandbox) == 1
    assert sorted(stored(sandbox)) == ["person1@example.com", "person3@example.com"]


async def test_invalid_email_refusing_the_whole_batch_is_isolated(
    sandbox: SandboxServer, hubspot: HubSpotConnector
) -> None:
    sandbox.set_faults("hubspot", invalid_email_mode="batch_400")
    batch = [contact(n) for n in range(60)]
    batch[17] = contact(17, email=IDN)

    results = await hubspot.push(batch)

    assert isinstance(results[17], Fail)
    assert f"Email address {IDN} is invalid" in results[17].reason
    assert all(isinstance(r, Ok) for i, r in enumerate(results) if i != 17)
    assert len(stored(sandbox)) == 59
    assert upserts(sandbox) == 2  # the refusal names the email: no halving needed


async def test_emails_hubspot_would_refuse_are_not_sent(
    sandbox: SandboxServer, hubspot: HubSpotConnector
) -> None:
    """Issue 20: checked locally the way HubSpot checks them, so one bad email does not cost
    the batch a refusal and a round of halving."""
    sandbox.set_faults("hubspot", invalid_email_mode="batch_400")
    batch = [contact(n) for n in range(60)]
    bad = {5: "bad@@example.com", 17: "jane@localhost", 33: "no-at-sign.example.com"}
    for index, email in bad.items():
        batch[index] = contact(index, email=email)

    results = await hubspot.push(batch)

    for index in bad:
        assert isinstance(results[index], Fail)
        assert results[index].reason.startswith("HubSpot would refuse this email: ")
    assert all(isinstance(r, Ok) for i, r in enumerate(results) if i not in bad)
    assert upserts(sandbox) == 1
    assert len(stored(sandbox)) == 57


async def test_a_207_error_tied_to_no_contact_splits_the_batch(
    sandbox: SandboxServer, hubspot: HubSpotConnector
) -> None:
    """Issue 20: a per-row error that names no email no longer fails (or retries) every row
    without a result: halving finds the row, the others are saved in this attempt."""
    sandbox.set_faults("hubspot", error_identity="none")
    batch = [contact(n) for n in range(40)]
    bad = (9, 30)
    for index in bad:
        batch[index] = contact(index, email=f"jane{index}@exämple.com")

    results = await hubspot.push(batch)

    # Two errors, two rows without a result, and nothing says which is which: each row is
    # re-sent alone and fails with HubSpot's reason, instead of both being retried blindly.
    for index in bad:
        assert isinstance(results[index], Fail), results[index]
        assert "Email address is invalid" in results[index].reason
    assert all(isinstance(r, Ok) for i, r in enumerate(results) if i not in bad)
    assert len(stored(sandbox)) == 38


async def test_missing_property_then_ensure_properties_fixes_it() -> None:
    config = SandboxConfig(no_rate_limits=True)
    with SandboxServer(config) as sandbox:
        settings = make_settings(sandbox)
        hubspot = HubSpotConnector(settings)
        try:
            batch = [contact(n) for n in range(5)]
            results = await hubspot.push(batch)

            assert upserts(sandbox) == 1
            assert len(set(results)) == 1
            assert isinstance(results[0], Fail)
            assert 'run "crmsync setup hubspot"' in results[0].reason
            assert "scrapersky_domain_id" in results[0].reason

            assert await ensure_properties(settings) == CUSTOM
            assert await ensure_properties(settings) == []

            results = await hubspot.push(batch)
            assert all(isinstance(r, Ok) for r in results)
            assert len(stored(sandbox)) == 5
        finally:
            await hubspot.aclose()


async def test_wrong_token_is_auth_failed(sandbox: SandboxServer) -> None:
    hubspot = HubSpotConnector(make_settings(sandbox, access_token="pat-na1-wrong-token"))
    try:
        with pytest.raises(AuthFailed) as caught:
            await hubspot.push([contact(1)])
    finally:
        await hubspot.aclose()
    assert caught.value.http_status == 401
    assert "pat-na1-wrong-token" not in caught.value.message
    with pytest.raises(AuthFailed):
        await ensure_properties(make_settings(sandbox, access_token="pat-na1-wrong-token"))


async def test_window_429_is_rate_limited_with_the_window_wait(
    sandbox: SandboxServer, hubspot: HubSpotConnector
) -> None:
    sandbox.set_faults("hubspot", rate_limit_per_10s=1)

    with pytest.raises(RateLimited) as caught:
        await hubspot.push([contact(n) for n in range(150)])

    # Until the oldest request leaves the window, with 3% headroom for its arrival's jitter.
    assert 0 < caught.value.retry_after <= 10 / 0.97
    # One of the two requests got through: its rows are in `partial`, the others not attempted.
    partial = caught.value.partial
    assert partial is not None
    answered = [r for r in partial if r is not None]
    assert len(answered) in (50, 100)
    assert all(isinstance(r, Ok) for r in answered)
    assert len(stored(sandbox)) == len(answered)


async def test_retry_after_header_is_honoured(
    sandbox: SandboxServer, hubspot: HubSpotConnector
) -> None:
    sandbox.set_faults("hubspot", burst_429=1, retry_after=True)

    with pytest.raises(RateLimited) as caught:
        await hubspot.push([contact(2)])

    assert 1 <= caught.value.retry_after <= 10
    assert caught.value.partial is None
    assert sandbox.stats()["hubspot"]["429"] == 1


async def test_a_used_up_window_stops_the_push_before_a_429(
    sandbox: SandboxServer, hubspot: HubSpotConnector
) -> None:
    """The headers said 0 left: the next push waits for the window instead of a refusal."""
    sandbox.set_faults("hubspot", rate_limit_per_10s=1)
    await hubspot.push([contact(1)])

    with pytest.raises(RateLimited) as caught:
        await hubspot.push([contact(2)])

    assert 9 < caught.value.retry_after <= 10 / 0.97
    assert "0 of 1 requests left" in caught.value.message
    assert caught.value.partial is None
    assert sandbox.stats()["hubspot"]["429"] == 0
    assert upserts(sandbox) == 1


async def test_daily_429_pauses_at_most_an_hour(
    sandbox: SandboxServer, hubspot: HubSpotConnector
) -> None:
    sandbox.set_faults("hubspot", daily_limit=1)
    await hubspot.push([contact(1)])

    with pytest.raises(RateLimited) as caught:
        await hubspot.push([contact(2)])

    assert 0 < caught.value.retry_after <= 3600
    assert "daily" in caught.value.message


async def test_server_errors_retry_the_rows(
    sandbox: SandboxServer, hubspot: HubSpotConnector
) -> None:
    sandbox.set_faults("hubspot", error_rate=1.0)

    results = await hubspot.push([contact(1), contact(2)])

    assert all(isinstance(r, Retry) and r.http_status in (500, 502, 503) for r in results)


async def test_repeated_and_concurrent_pushes_store_one_record_per_email(
    sandbox: SandboxServer, hubspot: HubSpotConnector
) -> None:
    batch = [contact(n) for n in range(120)] + [contact(5, email="PERSON5@EXAMPLE.COM")]

    runs = await asyncio.gather(*(hubspot.push(batch) for _ in range(3)))
    runs.append(await hubspot.push(batch))

    records = stored(sandbox)
    assert len(records) == 120
    for results in runs:
        assert results == [Ok(records[c.email.lower()]["id"], 200) for c in batch]


async def test_no_log_record_holds_the_token(
    sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = sandbox.config.hubspot_access_token
    hubspot = HubSpotConnector(make_settings(sandbox))
    try:
        await hubspot.push([contact(1), contact(2, email="nope")])
        sandbox.set_faults("hubspot", error_rate=1.0)
        await hubspot.push([contact(3)])
        sandbox.set_faults("hubspot", error_rate=0.0, burst_429=1)
        with pytest.raises(RateLimited):
            await hubspot.push([contact(4)])
    finally:
        await hubspot.aclose()
    assert caplog.records
    assert all(token not in record.getMessage() for record in caplog.records)
