"""HubSpot connector against `httpx.MockTransport`: the exact requests, and what answers mean."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from crmsync import USER_AGENT
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
from crmsync.connectors.hubspot import SPLIT_BUDGET, HubSpotConnector, ensure_properties
from crmsync.connectors.ratelimit import RateLimiter
from crmsync.settings import HubSpotSettings

TOKEN = "pat-na1-00000000-SECRET-TOKEN"
BASE = "https://hubspot.test"
UPSERT = "/crm/v3/objects/contacts/batch/upsert"
PROPERTIES = "/crm/v3/properties/contacts"
DOMAIN = uuid.UUID("11111111-1111-1111-1111-111111111111")
PAGE = uuid.UUID("22222222-2222-2222-2222-222222222222")
CUSTOM = ["scrapersky_domain_id", "scrapersky_page_id", "scrapersky_email_type"]
CUSTOM += ["scrapersky_source_url", "scrapersky_has_gmail"]

Answer = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


def make_settings(**overrides: Any) -> HubSpotSettings:
    values: dict[str, Any] = {
        "access_token": TOKEN,
        "api_base_url": BASE,
        "rate_limit_per_second": 0,
    }
    values.update(overrides)
    return HubSpotSettings(_env_file=None, **values)  # type: ignore[call-arg]


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


def body(request: httpx.Request) -> Any:
    return orjson.loads(request.content)


def emails(request: httpx.Request) -> list[str]:
    return [item["id"] for item in body(request)["inputs"]]


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


def connector(vendor: Vendor, clock: float = 0.0, **overrides: Any) -> HubSpotConnector:
    client = httpx.AsyncClient(transport=httpx.MockTransport(vendor))
    return HubSpotConnector(make_settings(**overrides), client, clock=lambda: clock)


def upserted(request: httpx.Request, status: int = 200, reverse: bool = True) -> httpx.Response:
    """HubSpot's success answer for every input of `request` (ids 1000+n), in reverse order."""
    results = [
        {
            "id": str(1000 + n),
            "properties": {"email": item["id"].upper()},
            "new": True,
        }
        for n, item in enumerate(body(request)["inputs"])
    ]
    if reverse:
        results.reverse()
    return httpx.Response(status, json={"status": "COMPLETE", "results": results})


def ids_by_email(request: httpx.Request) -> dict[str, str]:
    return {item["id"]: str(1000 + n) for n, item in enumerate(body(request)["inputs"])}


def hubspot_error(status: int, message: str, category: str = "VALIDATION_ERROR", **extra: Any):
    return httpx.Response(
        status,
        json={"status": "error", "message": message, "correlationId": "c-1", "category": category}
        | extra,
    )


# -- the request ----------------------------------------------------------------------------------


async def test_upsert_sends_the_mapped_inputs() -> None:
    vendor = Vendor(upserted)
    conn = connector(vendor)

    results = await conn.push([contact(1), contact(2, has_gmail=True, email=" Mixed@Example.com ")])

    assert results == [Ok("1000", 200), Ok("1001", 200)]
    [request] = vendor.requests
    assert request.method == "POST"
    assert str(request.url) == BASE + UPSERT
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert body(request) == {
        "inputs": [
            {
                "id": "person1@example.com",
                "idProperty": "email",
                "properties": {
                    "email": "person1@example.com",
                    "firstname": "Jane",
                    "lastname": "van Dyke",
                    "phone": "+33 1 42 68 53 00",
                    "scrapersky_domain_id": str(DOMAIN),
                    "scrapersky_page_id": str(PAGE),
                    "scrapersky_email_type": "CORPORATE",
                    "scrapersky_source_url": "https://example.com/team",
                    "scrapersky_has_gmail": "false",
                },
            },
            {
                "id": "Mixed@Example.com",
                "idProperty": "email",
                "properties": {
                    "email": "Mixed@Example.com",
                    "firstname": "Jane",
                    "lastname": "van Dyke",
                    "phone": "+33 1 42 68 53 00",
                    "scrapersky_domain_id": str(DOMAIN),
                    "scrapersky_page_id": str(PAGE),
                    "scrapersky_email_type": "CORPORATE",
                    "scrapersky_source_url": "https://example.com/team",
                    "scrapersky_has_gmail": "true",
                },
            },
        ]
    }


