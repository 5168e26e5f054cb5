"""Mautic connector against `httpx.MockTransport`: the exact requests, and what answers mean."""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import httpx
import orjson
import pytest

from crmsync.connectors.base import (
    AuthFailed,
    ConnectorError,
    ContactPayload,
    Fail,
    Misconfigured,
    Ok,
    RateLimited,
    Retry,
    Unreachable,
    stable_hash,
)
from crmsync.connectors.mautic import MauticConnector
from crmsync.settings import MauticSettings

USER = "api-user"
PASSWORD = "s3cret-PASSWORD-value"
CLIENT_ID = "1_client"
CLIENT_SECRET = "client-SECRET-value"
ACCESS_TOKEN = "oauth-ACCESS-token-1"
BASE = "https://mautic.test"
BATCH = BASE + "/api/contacts/batch/new"
TOKEN_URL = BASE + "/oauth/v2/token"
DOMAIN = uuid.UUID("11111111-1111-1111-1111-111111111111")
PAGE = uuid.UUID("22222222-2222-2222-2222-222222222222")

Answer = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


def make_settings(**overrides: Any) -> MauticSettings:
    values: dict[str, Any] = {
        "base_url": BASE,
        "username": USER,
        "password": PASSWORD,
        "rate_limit_per_second": 0,
    }
    values.update(overrides)
    return MauticSettings(_env_file=None, **values)  # type: ignore[call-arg]


