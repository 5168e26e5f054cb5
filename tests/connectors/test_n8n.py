"""n8n connector against `httpx.MockTransport`: the exact requests, and every answer's meaning."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from crmsync import USER_AGENT
from crmsync.connectors.base import (
    AuthFailed,
    ContactPayload,
    Fail,
    Misconfigured,
    Ok,
    RateLimited,
    Retry,
    Transient,
    stable_hash,
)
from crmsync.connectors.n8n import N8nConnector, contact_object, delivery_key
from crmsync.settings import N8nSettings

URL = "https://n8n.test/webhook/crm-contacts"
SECRET = "n8n-shared-SECRET-42"
HEADER_VALUE = "custom-header-SECRET-99"
DOMAIN = uuid.UUID("11111111-1111-1111-1111-111111111111")
PAGE = uuid.UUID("22222222-2222-2222-2222-222222222222")
JOB = uuid.UUID("33333333-3333-3333-3333-333333333333")
NOW = datetime(2025, 11, 18, 20, 43, 10, 123456, tzinfo=UTC)


def make_settings(**overrides: Any) -> N8nSettings:
    values: dict[str, Any] = {"webhook_url": URL, "webhook_secret": SECRET, "batch_size": 100}
    values.update(overrides)
    return N8nSettings(_env_file=None, **values)  # type: ignore[call-arg]


def contact(n: int = 1, **fields: Any) -> ContactPayload:
    values: dict[str, Any] = {
        "contact_id": uuid.UUID(int=n),
        "email": f"person{n}@example.com",
        "name": "Jane van Dyke",
        "phone_number": "(555) 010-9999",
        "email_type": "CORPORATE",
        "has_gmail": False,
        "context": "Team page",
        "source_url": "https://example.com/team",
        "domain_id": DOMAIN,
        "page_id": PAGE,
        "source_job_id": JOB,
    }
    values.update(fields)
    return ContactPayload(**values)


def expected_object(n: int = 1) -> dict[str, Any]:
    item = base_object(n)
    return {**item, "idempotency_key": f"{item['contact_id']}:{stable_hash(payload(item))}"}


def payload(item: dict[str, Any]) -> dict[str, Any]:
    """What the fingerprint covers: the object without `previous_email`."""
    return {k: v for k, v in item.items() if k != "previous_email"}


def base_object(n: int = 1) -> dict[str, Any]:
    return {
        "contact_id": str(uuid.UUID(int=n)),
        "email": f"person{n}@example.com",
        "name": "Jane van Dyke",
        "first_name": "Jane",
        "last_name": "van Dyke",
        "phone_number": "(555) 010-9999",
        "email_type": "CORPORATE",
        "has_gmail": False,
        "context": "Team page",
        "source_url": "https://example.com/team",
        "domain_id": str(DOMAIN),
        "page_id": str(PAGE),
        "source_job_id": str(JOB),
        "previous_email": None,
    }


class Vendor:
    def __init__(self, answer: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)


def connector(vendor: Vendor, **overrides: Any) -> N8nConnector:
    client = httpx.AsyncClient(transport=httpx.MockTransport(vendor))
    return N8nConnector(make_settings(**overrides), client, clock=lambda: NOW)


def sent(request: httpx.Request) -> Any:
    return orjson.loads(request.content)


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"message": "Workflow was started"})


# -- requests ------------------------------------------------------------------------------------


async def test_batch_is_one_post_with_an_envelope() -> None:
    vendor = Vendor(ok)
    conn = connector(vendor)

    results = await conn.push([contact(1), contact(2)])

    (request,) = vendor.requests
    assert request.method == "POST"
    assert str(request.url) == URL
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert request.headers["content-type"] == "application/json"
    key = request.headers["idempotency-key"]
    assert uuid.UUID(key)
    assert sent(request) == {"contacts": [expected_object(1), expected_object(2)]}
    assert results == [Ok(key, 200), Ok(key, 200)]


async def test_idempotency_key_follows_the_content() -> None:
    vendor = Vendor(ok)
    conn = connector(vendor)
    await conn.push([contact(1), contact(2)])
    await conn.push([contact(2), contact(1)])  # the same rows again, claimed in another order
    await conn.push([contact(1), contact(2, name="Someone Else")])
    keys = [r.headers["idempotency-key"] for r in vendor.requests]
    assert keys[0] == keys[1] != keys[2]
    assert keys[0] == delivery_key([expected_object(1), expected_object(2)])


async def test_every_contact_carries_a_stable_idempotency_key() -> None:
    """Contact id and the fingerprint the engine keeps: a workflow can drop a repeat."""
    vendor = Vendor(ok)
    conn = connector(vendor)
    fingerprint = conn.fingerprint(contact(1))
    await conn.push([contact(1)])
    await conn.push([contact(1), contact(2)])
    await conn.push([contact(1, name="Someone Else")])
    first, again, changed = (sent(r)["contacts"][0] for r in vendor.requests)
    assert first["idempotency_key"] == f"{uuid.UUID(int=1)}:{fingerprint}"
    assert again["idempotency_key"] == first["idempotency_key"]
    assert changed["idempotency_key"] != first["idempotency_key"]
    # The key is derived from the payload, not part of what the fingerprint covers.
    assert fingerprint == stable_hash(payload(base_object(1)))


async def test_single_mode_sends_one_bare_object_with_legacy_keys() -> None:
    vendor = Vendor(lambda r: httpx.Response(200, content=b""))
    conn = connector(vendor, batch_size=1)
    assert conn.max_batch == 1

    results = await conn.push([contact(1)])

    (request,) = vendor.requests
    assert sent(request) == {
        **expected_object(1),
        "scrapersky_domain_id": str(DOMAIN),
        "scrapersky_page_id": str(PAGE),
        "timestamp": "2025-11-18T20:43:10.123456Z",
    }
    key = request.headers["idempotency-key"]
    assert key == delivery_key([expected_object(1)])
    assert results == [Ok(key, 200)]


async def test_single_mode_given_several_rows_sends_one_request_each() -> None:
    vendor = Vendor(ok)
    conn = connector(vendor, batch_size=1)
    results = await conn.push([contact(1), contact(2)])
    assert [sent(r)["contact_id"] for r in vendor.requests] == [
        str(uuid.UUID(int=1)),
        str(uuid.UUID(int=2)),
    ]
    assert len(results) == 2


async def test_placeholders_are_nulled() -> None:
    vendor = Vendor(ok)
    conn = connector(vendor)
    await conn.push([contact(1, name="Contact at example.com", phone_number="Phone not found")])
    (only,) = sent(vendor.requests[0])["contacts"]
    assert only["name"] is None and only["first_name"] is None and only["last_name"] is None
    assert only["phone_number"] is None


async def test_custom_header_auth() -> None:
    vendor = Vendor(ok)
    conn = connector(
        vendor, webhook_secret=None, auth_header_name="X-Api-Key", auth_header_value=HEADER_VALUE
    )
    await conn.push([contact(1)])
    headers = vendor.requests[0].headers
    assert headers["x-api-key"] == HEADER_VALUE
    assert "authorization" not in headers


async def test_no_auth_configured_sends_no_auth_header() -> None:
    vendor = Vendor(ok)
    conn = connector(vendor, webhook_secret=None)
    await conn.push([contact(1)])
    assert "authorization" not in vendor.requests[0].headers


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"webhook_url": None}, "N8N_WEBHOOK_URL"),
        ({"auth_header_name": "X-Api-Key"}, "N8N_AUTH_HEADER_VALUE"),
    ],
)
async def test_incomplete_settings_are_misconfigured(overrides: dict[str, Any], match: str) -> None:
    vendor = Vendor(ok)
    conn = connector(vendor, **overrides)
    with pytest.raises(Misconfigured, match=match):
        await conn.push([contact(1)])
    assert vendor.requests == []


def test_fingerprint_is_per_contact() -> None:
    conn = N8nConnector(make_settings(), httpx.AsyncClient())
    assert conn.fingerprint(contact(1)) == stable_hash(payload(contact_object(contact(1))))
    # The idempotency key is derived from the rest, and `previous_email` is left out: the
    # fingerprint stays what it was before either existed, so adding them did not make every
    # contact look changed, and what the workflow holds does not depend on the old email.
    assert conn.fingerprint(contact(1)) == stable_hash(payload(base_object(1)))
    moved = contact(1, synced_email="old@example.com", external_id="exec-1")
    assert moved.previous_email == "old@example.com"
    assert conn.fingerprint(moved) == conn.fingerprint(contact(1))
    assert conn.fingerprint(contact(1)) != conn.fingerprint(contact(1, context="changed"))
    single = N8nConnector(make_settings(batch_size=1), httpx.AsyncClient())
    # The timestamp and legacy keys of single mode do not make every push look changed.
    assert single.fingerprint(contact(1)) == conn.fingerprint(contact(1))


def test_connector_shape() -> None:
    conn = N8nConnector(make_settings(batch_size=25), httpx.AsyncClient())
    assert conn.name == "n8n"
    assert conn.max_batch == 25
    assert conn.default_concurrency == 4


# -- answers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (httpx.Response(200, json={"executionId": 4711}), "4711"),
        (httpx.Response(200, json={"execution_id": "abc"}), "abc"),
        (httpx.Response(201, json={"id": "exec-9"}), "exec-9"),
        (httpx.Response(200, json=[{"executionId": 5}]), "5"),
        (httpx.Response(202, text="Accepted"), None),
        (httpx.Response(204), None),
        (httpx.Response(200, json={"message": "Workflow was started"}), None),
    ],
)
async def test_success_carries_the_execution_or_delivery_id(
    answer: httpx.Response, expected: str | None
) -> None:
    vendor = Vendor(lambda r: answer)
    conn = connector(vendor)
    results = await conn.push([contact(1), contact(2)])
    delivered = expected or vendor.requests[0].headers["idempotency-key"]
    assert results == [Ok(delivered, answer.status_code)] * 2


async def test_unregistered_webhook_is_misconfigured() -> None:
    vendor = Vendor(
        lambda r: httpx.Response(
            404,
            json={
                "code": 404,
                "message": 'The requested webhook "POST crm-contacts" is not registered.',
                "hint": "The workflow must be active for a production URL to run successfully.",
            },
        )
    )
    conn = connector(vendor)
    with pytest.raises(Misconfigured) as caught:
        await conn.push([contact(1)])
    assert caught.value.http_status == 404
    # n8n names the webhook's path, which is the URL's secret: redacted like one.
    assert 'The requested webhook "POST [redacted]" is not registered.' in caught.value.message
    assert "crm-contacts" not in caught.value.message
    assert "The workflow must be active" in caught.value.message


@pytest.mark.parametrize(
    ("status", "text"), [(401, "Authorization is required!"), (403, "Authorization data is wrong!")]
)
async def test_auth_refusals_raise_auth_failed(status: int, text: str) -> None:
    vendor = Vendor(
        lambda r: httpx.Response(status, text=text, headers={"WWW-Authenticate": "Basic"})
    )
    conn = connector(vendor)
    with pytest.raises(AuthFailed) as caught:
        await conn.push([contact(1)])
    assert caught.value.http_status == status
    assert text in caught.value.message


@pytest.mark.parametrize(("header", "expected"), [("7", 7.0), (None, 5.0)])
async def test_429_raises_rate_limited(header: str | None, expected: float) -> None:
    headers = {"Retry-After": header} if header else {}
    conn = connector(Vendor(lambda r: httpx.Response(429, headers=headers)))
    with pytest.raises(RateLimited) as caught:
        await conn.push([contact(1)])
    assert caught.value.retry_after == expected
    assert caught.value.partial is None


@pytest.mark.parametrize(
    ("status", "text"), [(500, '{"message":"Error in workflow"}'), (524, ""), (503, "busy")]
)
async def test_server_errors_retry_every_row(status: int, text: str) -> None:
    conn = connector(Vendor(lambda r: httpx.Response(status, text=text)))
    results = await conn.push([contact(1), contact(2)])
    assert all(isinstance(r, Retry) and r.http_status == status for r in results)
    if text:
        assert isinstance(results[0], Retry) and text in results[0].reason


async def test_read_timeout_retries_and_unreachable_is_transient() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    results = await connector(Vendor(slow)).push([contact(1), contact(2)])
    assert all(isinstance(r, Retry) and "ReadTimeout" in r.reason for r in results)

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(Transient):
        await connector(Vendor(down)).push([contact(1)])


@pytest.mark.parametrize("status", [400, 409, 422])
async def test_other_client_errors_fail_every_row(status: int) -> None:
    conn = connector(Vendor(lambda r: httpx.Response(status, text="bad payload")))
    results = await conn.push([contact(1), contact(2)])
    assert results == [Fail(f"n8n answered {status}: bad payload", status)] * 2


async def test_413_splits_the_batch_in_halves() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if len(sent(request)["contacts"]) > 2:
            return httpx.Response(413, text="request entity too large")
        return httpx.Response(200, json={})

    vendor = Vendor(answer)
    conn = connector(vendor)
    rows = [contact(n) for n in range(1, 6)]
    results = await conn.push(rows)

    sizes = [len(sent(r)["contacts"]) for r in vendor.requests]
    assert sizes == [5, 2, 3, 1, 2]
    keys = [r.headers["idempotency-key"] for r in vendor.requests]
    assert len(set(keys)) == len(keys)
    assert results == [
        Ok(keys[1], 200),
        Ok(keys[1], 200),
        Ok(keys[3], 200),
        Ok(keys[4], 200),
        Ok(keys[4], 200),
    ]


async def test_413_for_one_contact_fails_it() -> None:
    conn = connector(Vendor(lambda r: httpx.Response(413, text="too large")))
    assert await conn.push([contact(1)]) == [
        Fail("n8n refused the contact as too large (413): too large", 413)
    ]
    conn = connector(Vendor(lambda r: httpx.Response(413, text="too large")), batch_size=1)
    (result,) = await conn.push([contact(1)])
    assert isinstance(result, Fail) and result.http_status == 413


async def test_batch_wide_error_after_a_split_keeps_the_first_half() -> None:
    calls = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx.Response(413)
        if calls == 2:
            return httpx.Response(200, json={"executionId": 1})
        return httpx.Response(429, headers={"Retry-After": "3"})

    conn = connector(Vendor(answer))
    with pytest.raises(RateLimited) as caught:
        await conn.push([contact(n) for n in range(1, 5)])
    assert caught.value.partial == [Ok("1", 200), Ok("1", 200), None, None]


async def test_redirect_is_misconfigured() -> None:
    conn = connector(
        Vendor(lambda r: httpx.Response(301, headers={"Location": "https://elsewhere.test/"}))
    )
    with pytest.raises(Misconfigured, match="N8N_WEBHOOK_URL"):
        await conn.push([contact(1)])


# -- client lifecycle and secrets ----------------------------------------------------------------


async def test_aclose_closes_only_its_own_client() -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(Vendor(ok)))
    await N8nConnector(make_settings(), client).aclose()
    assert not client.is_closed
    await client.aclose()

    own = N8nConnector(make_settings())
    inner = own._client
    assert inner.headers["user-agent"] == USER_AGENT
    await own.aclose()
    assert inner.is_closed


async def test_secrets_never_reach_logs_errors_or_results(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    def echo(status: int) -> Callable[[httpx.Request], httpx.Response]:
        def answer(request: httpx.Request) -> httpx.Response:
            seen = f"{request.headers.get('authorization')} {request.headers.get('x-api-key')}"
            return httpx.Response(status, text=f"refused {seen}")

        return answer

    messages: list[str] = []
    overrides = {"auth_header_name": "X-Api-Key", "auth_header_value": HEADER_VALUE}
    for status in (401, 403, 404):
        with pytest.raises((AuthFailed, Misconfigured)) as caught:
            await connector(Vendor(echo(status)), **overrides).push([contact(1)])
        messages += [caught.value.message, str(caught.value)]
    for status in (400, 500, 413):
        results = await connector(Vendor(echo(status)), **overrides).push([contact(1)])
        messages += [str(r) for r in results]

    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused {request.headers['authorization']}", request=request)

    with pytest.raises(Transient) as transient:
        await connector(Vendor(broken), **overrides).push([contact(1)])
    messages.append(transient.value.message)

    assert caplog.records
    for text in [record.getMessage() for record in caplog.records] + messages:
        assert SECRET not in text
        assert HEADER_VALUE not in text
    assert any("[redacted]" in m for m in messages)
