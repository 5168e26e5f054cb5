"""The Mautic connector over real HTTP against the sandbox's Mautic fake."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from crmsync.connectors.base import AuthFailed, ContactPayload, Fail, Ok, RateLimited, Retry
from crmsync.connectors.mautic import MauticConnector
from crmsync.sandbox import SandboxConfig, SandboxServer
from crmsync.settings import MauticSettings

DOMAIN = uuid.UUID("11111111-1111-1111-1111-111111111111")
BATCH = "POST /api/contacts/batch/new"
TOKEN = "POST /oauth/v2/token"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(no_rate_limits=True, custom_fields=True)) as server:
        yield server


@pytest.fixture(autouse=True)
def clean(sandbox: SandboxServer) -> None:
    sandbox.reset(faults=True)


def basic_settings(sandbox: SandboxServer, **overrides: Any) -> MauticSettings:
    values: dict[str, Any] = {
        "base_url": sandbox.mautic_url,
        "username": sandbox.config.mautic_username,
        "password": sandbox.config.mautic_password,
        "rate_limit_per_second": 0,
    }
    values.update(overrides)
    return MauticSettings(_env_file=None, **values)  # type: ignore[call-arg]


def oauth_settings(sandbox: SandboxServer, **overrides: Any) -> MauticSettings:
    values: dict[str, Any] = {
        "username": None,
        "password": None,
        "client_id": sandbox.config.mautic_client_id,
        "client_secret": sandbox.config.mautic_client_secret,
    }
    values.update(overrides)
    return basic_settings(sandbox, **values)


@pytest.fixture(params=["basic", "oauth2"])
async def mautic(
    request: pytest.FixtureRequest, sandbox: SandboxServer
) -> AsyncIterator[MauticConnector]:
    settings = basic_settings(sandbox) if request.param == "basic" else oauth_settings(sandbox)
    connector = MauticConnector(settings)
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
    return {c["email"]: c for c in sandbox.contacts("mautic")}


def calls(sandbox: SandboxServer, endpoint: str) -> int:
    count: int = sandbox.stats()["mautic"]["by_endpoint"].get(endpoint, 0)
    return count


async def test_create_then_update_keeps_one_record_per_email(
    sandbox: SandboxServer, mautic: MauticConnector
) -> None:
    first = await mautic.push([contact(1), contact(2, name="No name")])

    records = stored(sandbox)
    assert first == [
        Ok(str(records["person1@example.com"]["id"]), 201),
        Ok(str(records["person2@example.com"]["id"]), 201),
    ]
    fields = records["person1@example.com"]["fields"]
    assert fields["firstname"] == "Jane"
    assert fields["lastname"] == "Number1"
    assert fields["scrapersky_page_id"] == str(uuid.UUID(int=1001))
    assert fields["scrapersky_has_gmail"] == 0
    assert "firstname" not in records["person2@example.com"]["fields"]

    second = await mautic.push([contact(1, name="Janet"), contact(2)])

    assert second == [Ok(r.external_id, 200) for r in first if isinstance(r, Ok)]
    records = stored(sandbox)
    assert len(records) == 2
    assert records["person1@example.com"]["fields"]["firstname"] == "Janet"


async def test_oauth2_token_is_reused_and_renewed_when_refused(sandbox: SandboxServer) -> None:
    mautic = MauticConnector(oauth_settings(sandbox))
    try:
        await mautic.push([contact(1)])
        await mautic.push([contact(2)])
        assert calls(sandbox, TOKEN) == 1
        # The server forgets every token (as after a revocation): one 401, a new token, success.
        sandbox.sandbox.mautic.tokens.clear()
        results = await mautic.push([contact(3)])
        assert results == [Ok(str(stored(sandbox)["person3@example.com"]["id"]), 201)]
        assert calls(sandbox, TOKEN) == 2
        assert calls(sandbox, BATCH) == 4
    finally:
        await mautic.aclose()


@pytest.mark.parametrize(
    ("errors_format", "contacts_format"),
    [("object", "list"), ("list", "object_on_gaps"), ("object", "object_on_gaps")],
)
async def test_invalid_items_fail_alone(
    sandbox: SandboxServer, mautic: MauticConnector, errors_format: str, contacts_format: str
) -> None:
    sandbox.set_faults("mautic", errors_format=errors_format, contacts_format=contacts_format)
    batch = [contact(1), contact(2, email="not-an-email"), contact(3), contact(4, email="x@")]

    results = await mautic.push(batch)

    records = stored(sandbox)
    assert results[0] == Ok(str(records["person1@example.com"]["id"]), 201)
    assert results[2] == Ok(str(records["person3@example.com"]["id"]), 201)
    expected = Fail("Mautic refused the contact (400): email: A valid email is required.", 400)
    assert results[1] == results[3] == expected
    assert calls(sandbox, BATCH) == 1


@pytest.mark.parametrize("status", [500, 400])
async def test_over_limit_batch_is_split_and_the_size_remembered(
    sandbox: SandboxServer, status: int
) -> None:
    sandbox.set_faults("mautic", batch_limit=50, over_limit_status=status)
    mautic = MauticConnector(basic_settings(sandbox))
    try:
        results = await mautic.push([contact(n) for n in range(200)])

        assert all(isinstance(r, Ok) for r in results)
        assert len(stored(sandbox)) == 200
        assert mautic.max_batch == 50
        assert calls(sandbox, BATCH) == 1 + 4

        await mautic.push([contact(n) for n in range(200)])
        assert calls(sandbox, BATCH) == 1 + 4 + 4
        assert len(stored(sandbox)) == 200
    finally:
        await mautic.aclose()


async def test_wrong_credentials_are_auth_failed(sandbox: SandboxServer) -> None:
    for settings in (
        basic_settings(sandbox, password="wrong-pass"),
        oauth_settings(sandbox, client_secret="wrong-secret"),
    ):
        mautic = MauticConnector(settings)
        try:
            with pytest.raises(AuthFailed) as caught:
                await mautic.push([contact(1)])
        finally:
            await mautic.aclose()
        assert "wrong-" not in caught.value.message


async def test_api_disabled_is_auth_failed_with_mautics_message(
    sandbox: SandboxServer, mautic: MauticConnector
) -> None:
    sandbox.set_faults("mautic", api_disabled=True)
    with pytest.raises(AuthFailed) as caught:
        await mautic.push([contact(1)])
    assert caught.value.http_status == 403
    assert "API" in caught.value.message


async def test_hourly_rate_limit_waits_for_the_reset(
    sandbox: SandboxServer, mautic: MauticConnector
) -> None:
    sandbox.set_faults("mautic", rate_limit_per_hour=1)
    await mautic.push([contact(1)])

    with pytest.raises(RateLimited) as caught:
        await mautic.push([contact(2)])

    # From X-RateLimit-Reset (a Unix time): the end of the sandbox's hour window. The first
    # answer said 0 left, so the second push stops before sending instead of earning a 429.
    assert 3500 < caught.value.retry_after <= 3600
    assert "0 of 1 requests left" in caught.value.message
    assert sandbox.stats()["mautic"]["429"] == 0


async def test_burst_429_with_retry_after(sandbox: SandboxServer, mautic: MauticConnector) -> None:
    sandbox.set_faults("mautic", burst_429=1, retry_after=True)
    with pytest.raises(RateLimited) as caught:
        await mautic.push([contact(1)])
    assert 0 < caught.value.retry_after <= 3600


async def test_server_errors_retry_the_rows(
    sandbox: SandboxServer, mautic: MauticConnector
) -> None:
    sandbox.set_faults("mautic", error_rate=1.0)
    results = await mautic.push([contact(1), contact(2)])
    assert all(isinstance(r, Retry) and r.http_status in (500, 502, 503) for r in results)


async def test_repeated_and_concurrent_pushes_store_one_record_per_email(
    sandbox: SandboxServer, mautic: MauticConnector
) -> None:
    batch = [contact(n) for n in range(150)] + [contact(7, email="Person7@Example.com")]

    runs = await asyncio.gather(*(mautic.push(batch) for _ in range(3)))
    runs.append(await mautic.push(batch))

    records = stored(sandbox)
    assert len(records) == 150
    for results in runs:
        ids = [r.external_id for r in results if isinstance(r, Ok)]
        assert ids == [str(records[c.email.lower()]["id"]) for c in batch]


async def test_no_log_record_holds_a_secret(
    sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = [sandbox.config.mautic_password, sandbox.config.mautic_client_secret]
    for settings in (basic_settings(sandbox), oauth_settings(sandbox)):
        mautic = MauticConnector(settings)
        try:
            await mautic.push([contact(1), contact(2, email="nope")])
            sandbox.set_faults("mautic", error_rate=1.0)
            await mautic.push([contact(3)])
            sandbox.set_faults("mautic", error_rate=0.0, burst_429=1)
            with pytest.raises(RateLimited):
                await mautic.push([contact(4)])
        finally:
            await mautic.aclose()
    tokens = list(sandbox.sandbox.mautic.tokens)
    assert tokens
    assert caplog.records
    for secret in [*secrets, *tokens]:
        assert all(secret not in record.getMessage() for record in caplog.records)