async def test_placeholders_and_missing_values_are_left_out() -> None:
    vendor = Vendor(upserted)
    conn = connector(vendor)
    bare = contact(
        1,
        name="Contact at example.com",
        phone_number="Phone not found",
        email_type=None,
        has_gmail=None,
        source_url="N/A",
        domain_id=None,
        page_id=None,
    )

    await conn.push([bare])

    assert body(vendor.requests[0])["inputs"][0]["properties"] == {"email": "person1@example.com"}


async def test_an_empty_property_setting_leaves_that_property_out() -> None:
    vendor = Vendor(upserted)
    conn = connector(
        vendor,
        custom_property_page_id="",
        custom_property_has_gmail="  ",
        custom_property_domain_id="dom",
    )

    await conn.push([contact(1)])

    properties = body(vendor.requests[0])["inputs"][0]["properties"]
    assert properties["dom"] == str(DOMAIN)
    assert not {"scrapersky_page_id", "scrapersky_has_gmail", "scrapersky_domain_id"} & set(
        properties
    )


def test_fingerprint_is_the_hash_of_the_exact_input() -> None:
    conn = connector(Vendor(upserted))
    payload = conn.payload(contact(1))

    assert conn.fingerprint(contact(1)) == stable_hash(payload)
    assert conn.fingerprint(contact(1)) != conn.fingerprint(contact(1, phone_number="+1 555 0100"))
    # A placeholder sends nothing, exactly like no value.
    assert conn.fingerprint(contact(1, phone_number="Phone not found")) == conn.fingerprint(
        contact(1, phone_number=None)
    )
    # Fields HubSpot never receives do not matter.
    assert conn.fingerprint(contact(1)) == conn.fingerprint(contact(1, context="other"))
    renamed = connector(Vendor(upserted), custom_property_page_id="page")
    assert renamed.fingerprint(contact(1)) != conn.fingerprint(contact(1))


async def test_empty_batch_sends_nothing() -> None:
    vendor = Vendor(upserted)
    assert await connector(vendor).push([]) == []
    assert vendor.requests == []


async def test_missing_token_is_misconfigured() -> None:
    vendor = Vendor(upserted)
    with pytest.raises(Misconfigured, match="HUBSPOT_ACCESS_TOKEN"):
        await connector(vendor, access_token=None).push([contact(1)])
    assert vendor.requests == []


# -- answers mapped back to rows ------------------------------------------------------------------


async def test_more_than_100_rows_go_in_requests_of_at_most_100() -> None:
    vendor = Vendor(upserted)
    conn = connector(vendor)
    batch = [contact(n) for n in range(250)]

    results = await conn.push(batch)

    assert sorted(len(emails(r)) for r in vendor.requests) == [50, 100, 100]
    sent = [email for r in vendor.requests for email in emails(r)]
    assert sorted(sent) == sorted(c.email for c in batch)
    expected = {e: i for r in vendor.requests for e, i in ids_by_email(r).items()}
    assert results == [Ok(expected[c.email], 200) for c in batch]


async def test_the_same_email_twice_is_sent_once_and_both_rows_get_its_result() -> None:
    vendor = Vendor(upserted)
    conn = connector(vendor)

    results = await conn.push([contact(1), contact(2), contact(3, email="PERSON1@example.com")])

    assert emails(vendor.requests[0]) == ["person1@example.com", "person2@example.com"]
    assert results == [Ok("1000", 200), Ok("1001", 200), Ok("1000", 200)]