def oauth_settings(**overrides: Any) -> MauticSettings:
    values: dict[str, Any] = {
        "username": None,
        "password": None,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    values.update(overrides)
    return make_settings(**values)


def contact(n: int = 1, **fields: Any) -> ContactPayload:
    values: dict[str, Any] = {
        "contact_id": uuid.UUID(int=n),
        "email": f"person{n}@example.com",
        "name": "Jane van Dyke",
        "phone_number": "+33 1 42 68 53 00",
        "email_type": "CORPORATE",
        "has_gmail": False,
        "context": "Team page",
        "source_url": "https://example.com/team",
        "domain_id": DOMAIN,
        "page_id": PAGE,
    }
    values.update(fields)
    return ContactPayload(**values)


def items(request: httpx.Request) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = orjson.loads(request.content)
    return result


def emails(request: httpx.Request) -> list[str]:
    return [item["email"] for item in items(request)]


def saved(email: str, contact_id: int) -> dict[str, Any]:
    """A contact as Mautic serialises it in a batch answer."""
    return {
        "id": contact_id,
        "isPublished": True,
        "fields": {
            "core": {"email": {"alias": "email", "value": email}},
            "all": {"id": contact_id, "email": email},
        },
    }


def created(request: httpx.Request) -> httpx.Response:
    """Every item saved: 201 for even positions, 200 (updated) for odd ones; ids 700+n."""
    batch = items(request)
    return httpx.Response(
        201,
        json={
            "contacts": [saved(item["email"], 700 + n) for n, item in enumerate(batch)],
            "statusCodes": [201 if n % 2 == 0 else 200 for n in range(len(batch))],
        },
    )


class Vendor:
    """A MockTransport handler that records every request and answers with `answer`."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        result = self.answer(request)
        if not isinstance(result, httpx.Response):
            result = await result
        return result

    def batches(self) -> list[httpx.Request]:
        return [r for r in self.requests if str(r.url) == BATCH]


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def connector(
    vendor: Vendor, settings: MauticSettings | None = None, clock: Clock | None = None
) -> MauticConnector:
    client = httpx.AsyncClient(transport=httpx.MockTransport(vendor))
    return MauticConnector(settings or make_settings(), client, clock=clock or Clock())


def mautic_error(status: int, message: str, kind: str | None = None, **extra: Any):
    error = {"code": status, "message": message, "details": [], "type": kind} | extra
    return httpx.Response(status, json={"errors": [error]})


# -- the request ----------------------------------------------------------------------------------


async def test_batch_sends_flat_contacts_with_basic_auth() -> None:
    vendor = Vendor(created)
    conn = connector(vendor)

    results = await conn.push([contact(1), contact(2, has_gmail=True, name="Cher")])

    assert results == [Ok("700", 201), Ok("701", 200)]
    [request] = vendor.requests
    assert (request.method, str(request.url)) == ("POST", BATCH)
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {basic}"
    assert request.headers["Content-Type"] == "application/json"
    assert items(request) == [
        {
            "email": "person1@example.com",
            "firstname": "Jane",
            "lastname": "van Dyke",
            "phone": "+33 1 42 68 53 00",
            "scrapersky_domain_id": str(DOMAIN),
            "scrapersky_page_id": str(PAGE),
            "scrapersky_email_type": "CORPORATE",
            "scrapersky_source_url": "https://example.com/team",
            "scrapersky_has_gmail": 0,
        },
        {
            "email": "person2@example.com",
            "firstname": "Cher",
            "phone": "+33 1 42 68 53 00",
            "scrapersky_domain_id": str(DOMAIN),
            "scrapersky_page_id": str(PAGE),
            "scrapersky_email_type": "CORPORATE",
            "scrapersky_source_url": "https://example.com/team",
            "scrapersky_has_gmail": 1,
        },
    ]


async def test_placeholders_and_empty_aliases_are_left_out() -> None:
    vendor = Vendor(created)
    settings = make_settings(field_page_id="", field_domain_id="domain", base_url=BASE + "/api/")
    bare = contact(1, name="Contact at example.com", phone_number="n/a", has_gmail=None)

    await connector(vendor, settings).push([bare])

    assert str(vendor.requests[0].url) == BATCH
    assert items(vendor.requests[0]) == [
        {
            "email": "person1@example.com",
            "domain": str(DOMAIN),
            "scrapersky_email_type": "CORPORATE",
            "scrapersky_source_url": "https://example.com/team",
        }
    ]


def test_fingerprint_is_the_hash_of_the_exact_item() -> None:
    conn = connector(Vendor(created))
    assert conn.fingerprint(contact(1)) == stable_hash(conn.payload(contact(1)))
    assert conn.fingerprint(contact(1)) != conn.fingerprint(contact(1, has_gmail=True))
    assert conn.fingerprint(contact(1, name="No name")) == conn.fingerprint(contact(1, name=None))


async def test_missing_settings_are_misconfigured() -> None:
    vendor = Vendor(created)
    with pytest.raises(Misconfigured, match="MAUTIC_BASE_URL"):
        await connector(vendor, make_settings(base_url=None)).push([contact(1)])
    with pytest.raises(Misconfigured, match="MAUTIC_USERNAME"):
        await connector(vendor, make_settings(password=None)).push([contact(1)])
    assert vendor.requests == []


async def test_rows_are_sent_in_batches_of_the_configured_size() -> None:
    vendor = Vendor(created)
    conn = connector(vendor, make_settings(batch_size=2))
    assert conn.max_batch == 2

    results = await conn.push([contact(n) for n in range(5)])

    assert sorted(len(items(r)) for r in vendor.requests) == [1, 2, 2]
    assert all(isinstance(r, Ok) for r in results)


async def test_the_same_email_twice_is_sent_once() -> None:
    vendor = Vendor(created)

    results = await connector(vendor).push(
        [contact(1), contact(2, email="Person1@Example.com"), contact(3)]
    )

    assert emails(vendor.requests[0]) == ["person1@example.com", "person3@example.com"]
    assert results == [Ok("700", 201), Ok("700", 201), Ok("701", 200)]


# -- per-item answers -----------------------------------------------------------------------------


async def test_errors_keyed_by_index_and_contacts_matched_by_email() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            201,
            json={
                # Failed items removed: the object keeps the original indexes, but the ids
                # must still be matched by email (here deliberately under the wrong keys).
                "contacts": {
                    "0": saved("PERSON3@example.com", 903),
                    "2": saved("person1@example.com", 901),
                },
                "statusCodes": [201, 400, 200, 500],
                "errors": {
                    "1": {
                        "code": 400,
                        "message": "email: A valid email is required.",
                        "details": {"email": ["A valid email is required."]},
                        "type": None,
                    },
                    "3": {"code": 500, "message": "Internal error", "type": "api"},
                },
            },
        )

    batch = [contact(1), contact(2), contact(3), contact(4)]

    results = await connector(Vendor(answer)).push(batch)

    assert results == [
        Ok("901", 201),
        Fail("Mautic refused the contact (400): email: A valid email is required.", 400),
        Ok("903", 200),
        Retry("Mautic could not save the contact (500): Internal error", 500),
    ]


async def test_errors_as_a_list_and_contacts_as_a_list() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            201,
            json={
                "contacts": [saved("person3@example.com", 3), saved("person4@example.com", 4)],
                "statusCodes": [422, 409, 201, 201],
                "errors": [
                    {"code": 422, "message": "Bad", "details": {"phone": ["Too long", "Wrong"]}},
                    {"code": 409, "message": "Checked out", "details": {"checkedOutBy": 2}},
                ],
            },
        )

    results = await connector(Vendor(answer)).push([contact(n) for n in range(1, 5)])

    assert results == [
        Fail("Mautic refused the contact (422): Bad (phone: Too long; Wrong)", 422),
        Retry("Mautic could not save the contact (409): Checked out (checkedOutBy: 2)", 409),
        Ok("3", 201),
        Ok("4", 201),
    ]


async def test_a_list_of_errors_at_other_positions_follows_the_failed_codes() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            201,
            json={
                "contacts": [saved("person1@example.com", 1)],
                "statusCodes": [201, 400],
                "errors": [{"code": 400, "message": "Invalid email"}],
            },
        )

    results = await connector(Vendor(answer)).push([contact(1), contact(2)])

    assert results == [Ok("1", 201), Fail("Mautic refused the contact (400): Invalid email", 400)]


async def test_saved_items_without_an_email_in_the_answer() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            201, json={"contacts": [{"id": 5}, {"id": 6}], "statusCodes": [201, 400, 200]}
        )

    results = await connector(Vendor(answer)).push([contact(1), contact(2), contact(3)])

    assert results == [
        Ok("5", 201),
        Fail("Mautic refused the contact (400): no message", 400),
        Ok("6", 200),
    ]


async def test_an_unreadable_answer_retries() -> None:
    results = await connector(Vendor(lambda r: httpx.Response(201, text="<html>"))).push(
        [contact(1)]
    )
    assert results == [Retry("Mautic answered 201 without a readable body", 201)]


# -- batch-wide answers ---------------------------------------------------------------------------


async def test_401_is_auth_failed_with_mautics_message() -> None:
    vendor = Vendor(lambda r: mautic_error(401, "API authorization denied.", "access_denied"))
    with pytest.raises(AuthFailed) as caught:
        await connector(vendor).push([contact(1)])
    assert caught.value.http_status == 401
    assert "API authorization denied." in caught.value.message
    assert "MAUTIC_USERNAME" in caught.value.message
    assert len(vendor.requests) == 1


async def test_403_api_disabled_is_auth_failed() -> None:
    vendor = Vendor(lambda r: mautic_error(403, "API disabled. Enable it.", "api_disabled"))
    with pytest.raises(AuthFailed) as caught:
        await connector(vendor).push([contact(1)])
    assert "api_disabled" in caught.value.message
    assert "API disabled. Enable it." in caught.value.message


async def test_429_waits_until_the_reset_time() -> None:
    clock = Clock()
    vendor = Vendor(
        lambda r: httpx.Response(
            429,
            headers={"X-RateLimit-Reset": str(int(clock.now) + 1200)},
            json={
                "errors": [
                    {
                        "code": 429,
                        "message": "You exceeded the rate limit of 100 API calls per hour.",
                    }
                ]
            },
        )
    )
    with pytest.raises(RateLimited) as caught:
        await connector(vendor, clock=clock).push([contact(1)])
    assert caught.value.retry_after == 1200
    assert "rate limit of 100" in caught.value.message


@pytest.mark.parametrize(
    ("headers", "wait"),
    [({"Retry-After": "30"}, 30), ({"X-RateLimit-Reset": "45"}, 45), ({}, 60)],
)
async def test_429_other_waits(headers: dict[str, str], wait: float) -> None:
    vendor = Vendor(lambda r: httpx.Response(429, headers=headers, json={"errors": []}))
    with pytest.raises(RateLimited) as caught:
        await connector(vendor).push([contact(1)])
    assert caught.value.retry_after == wait


async def test_429_on_one_request_keeps_the_others_results() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if "person0@example.com" in emails(request):
            return created(request)
        return httpx.Response(429, json={"errors": []})

    with pytest.raises(RateLimited) as caught:
        await connector(Vendor(answer), make_settings(batch_size=2)).push(
            [contact(n) for n in range(4)]
        )

    assert caught.value.partial == [Ok("700", 201), Ok("701", 200), None, None]


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (500, "A max of 2 entities are supported at a time."),
        (400, "Batch limit exceeded: 2"),
    ],
)
async def test_over_limit_batch_is_resent_smaller_and_the_size_remembered(
    status: int, message: str
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if len(items(request)) > 2:
            return mautic_error(status, message)
        return created(request)

    vendor = Vendor(answer)
    conn = connector(vendor)
    batch = [contact(n) for n in range(5)]

    results = await conn.push(batch)

    assert [len(items(r)) for r in vendor.requests] == [5, 2, 2, 1]
    assert all(isinstance(r, Ok) for r in results)
    assert conn.max_batch == 2
    vendor.requests.clear()
    await conn.push(batch)
    assert [len(items(r)) for r in vendor.requests] == [2, 2, 1]


async def test_over_limit_without_a_number_halves() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if len(items(request)) > 3:
            return mautic_error(500, "Too many entities in batch")
        return created(request)

    vendor = Vendor(answer)
    conn = connector(vendor)

    results = await conn.push([contact(n) for n in range(8)])

    assert [len(items(r)) for r in vendor.requests] == [8, 4, 2, 2, 4, 2, 2]
    assert all(isinstance(r, Ok) for r in results)
    assert conn.max_batch == 2


async def test_over_limit_splitting_is_bounded() -> None:
    vendor = Vendor(lambda r: mautic_error(500, "limit reached"))

    results = await connector(vendor).push([contact(n) for n in range(200)])

    assert len(vendor.requests) <= 1 + 32
    assert all(isinstance(r, Retry) for r in results)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_retry_every_row(status: int) -> None:
    vendor = Vendor(lambda r: mautic_error(status, "Something went wrong"))
    results = await connector(vendor).push([contact(1), contact(2)])
    assert results == [Retry(f"Mautic answered {status}: Something went wrong", status)] * 2
    assert len(vendor.requests) == 1


@pytest.mark.parametrize("exc", [httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("cut")])
async def test_transport_errors_retry_every_row(exc: Exception) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise exc

    results = await connector(Vendor(answer)).push([contact(1)])
    assert isinstance(results[0], Retry)
    assert type(exc).__name__ in results[0].reason


async def test_a_request_never_sent_is_unreachable() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(Unreachable, match="ConnectError"):
        await connector(Vendor(answer)).push([contact(1)])


@pytest.mark.parametrize(
    "response", [httpx.Response(404), httpx.Response(302, headers={"Location": "/s/login"})]
)
async def test_not_found_or_redirect_means_a_wrong_base_url(response: httpx.Response) -> None:
    with pytest.raises(Misconfigured, match="MAUTIC_BASE_URL"):
        await connector(Vendor(lambda r: response)).push([contact(1)])


async def test_a_whole_batch_validation_error_fails_the_rows() -> None:
    vendor = Vendor(lambda r: mautic_error(400, "Request body must be an array"))
    results = await connector(vendor).push([contact(1)])
    assert results == [Fail("Mautic refused the batch (400): Request body must be an array", 400)]


# -- OAuth2 ---------------------------------------------------------------------------------------


class OAuthVendor(Vendor):
    """Hands out tokens token-1, token-2, ...; the API accepts only the latest one."""

    def __init__(self, expires_in: int = 3600, api: Answer = created) -> None:
        super().__init__(self._answer)
        self.expires_in = expires_in
        self.api = api
        self.issued = 0
        self.revoked = False

    def _answer(self, request: httpx.Request) -> httpx.Response | Awaitable[httpx.Response]:
        if str(request.url) == TOKEN_URL:
            self.issued += 1
            return httpx.Response(
                200,
                json={
                    "access_token": f"oauth-ACCESS-token-{self.issued}",
                    "expires_in": self.expires_in,
                    "token_type": "bearer",
                },
            )
        if (
            self.revoked
            or request.headers["Authorization"] != f"Bearer oauth-ACCESS-token-{self.issued}"
        ):
            return mautic_error(401, "The access token provided is invalid.", "invalid_grant")
        return self.api(request)


async def test_oauth2_token_is_fetched_once_and_cached() -> None:
    vendor = OAuthVendor()
    conn = connector(vendor, oauth_settings())

    assert await conn.push([contact(1)]) == [Ok("700", 201)]
    assert await conn.push([contact(2)]) == [Ok("700", 201)]

    token_request, first, second = vendor.requests
    assert (token_request.method, str(token_request.url)) == ("POST", TOKEN_URL)
    assert token_request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_qs(token_request.content.decode()) == {
        "grant_type": ["client_credentials"],
        "client_id": [CLIENT_ID],
        "client_secret": [CLIENT_SECRET],
    }
    assert first.headers["Authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert second.headers["Authorization"] == f"Bearer {ACCESS_TOKEN}"


async def test_oauth2_token_is_renewed_shortly_before_it_expires() -> None:
    clock = Clock()
    vendor = OAuthVendor(expires_in=3600)
    conn = connector(vendor, oauth_settings(), clock)

    await conn.push([contact(1)])
    clock.now += 3600 - 61
    await conn.push([contact(1)])
    assert vendor.issued == 1
    clock.now += 2
    await conn.push([contact(1)])
    assert vendor.issued == 2


async def test_oauth2_401_fetches_a_new_token_once() -> None:
    vendor = OAuthVendor()
    conn = connector(vendor, oauth_settings())
    await conn.push([contact(1)])
    vendor.issued += 1  # the server moved on: the cached token is no longer valid

    assert await conn.push([contact(2)]) == [Ok("700", 201)]

    paths = [str(r.url) for r in vendor.requests]
    assert paths == [TOKEN_URL, BATCH, BATCH, TOKEN_URL, BATCH]


async def test_oauth2_401_after_a_fresh_token_is_auth_failed() -> None:
    vendor = OAuthVendor()
    vendor.revoked = True

    with pytest.raises(AuthFailed) as caught:
        await connector(vendor, oauth_settings()).push([contact(1)])

    assert [str(r.url) for r in vendor.requests] == [TOKEN_URL, BATCH, TOKEN_URL, BATCH]
    assert "MAUTIC_CLIENT_ID" in caught.value.message


async def test_oauth2_refused_client_is_auth_failed() -> None:
    vendor = Vendor(
        lambda r: httpx.Response(
            400,
            json={
                "error": "invalid_client",
                "error_description": "The client credentials are invalid",
            },
        )
    )
    with pytest.raises(AuthFailed) as caught:
        await connector(vendor, oauth_settings()).push([contact(1)])
    assert "invalid_client: The client credentials are invalid" in caught.value.message
    assert [str(r.url) for r in vendor.requests] == [TOKEN_URL]


async def test_oauth2_token_endpoint_down_retries_the_rows() -> None:
    vendor = Vendor(lambda r: httpx.Response(503, text="Service Unavailable"))
    results = await connector(vendor, oauth_settings()).push([contact(1)])
    assert results == [Retry("Mautic's token endpoint answered 503: Service Unavailable", 503)]


async def test_basic_auth_is_preferred_when_both_are_set() -> None:
    vendor = Vendor(created)
    await connector(vendor, make_settings(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)).push(
        [contact(1)]
    )
    assert [str(r.url) for r in vendor.requests] == [BATCH]
    assert vendor.requests[0].headers["Authorization"].startswith("Basic ")


# -- secrets --------------------------------------------------------------------------------------


async def test_no_log_record_or_message_holds_a_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    # Both pairs configured: basic auth is used, yet the client secret must not leak either; in
    # OAuth2 mode (no username) the password and the access tokens must not leak.
    basic_settings = make_settings(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    oauth = oauth_settings(password=PASSWORD)
    basic_echo = f"saw {PASSWORD} {CLIENT_SECRET} {basic}"
    oauth_echo = f"saw {PASSWORD} {CLIENT_SECRET} {ACCESS_TOKEN}"
    texts: list[str] = []

    async def collect(conn: MauticConnector) -> None:
        try:
            results = await conn.push([contact(1), contact(2)])
        except ConnectorError as exc:
            texts.extend([exc.message, str(exc)])
        else:
            texts.extend(r.reason for r in results if isinstance(r, Fail | Retry))

    def answer(status: int, echo: str) -> Answer:
        return lambda r: mautic_error(status, echo, details={"email": [echo]})

    for status in (400, 401, 403, 429, 500):
        await collect(connector(Vendor(answer(status, basic_echo)), basic_settings))
        await collect(connector(OAuthVendor(api=answer(status, oauth_echo)), oauth))
    # No token was issued yet: only the configured secrets can be echoed.
    token_echo = f"saw {PASSWORD} {CLIENT_SECRET}"
    for status in (400, 500):
        token_answer = Vendor(lambda r, s=status: httpx.Response(s, text=token_echo))
        await collect(connector(token_answer, oauth))
    item_error = {"code": 400, "message": basic_echo, "details": {"email": [basic_echo]}}
    items_failed = httpx.Response(
        201, json={"statusCodes": [400, 400], "errors": [item_error, item_error]}
    )
    await collect(connector(Vendor(lambda r: items_failed), basic_settings))

    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout(basic_echo)

    await collect(connector(Vendor(timeout), basic_settings))

    assert len(texts) > 20
    assert all("[redacted]" in text for text in texts if "saw" in text)
    for secret in [PASSWORD, CLIENT_SECRET, basic, ACCESS_TOKEN]:
        assert all(secret not in text for text in texts), secret
        assert all(secret not in record.getMessage() for record in caplog.records), secret
