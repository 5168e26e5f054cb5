"""The Brevo connector over real HTTP against the sandbox's Brevo fake."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest

from crmsync.connectors.base import (
    AuthFailed,
    ContactPayload,
    Fail,
    Ok,
    RateLimited,
    Retry,
    RowResult,
)
from crmsync.connectors.brevo import BrevoConnector
from crmsync.sandbox import SandboxConfig, SandboxServer
from crmsync.settings import BrevoSettings

LIST_ID = 30
DOMAIN = uuid.UUID("11111111-1111-1111-1111-111111111111")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(no_rate_limits=True, custom_fields=True)) as server:
        yield server


@pytest.fixture(autouse=True)
def clean(sandbox: SandboxServer) -> None:
    sandbox.reset(faults=True)


def make_settings(sandbox: SandboxServer, **overrides: Any) -> BrevoSettings:
    values: dict[str, Any] = {
        "api_key": sandbox.config.brevo_api_key,
        "api_base_url": sandbox.brevo_url,
        "list_id": LIST_ID,
        "rate_limit_per_second": 0,
        "import_poll_seconds": 0.1,
        "import_timeout_seconds": 10,
    }
    values.update(overrides)
    return BrevoSettings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
async def brevo(sandbox: SandboxServer) -> AsyncIterator[BrevoConnector]:
    connector = BrevoConnector(make_settings(sandbox))
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
    return {c["email"]: c for c in sandbox.contacts("brevo")}


async def push_like_the_engine(
    connector: BrevoConnector, rows: Sequence[ContactPayload]
) -> list[RowResult]:
    """Push until every row has a result, re-sending after a rate limit only what was not sent."""
    results: list[RowResult | None] = [None] * len(rows)
    for _ in range(50):
        pending = [i for i, result in enumerate(results) if result is None]
        if not pending:
            break
        try:
            answered: list[RowResult | None] = list(
                await connector.push([rows[i] for i in pending])
            )
        except RateLimited as limited:
            answered = limited.partial or [None] * len(pending)
            await asyncio.sleep(limited.retry_after)
        for i, result in zip(pending, answered, strict=True):
            results[i] = result
    assert all(result is not None for result in results)
    return [result for result in results if result is not None]


async def test_create_then_update(sandbox: SandboxServer, brevo: BrevoConnector) -> None:
    rows = [contact(1), contact(2)]
    created = await brevo.push(rows)

    held = stored(sandbox)
    assert created == [
        Ok(str(held["person1@example.com"]["id"]), 201),
        Ok(str(held["person2@example.com"]["id"]), 201),
    ]
    fields = held["person1@example.com"]["fields"]
    assert fields["listIds"] == [LIST_ID]
    assert fields["attributes"] == {
        "FIRSTNAME": "Jane",
        "LASTNAME": "Number1",
        "SMS": "+33142680001",
        "DOMAIN_ID": str(DOMAIN),
        "PAGE_ID": str(uuid.UUID(int=1001)),
        "EMAIL_TYPE": "CORPORATE",
        "SOURCE_URL": "https://example.com/team",
        "HAS_GMAIL": False,
    }

    first_id = created[0].external_id if isinstance(created[0], Ok) else None
    changed = [contact(1, name="Janet Changed", external_id=first_id), contact(2)]
    updated = await brevo.push(changed)

    assert updated == [Ok(first_id, 204), Ok("person2@example.com", 204)]
    held = stored(sandbox)
    assert len(held) == 2
    assert held["person1@example.com"]["fields"]["attributes"]["FIRSTNAME"] == "Janet"
    assert held["person1@example.com"]["push_count"] == 2


async def test_placeholders_are_not_stored(sandbox: SandboxServer, brevo: BrevoConnector) -> None:
    row = contact(3, name="Contact at example.com", phone_number="Phone not found")
    assert isinstance((await brevo.push([row]))[0], Ok)
    attributes = stored(sandbox)["person3@example.com"]["fields"]["attributes"]
    assert not {"FIRSTNAME", "LASTNAME", "SMS"} & set(attributes)


async def test_invalid_email_fails_only_that_row(
    sandbox: SandboxServer, brevo: BrevoConnector
) -> None:
    results = await brevo.push([contact(1), contact(2, email="not-an-email")])
    assert isinstance(results[0], Ok)
    assert results[1] == Fail("Invalid email address", 400)
    assert list(stored(sandbox)) == ["person1@example.com"]


async def test_phone_of_another_contact_is_dropped_not_fatal(
    sandbox: SandboxServer, brevo: BrevoConnector
) -> None:
    phone = "+33 1 42 68 53 00"
    await brevo.push([contact(1, phone_number=phone)])
    (result,) = await brevo.push([contact(2, phone_number=phone)])
    assert isinstance(result, Ok) and result.http_status == 201
    held = stored(sandbox)
    assert held["person1@example.com"]["fields"]["attributes"]["SMS"] == "+33142685300"
    assert "SMS" not in held["person2@example.com"]["fields"]["attributes"]


async def test_wrong_key_is_auth_failed(sandbox: SandboxServer) -> None:
    connector = BrevoConnector(make_settings(sandbox, api_key="not-the-key"))
    with pytest.raises(AuthFailed) as caught:
        await connector.push([contact(1)])
    await connector.aclose()
    assert caught.value.http_status == 401
    assert "not-the-key" not in caught.value.message
    assert stored(sandbox) == {}


async def test_import_path(sandbox: SandboxServer) -> None:
    connector = BrevoConnector(make_settings(sandbox, import_threshold=3))
    rows = [contact(n, phone_number=None) for n in range(1, 6)] + [
        contact(6, email="broken@"),
        contact(7, email="PERSON1@example.com", name="Later Row"),
    ]
    results = await connector.push(rows)
    await connector.aclose()

    assert results[:5] == [Ok(f"person{n}@example.com", 202) for n in range(1, 6)]
    assert results[5] == Fail("Invalid email address", 400)
    assert isinstance(results[6], Ok) and results[6].http_status == 204
    processes = sandbox.control.get("/brevo/processes").json()
    assert [(p["rows"], p["imported"], p["done"]) for p in processes] == [(5, 5, True)]
    held = stored(sandbox)
    assert sorted(held) == [f"person{n}@example.com" for n in range(1, 6)]
    assert all(c["fields"]["listIds"] == [LIST_ID] for c in held.values())
    # The later row with the same email was written after the import, so it is the last write.
    assert held["person1@example.com"]["fields"]["attributes"]["FIRSTNAME"] == "Later"


async def test_repeated_pushes_keep_one_record_per_email(sandbox: SandboxServer) -> None:
    singles = BrevoConnector(make_settings(sandbox))
    bulk = BrevoConnector(make_settings(sandbox, import_threshold=2))
    rows = [contact(n, phone_number=None) for n in range(1, 9)]
    for connector in (singles, bulk, singles, bulk):
        results = await connector.push(rows)
        assert all(isinstance(r, Ok) for r in results)
    await singles.aclose()
    await bulk.aclose()
    emails = [c["email"] for c in sandbox.contacts("brevo")]
    assert sorted(emails) == sorted({r.email for r in rows})


async def test_paced_pushes_stay_under_brevos_limit(sandbox: SandboxServer) -> None:
    sandbox.set_faults("brevo", rate_limit_per_second=10)
    connector = BrevoConnector(make_settings(sandbox, rate_limit_per_second=10))
    rows = [contact(n) for n in range(1, 26)]
    results = await push_like_the_engine(connector, rows)
    await connector.aclose()
    assert all(isinstance(r, Ok) for r in results)
    assert sandbox.stats()["brevo"]["429"] == 0
    assert len(stored(sandbox)) == 25


async def test_rate_limit_stops_the_push_and_loses_nothing(sandbox: SandboxServer) -> None:
    sandbox.set_faults("brevo", burst_429=2)
    connector = BrevoConnector(make_settings(sandbox))
    rows = [contact(n, phone_number=None) for n in range(1, 21)]
    with pytest.raises(RateLimited) as caught:
        await connector.push(rows)
    assert caught.value.retry_after > 0
    results = await push_like_the_engine(connector, rows)
    await connector.aclose()
    assert all(isinstance(r, Ok) for r in results)
    assert len(stored(sandbox)) == 20


async def test_server_errors_retry(sandbox: SandboxServer, brevo: BrevoConnector) -> None:
    sandbox.set_faults("brevo", error_rate=1.0)
    results = await brevo.push([contact(1), contact(2)])
    assert all(isinstance(r, Retry) and r.http_status in (500, 502, 503) for r in results)


async def test_import_routes_a_repeated_phone_through_singles(sandbox: SandboxServer) -> None:
    connector = BrevoConnector(make_settings(sandbox, import_threshold=2))
    phone = "+33 1 42 68 53 00"
    rows = [contact(1, phone_number=phone), contact(2, phone_number=phone), contact(3)]
    results = await connector.push(rows)
    await connector.aclose()
    assert results[0] == Ok("person1@example.com", 202)
    assert isinstance(results[1], Ok) and results[1].http_status == 201
    held = stored(sandbox)
    assert sorted(held) == [f"person{n}@example.com" for n in (1, 2, 3)]
    assert held["person1@example.com"]["fields"]["attributes"]["SMS"] == "+33142685300"
    assert "SMS" not in held["person2@example.com"]["fields"]["attributes"]


async def test_an_email_change_updates_the_record_by_its_id_or_by_the_email_it_had(
    sandbox: SandboxServer, brevo: BrevoConnector
) -> None:
    first, _ = await brevo.push([contact(1), contact(2)])
    assert isinstance(first, Ok) and first.external_id is not None
    assert first.external_id.isdigit()
    # Contact 1 known by Brevo's id; contact 2 by the email an earlier 204 left as its id.
    moved = [
        contact(1, email="moved1@example.com", external_id=first.external_id,
                synced_email="person1@example.com"),
        contact(2, email="moved2@example.com", external_id="person2@example.com",
                synced_email="person2@example.com"),
    ]  # fmt: skip
    results = await brevo.push(moved)

    assert results == [Ok(first.external_id, 204), Ok("moved2@example.com", 204)]
    assert sorted(stored(sandbox)) == ["moved1@example.com", "moved2@example.com"]
    assert stored(sandbox)["moved1@example.com"]["id"] == int(first.external_id)
    assert sandbox.stats()["brevo"]["by_endpoint"]["PUT /contacts/{identifier}"] == 2


async def test_an_email_change_for_a_contact_brevo_lost_is_an_upsert(
    sandbox: SandboxServer, brevo: BrevoConnector
) -> None:
    lost = contact(3, email="moved3@example.com", external_id="777", synced_email="old@x.com")
    [result] = await brevo.push([lost])
    assert isinstance(result, Ok) and result.http_status == 201
    assert list(stored(sandbox)) == ["moved3@example.com"]