async def test_207_errors_are_matched_by_context_ids_and_by_message() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            207,
            json={
                "status": "COMPLETE",
                "results": [{"id": "501", "properties": {"email": "person2@example.com"}}],
                "numErrors": 2,
                "errors": [
                    {
                        "status": "error",
                        "category": "VALIDATION_ERROR",
                        "message": "Email address is invalid",
                        "context": {"ids": ["PERSON3@example.com"]},
                    },
                    {
                        "status": "error",
                        "category": "VALIDATION_ERROR",
                        "message": "Property values were not valid: "
                        + orjson.dumps(
                            [
                                {
                                    "isValid": False,
                                    "message": "person1@example.com is not a valid email",
                                }
                            ]
                        ).decode(),
                    },
                ],
            },
        )

    conn = connector(Vendor(answer))

    results = await conn.push([contact(1), contact(2), contact(3)])

    assert results == [
        Fail(
            "HubSpot refused the contact: VALIDATION_ERROR: "
            "person1@example.com is not a valid email",
            207,
        ),
        Ok("501", 207),
        Fail("HubSpot refused the contact: VALIDATION_ERROR: Email address is invalid", 207),
    ]


async def test_207_error_naming_no_row_is_given_to_the_one_row_left() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            207,
            json={
                "results": [{"id": "501", "properties": {"email": "person1@example.com"}}],
                "errors": [{"status": "error", "category": "VALIDATION_ERROR", "message": "bad"}],
            },
        )

    results = await connector(Vendor(answer)).push([contact(1), contact(2)])

    assert results == [
        Ok("501", 207),
        Fail("HubSpot refused the contact: VALIDATION_ERROR: bad", 207),
    ]


async def test_rows_the_answer_does_not_mention_are_retried() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            207,
            json={
                "results": [{"id": "501", "properties": {"email": "person1@example.com"}}],
                "errors": [{"message": "first"}, {"message": "second"}],
            },
        )

    results = await connector(Vendor(answer)).push([contact(1), contact(2), contact(3)])

    assert results[0] == Ok("501", 207)
    assert results[1] == results[2]
    assert isinstance(results[1], Retry)
    assert "did not tie to a contact: first; second" in results[1].reason


async def test_missing_property_fails_every_row_in_one_request_with_the_fix() -> None:
    message = (
        "Property values were not valid: "
        '[{"isValid":false,"message":"Property \\"scrapersky_domain_id\\" does not exist",'
        '"error":"PROPERTY_DOESNT_EXIST","name":"scrapersky_domain_id"}]'
    )
    vendor = Vendor(lambda r: hubspot_error(400, message))
    conn = connector(vendor)

    results = await conn.push([contact(n) for n in range(10)])

    assert len(vendor.requests) == 1
    expected = Fail(
        'HubSpot has no contact property "scrapersky_domain_id": run "crmsync setup hubspot" to '
        "create it (or set HUBSPOT_CUSTOM_PROPERTY_DOMAIN_ID to an existing property, or empty to "
        "omit it)",
        400,
    )
    assert results == [expected] * 10


async def test_missing_property_in_a_207_fails_the_rows_it_concerns() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            207,
            json={
                "results": [],
                "errors": [
                    {
                        "message": 'Property "scrapersky_page_id" does not exist',
                        "category": "VALIDATION_ERROR",
                        "subCategory": "PROPERTY_DOESNT_EXIST",
                        "context": {"propertyName": ["scrapersky_page_id"]},
                    }
                ],
            },
        )

    results = await connector(Vendor(answer)).push([contact(1), contact(2)])

    assert len(set(results)) == 1
    assert isinstance(results[0], Fail)
    assert '"scrapersky_page_id"' in results[0].reason
    assert "crmsync setup hubspot" in results[0].reason


async def test_a_400_naming_a_row_fails_it_and_resends_the_others() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if "bad@example.con" in emails(request):
            return hubspot_error(400, "Email address bad@example.con is invalid.")
        return upserted(request)

    vendor = Vendor(answer)
    batch = [contact(1), contact(2, email="bad@example.con"), contact(3)]

    results = await connector(vendor).push(batch)

    assert [emails(r) for r in vendor.requests] == [
        ["person1@example.com", "bad@example.con", "person3@example.com"],
        ["person1@example.com", "person3@example.com"],
    ]
    assert results == [
        Ok("1000", 200),
        Fail(
            "HubSpot refused the contact (400): VALIDATION_ERROR: "
            "Email address bad@example.con is invalid.",
            400,
        ),
        Ok("1001", 200),
    ]


async def test_an_email_inside_a_longer_one_is_not_named() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if len(emails(request)) > 1:
            return hubspot_error(400, "xa@example.com. is invalid")
        return upserted(request)

    vendor = Vendor(answer)

    results = await connector(vendor).push(
        [contact(1, email="a@example.com"), contact(2, email="xa@example.com")]
    )

    assert [emails(r) for r in vendor.requests] == [
        ["a@example.com", "xa@example.com"],
        ["a@example.com"],
    ]
    assert results[0] == Ok("1000", 200)
    assert isinstance(results[1], Fail)


async def test_an_anonymous_400_is_halved_until_the_bad_rows_are_alone() -> None:
    bad = {"person13@example.com", "person70@example.com"}

    def answer(request: httpx.Request) -> httpx.Response:
        if bad & set(emails(request)):
            return hubspot_error(400, "Invalid input JSON on line 1")
        return upserted(request, reverse=False)

    vendor = Vendor(answer)
    batch = [contact(n) for n in range(100)]

    results = await connector(vendor).push(batch)

    failed = [c.email for c, r in zip(batch, results, strict=True) if isinstance(r, Fail)]
    assert failed == ["person13@example.com", "person70@example.com"]
    assert results[13] == Fail(
        "HubSpot refused the contact (400): VALIDATION_ERROR: Invalid input JSON on line 1", 400
    )
    assert all(isinstance(r, Ok) for c, r in zip(batch, results, strict=True) if c.email not in bad)
    assert len(vendor.requests) <= 1 + SPLIT_BUDGET
    # Every good row was accepted exactly once.
    accepted = [e for r in vendor.requests if not bad & set(emails(r)) for e in emails(r)]
    assert sorted(accepted) == sorted(c.email for c in batch if c.email not in bad)


async def test_splitting_stops_at_its_budget_and_retries_the_rest() -> None:
    vendor = Vendor(lambda r: hubspot_error(400, "Invalid input"))
    batch = [contact(n) for n in range(100)]

    results = await connector(vendor).push(batch)

    assert len(vendor.requests) == 1 + SPLIT_BUDGET
    assert any(isinstance(r, Fail) for r in results)
    retried = [r for r in results if isinstance(r, Retry)]
    assert retried
    assert "not narrowed down further" in retried[0].reason


# -- batch-wide answers ---------------------------------------------------------------------------


async def test_429_ten_secondly_waits_for_the_window_and_holds_the_limiter() -> None:
    vendor = Vendor(
        lambda r: httpx.Response(
            429,
            headers={"X-HubSpot-RateLimit-Interval-Milliseconds": "10000"},
            json={
                "status": "error",
                "message": "You have reached your ten_secondly_rolling limit.",
                "errorType": "RATE_LIMIT",
                "policyName": "TEN_SECONDLY_ROLLING",
            },
        )
    )
    conn = connector(vendor, rate_limit_per_second=10)

    with pytest.raises(RateLimited) as caught:
        await conn.push([contact(1)])

    # Nothing says when (no remaining/max headers, no Retry-After): a whole window.
    assert caught.value.retry_after == pytest.approx(10, abs=0.05)
    assert caught.value.partial is None
    assert "TEN_SECONDLY_ROLLING" in caught.value.message
    # The window is known to be full: the next request waits a full interval.
    assert conn._limiter.wait_for_next() > 0


async def test_429_honours_retry_after_and_a_shorter_interval() -> None:
    vendor = Vendor(
        lambda r: httpx.Response(
            429,
            headers={"Retry-After": "3", "X-HubSpot-RateLimit-Interval-Milliseconds": "1000"},
            json={"policyName": "SECONDLY"},
        )
    )
    with pytest.raises(RateLimited) as caught:
        await connector(vendor).push([contact(1)])
    assert caught.value.retry_after == 3

    vendor = Vendor(
        lambda r: httpx.Response(
            429,
            headers={"X-HubSpot-RateLimit-Interval-Milliseconds": "1000"},
            json={"policyName": "SECONDLY"},
        )
    )
    with pytest.raises(RateLimited) as caught:
        await connector(vendor).push([contact(1)])
    assert caught.value.retry_after == pytest.approx(1, abs=0.05)


@pytest.mark.parametrize(
    ("now", "wait"),
    [
        (datetime(2026, 3, 1, 23, 30, tzinfo=UTC), 1800),
        (datetime(2026, 3, 1, 9, 0, tzinfo=UTC), 3600),
    ],
)
async def test_429_daily_waits_for_midnight_utc_looking_again_hourly(
    now: datetime, wait: float
) -> None:
    vendor = Vendor(
        lambda r: httpx.Response(
            429,
            json={
                "status": "error",
                "message": "You have reached your daily limit.",
                "errorType": "RATE_LIMIT",
                "policyName": "DAILY",
            },
        )
    )

    with pytest.raises(RateLimited) as caught:
        await connector(vendor, clock=now.timestamp()).push([contact(1)])

    assert caught.value.retry_after == wait
    assert "daily" in caught.value.message


async def test_429_without_policy_but_no_daily_remaining_is_daily() -> None:
    now = datetime(2026, 3, 1, 23, 0, tzinfo=UTC)
    vendor = Vendor(
        lambda r: httpx.Response(429, headers={"X-HubSpot-RateLimit-Daily-Remaining": "0"})
    )
    with pytest.raises(RateLimited) as caught:
        await connector(vendor, clock=now.timestamp()).push([contact(1)])
    assert caught.value.retry_after == 3600


async def test_429_after_another_request_succeeded_keeps_its_results() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if "person0@example.com" in emails(request):
            return upserted(request, reverse=False)
        return httpx.Response(429, json={"policyName": "TEN_SECONDLY_ROLLING"})

    vendor = Vendor(answer)
    batch = [contact(n) for n in range(150)]

    with pytest.raises(RateLimited) as caught:
        await connector(vendor).push(batch)

    partial = caught.value.partial
    assert partial is not None
    assert partial[:100] == [Ok(str(1000 + n), 200) for n in range(100)]
    assert partial[100:] == [None] * 50


async def test_401_is_auth_failed_without_the_token() -> None:
    vendor = Vendor(
        lambda r: hubspot_error(
            401,
            "Authentication credentials not found.",
            category="INVALID_AUTHENTICATION",
        )
    )
    with pytest.raises(AuthFailed) as caught:
        await connector(vendor).push([contact(1)])
    assert caught.value.http_status == 401
    assert "Authentication credentials not found" in caught.value.message
    assert TOKEN not in caught.value.message


async def test_403_is_auth_failed_naming_the_scopes() -> None:
    vendor = Vendor(
        lambda r: hubspot_error(
            403,
            "This app hasn't been granted all required scopes to make this call.",
            category="MISSING_SCOPES",
        )
    )
    with pytest.raises(AuthFailed) as caught:
        await connector(vendor).push([contact(1)])
    assert caught.value.http_status == 403
    assert "crm.objects.contacts.write" in caught.value.message


@pytest.mark.parametrize("status", [500, 502, 503, 504, 521, 522, 523, 524])
async def test_transient_statuses_retry_every_row(status: int) -> None:
    vendor = Vendor(lambda r: hubspot_error(status, "try later", category="INTERNAL_ERROR"))

    results = await connector(vendor).push([contact(1), contact(2)])

    assert len(vendor.requests) == 1
    assert results == [Retry(f"HubSpot answered {status}: INTERNAL_ERROR: try later", status)] * 2


@pytest.mark.parametrize(
    ("status", "headers", "wait"),
    [
        (423, {}, 2.0),  # locks last 2 s: wait at least that
        (423, {"Retry-After": "5"}, 5.0),
        (477, {"Retry-After": "43200"}, 43200.0),  # a migration: up to a day
        (477, {"Retry-After": "200000"}, 86400.0),  # more than a day is not taken literally
        (477, {}, 3600.0),
    ],
)
async def test_locked_and_migration_pause_like_a_rate_limit(
    status: int, headers: dict[str, str], wait: float
) -> None:
    vendor = Vendor(
        lambda r: httpx.Response(
            status, json={"status": "error", "message": "try later"}, headers=headers
        )
    )

    with pytest.raises(RateLimited) as caught:
        await connector(vendor).push([contact(1), contact(2)])

    assert caught.value.retry_after == wait
    assert caught.value.http_status == status
    assert f"HubSpot answered {status}" in caught.value.message
    assert caught.value.partial is None  # nothing answered: no attempt is spent


async def test_a_lock_after_some_chunks_were_answered_keeps_their_answers() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if emails(request)[0] == "person1@example.com":
            return upserted(request)
        return httpx.Response(423, json={"status": "error", "message": "locked"})

    batch = [contact(n) for n in range(1, 151)]  # two requests: 100 and 50 inputs
    with pytest.raises(RateLimited) as caught:
        await connector(Vendor(answer)).push(batch)
    assert caught.value.partial is not None
    assert all(isinstance(r, Ok) for r in caught.value.partial[:100])
    assert caught.value.partial[100:] == [None] * 50


@pytest.mark.parametrize("exc", [httpx.ReadTimeout("timed out"), httpx.ReadError("reset")])
async def test_transport_errors_retry_every_row(exc: Exception) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise exc

    results = await connector(Vendor(answer)).push([contact(1), contact(2)])

    assert results[0] == results[1]
    assert isinstance(results[0], Retry)
    assert type(exc).__name__ in results[0].reason


@pytest.mark.parametrize("exc", [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow")])
async def test_a_request_never_sent_is_unreachable(exc: Exception) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(Unreachable) as caught:
        await connector(Vendor(answer)).push([contact(1), contact(2)])
    assert type(exc).__name__ in caught.value.message


async def test_404_means_a_wrong_base_url() -> None:
    vendor = Vendor(lambda r: httpx.Response(404, text="Not Found"))
    with pytest.raises(Misconfigured, match="HUBSPOT_API_BASE_URL"):
        await connector(vendor).push([contact(1)])


async def test_other_client_errors_fail_the_rows() -> None:
    vendor = Vendor(lambda r: httpx.Response(415, text="Unsupported Media Type"))
    results = await connector(vendor).push([contact(1)])
    assert results == [Fail("HubSpot refused the batch (415): Unsupported Media Type", 415)]


# -- secrets --------------------------------------------------------------------------------------


async def test_no_log_record_or_message_holds_the_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = f"token {TOKEN} is bad"
    answers = [
        hubspot_error(401, echo),
        hubspot_error(403, echo),
        hubspot_error(400, echo),
        hubspot_error(500, echo),
        httpx.Response(429, json={"message": echo, "policyName": "DAILY"}),
        httpx.Response(207, json={"results": [], "errors": [{"message": echo}]}),
    ]
    texts: list[str] = []
    for response in answers:
        conn = connector(Vendor(lambda r, response=response: response))
        try:
            results = await conn.push([contact(1), contact(2)])
        except ConnectorError as exc:
            texts.append(exc.message)
            texts.append(str(exc))
        else:
            texts.extend(r.reason for r in results if isinstance(r, Fail | Retry))

    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout(echo)

    results = await connector(Vendor(timeout)).push([contact(1)])
    texts.extend(r.reason for r in results if isinstance(r, Retry))

    assert texts
    assert all(TOKEN not in text for text in texts)
    assert all("[redacted]" in text for text in texts if "is bad" in text)
    assert caplog.records
    assert all(TOKEN not in record.getMessage() for record in caplog.records)


# -- client ownership -----------------------------------------------------------------------------


async def test_own_client_has_our_user_agent_and_is_closed() -> None:
    conn = HubSpotConnector(make_settings())
    assert conn._client.headers["User-Agent"] == USER_AGENT
    await conn.aclose()
    assert conn._client.is_closed


async def test_injected_client_is_left_open() -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(Vendor(upserted)))
    conn = HubSpotConnector(make_settings(), client)
    await conn.aclose()
    assert not client.is_closed
    await client.aclose()


# -- ensure-properties ----------------------------------------------------------------------------


def properties_vendor(existing: list[str], create_status: int = 201) -> Vendor:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            results = [{"name": name, "type": "string"} for name in [*existing, "email"]]
            return httpx.Response(200, json={"results": results})
        return httpx.Response(create_status, json=body(request))

    return Vendor(answer)


async def test_ensure_properties_creates_only_the_missing_ones() -> None:
    vendor = properties_vendor(["scrapersky_domain_id", "scrapersky_email_type"])
    client = httpx.AsyncClient(transport=httpx.MockTransport(vendor))

    created = await ensure_properties(make_settings(), client)

    assert created == ["scrapersky_page_id", "scrapersky_source_url", "scrapersky_has_gmail"]
    get, *posts = vendor.requests
    assert (get.method, str(get.url)) == ("GET", BASE + PROPERTIES)
    assert get.headers["Authorization"] == f"Bearer {TOKEN}"
    assert [(r.method, str(r.url)) for r in posts] == [("POST", BASE + PROPERTIES)] * 3
    assert body(posts[0]) == {
        "name": "scrapersky_page_id",
        "label": "ScraperSky page ID",
        "type": "string",
        "fieldType": "text",
        "groupName": "contactinformation",
        "description": "Set by crmsync",
    }
    assert not client.is_closed
    await client.aclose()


async def test_ensure_properties_skips_empty_settings_and_treats_409_as_present() -> None:
    vendor = properties_vendor([], create_status=409)
    client = httpx.AsyncClient(transport=httpx.MockTransport(vendor))
    settings = make_settings(
        custom_property_page_id="",
        custom_property_email_type="",
        custom_property_source_url="",
        custom_property_has_gmail="",
    )

    assert await ensure_properties(settings, client) == []
    assert [body(r)["name"] for r in vendor.requests[1:]] == ["scrapersky_domain_id"]


@pytest.mark.parametrize(("status", "needle"), [(401, "HUBSPOT_ACCESS_TOKEN"), (403, "schemas")])
async def test_ensure_properties_refused(status: int, needle: str) -> None:
    vendor = Vendor(lambda r: hubspot_error(status, f"no {TOKEN}", category="MISSING_SCOPES"))
    client = httpx.AsyncClient(transport=httpx.MockTransport(vendor))

    with pytest.raises(AuthFailed) as caught:
        await ensure_properties(make_settings(), client)

    assert needle in caught.value.message
    assert TOKEN not in caught.value.message


async def test_ensure_properties_other_failure_is_a_clear_error() -> None:
    vendor = Vendor(lambda r: hubspot_error(500, "boom", category="INTERNAL_ERROR"))
    client = httpx.AsyncClient(transport=httpx.MockTransport(vendor))
    with pytest.raises(ConnectorError, match="HubSpot answered 500 when asked to list"):
        await ensure_properties(make_settings(), client)


async def test_property_calls_count_against_the_vendors_window_like_pushes() -> None:
    """The worker's field check calls HubSpot's properties API, which counts against the same
    ten-second window as the upserts. The limiter must log that call too: when the pushes after
    it fill the window, the vendor's count is then explained by our own requests, and the next
    request waits until the oldest of them (the field call) leaves the window. Unlogged, the
    count looked like another client's and the limiter waited a whole window from the moment
    the window filled (bench/README.md, "Fixed and rolling windows")."""
    limit, now = 5, [0.0]
    counted = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal counted
        counted += 1
        if request.method == "GET":
            return httpx.Response(200, json={"results": [{"name": "email"}]})
        headers = {
            "X-HubSpot-RateLimit-Max": str(limit),
            "X-HubSpot-RateLimit-Remaining": str(limit - counted),
            "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
        }
        return httpx.Response(200, json=orjson.loads(upserted(request).content), headers=headers)

    vendor = Vendor(answer)
    hub = connector(vendor)
    hub._limiter = RateLimiter(0, clock=lambda: now[0], window=10.0, vendor="HubSpot")
    await hub.field_api().names()  # at 0 s
    now[0] = 6.0
    for n in range(1, limit):
        await hub.push([contact(n)])
    assert counted == limit  # the window is full
    # The field call, answered at 0 s, leaves the window at 10 s: 4 s from now, not 10.
    assert hub._limiter.wait_for_next() == pytest.approx(4.0)
