"""Brevo connector against `httpx.MockTransport`: the exact requests, and every answer's meaning."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
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
from crmsync.connectors.brevo import BrevoConnector, importable_email
from crmsync.settings import BrevoSettings

KEY = "xkeysib-0123456789abcdef-SECRET"
BASE = "https://brevo.test/v3"
DOMAIN = uuid.UUID("11111111-1111-1111-1111-111111111111")
PAGE = uuid.UUID("22222222-2222-2222-2222-222222222222")

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def make_settings(**overrides: Any) -> BrevoSettings:
    values: dict[str, Any] = {
        "api_key": KEY,
        "api_base_url": BASE,
        "list_id": 7,
        "rate_limit_per_second": 0,
        "import_threshold": 500,
        "import_poll_seconds": 2.0,
        "import_timeout_seconds": 90.0,
    }
    values.update(overrides)
    return BrevoSettings(_env_file=None, **values)  # type: ignore[call-arg]


def contact(n: int = 1, **fields: Any) -> ContactPayload:
    values: dict[str, Any] = {
        "contact_id": uuid.UUID(int=n),
        "email": f"person{n}@example.com",
        "name": "Jane van Dyke",
        "phone_number": f"+33 1 42 68 {n // 100 % 100:02d} {n % 100:02d}",
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


class Vendor:
    """A MockTransport handler that records every request and answers with `answer`."""

    def __init__(
        self, answer: Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]
    ):
        self.answer = answer
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        result = self.answer(request)
        if not isinstance(result, httpx.Response):
            result = await result
        return result

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def connector(
    vendor: Vendor, sleep: Sleeps | None = None, **overrides: Any
) -> tuple[BrevoConnector, httpx.AsyncClient]:
    client = httpx.AsyncClient(transport=httpx.MockTransport(vendor))
    return BrevoConnector(make_settings(**overrides), client, sleep=sleep or Sleeps()), client


def error(status: int, code: str, message: str, **extra: Any) -> httpx.Response:
    return httpx.Response(status, json={"code": code, "message": message, **extra})


# -- single upsert: the request ------------------------------------------------------------------


async def test_single_upsert_sends_the_mapped_body() -> None:
    vendor = Vendor(lambda r: httpx.Response(201, json={"id": 122}))
    conn, _ = connector(vendor)

    results = await conn.push([contact(1)])

    assert results == [Ok("122", 201)]
    (request,) = vendor.requests
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/contacts"
    assert request.headers["api-key"] == KEY
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "application/json"
    assert body(request) == {
        "email": "person1@example.com",
        "attributes": {
            "FIRSTNAME": "Jane",
            "LASTNAME": "van Dyke",
            "SMS": "+33142680001",
            "DOMAIN_ID": str(DOMAIN),
            "PAGE_ID": str(PAGE),
            "EMAIL_TYPE": "CORPORATE",
            "SOURCE_URL": "https://example.com/team",
            "HAS_GMAIL": False,
        },
        "listIds": [7],
        "updateEnabled": True,
    }


async def test_placeholders_and_missing_values_are_left_out() -> None:
    vendor = Vendor(lambda r: httpx.Response(204))
    conn, _ = connector(vendor, list_id=None)

    row = ContactPayload(
        contact_id=uuid.UUID(int=5),
        email="  info@example.com ",
        name="Contact at example.com",
        phone_number="Phone not found",
        source_url="N/A",
        has_gmail=True,
    )
    assert await conn.push([row]) == [Ok("info@example.com", 204)]
    assert body(vendor.requests[0]) == {
        "email": "info@example.com",
        "attributes": {"HAS_GMAIL": True},
        "updateEnabled": True,
    }


async def test_phone_without_country_code_is_not_sent_as_sms() -> None:
    vendor = Vendor(lambda r: httpx.Response(204))
    conn, _ = connector(vendor)
    await conn.push([contact(1, phone_number="01 42 68 53 00", name="Cher")])
    attributes = body(vendor.requests[0])["attributes"]
    assert "SMS" not in attributes
    assert attributes["FIRSTNAME"] == "Cher"
    assert "LASTNAME" not in attributes


async def test_204_keeps_the_known_id_and_never_parses_the_body() -> None:
    # A 204 carries no body; even a garbage one must not be parsed.
    vendor = Vendor(lambda r: httpx.Response(204, content=b"not json"))
    conn, _ = connector(vendor)
    results = await conn.push([contact(1, external_id="73878"), contact(2)])
    assert results == [Ok("73878", 204), Ok("person2@example.com", 204)]


async def test_201_without_an_id_falls_back_to_the_email() -> None:
    vendor = Vendor(lambda r: httpx.Response(201, content=b""))
    conn, _ = connector(vendor)
    assert await conn.push([contact(1)]) == [Ok("person1@example.com", 201)]


def test_fingerprint_is_the_hash_of_the_body_sent() -> None:
    conn = BrevoConnector(make_settings(), httpx.AsyncClient())
    row = contact(1)
    assert conn.fingerprint(row) == stable_hash(conn.contact_body(row))
    assert conn.fingerprint(row) == conn.fingerprint(contact(1))
    assert conn.fingerprint(row) != conn.fingerprint(contact(1, has_gmail=True))
    other_list = BrevoConnector(make_settings(list_id=8), httpx.AsyncClient())
    assert other_list.fingerprint(row) != conn.fingerprint(row)
    # Fields Brevo does not receive do not change it.
    assert conn.fingerprint(row) == conn.fingerprint(contact(1, context="other"))


def test_connector_shape() -> None:
    conn = BrevoConnector(make_settings(), httpx.AsyncClient())
    assert conn.name == "brevo"
    assert conn.max_batch == 1000
    assert conn.default_concurrency == 1


# -- single upsert: answers ----------------------------------------------------------------------


async def test_invalid_email_fails_with_brevos_message() -> None:
    vendor = Vendor(lambda r: error(400, "invalid_parameter", "Invalid email address"))
    conn, _ = connector(vendor)
    assert await conn.push([contact(1, email="bad@")]) == [Fail("Invalid email address", 400)]
    assert len(vendor.requests) == 1


async def test_other_400_fails_with_message_or_text() -> None:
    answers = iter(
        [
            error(400, "duplicate_parameter", "Contact already exist"),
            httpx.Response(400, text="plain failure"),
            httpx.Response(422, content=b""),
        ]
    )
    vendor = Vendor(lambda r: next(answers))
    conn, _ = connector(vendor)
    results = [await conn.push([contact(n)]) for n in (1, 2, 3)]
    assert results == [
        [Fail("Contact already exist", 400)],
        [Fail("plain failure", 400)],
        [Fail("HTTP 422", 422)],
    ]


@pytest.mark.parametrize(
    "conflict",
    [
        error(
            400,
            "duplicate_parameter",
            "Unable to update contact, SMS is already associated with another Contact",
            metadata={"duplicate_identifiers": ["SMS"]},
        ),
        error(400, "invalid_parameter", "SMS is already associated with another Contact"),
        error(400, "invalid_parameter", "Invalid phone number"),
        error(
            400,
            "duplicate_parameter",
            "Unable to create contact, identifiers are already associated",
            metadata={"duplicate_identifiers": ["email", "sms"]},
        ),
    ],
)
async def test_sms_conflict_is_retried_once_without_sms(conflict: httpx.Response) -> None:
    answers = iter([conflict, httpx.Response(201, json={"id": 9})])
    vendor = Vendor(lambda r: next(answers))
    conn, _ = connector(vendor)

    [result] = await conn.push([contact(1)])
    assert (result.external_id, result.http_status) == ("9", 201)
    # The dropped phone is said, for the contact's sync history.
    assert result.note is not None
    assert result.note.startswith("Brevo would not take the phone +33142680001 (")
    assert result.note.endswith("); saved without it")

    first, second = (body(r) for r in vendor.requests)
    assert first["attributes"]["SMS"] == "+33142680001"
    assert "SMS" not in second["attributes"]
    assert {k: v for k, v in first["attributes"].items() if k != "SMS"} == second["attributes"]
    assert second["email"] == first["email"] and second["listIds"] == [7]


async def test_sms_conflict_that_still_fails_fails_with_the_message() -> None:
    answers = iter(
        [
            error(400, "duplicate_parameter", "SMS is already associated with another Contact"),
            error(400, "invalid_parameter", "Invalid email address"),
        ]
    )
    vendor = Vendor(lambda r: next(answers))
    conn, _ = connector(vendor)
    assert await conn.push([contact(1)]) == [Fail("Invalid email address", 400)]
    assert len(vendor.requests) == 2


async def test_sms_conflict_without_sms_sent_is_not_retried() -> None:
    vendor = Vendor(
        lambda r: error(
            400,
            "duplicate_parameter",
            "SMS is already associated with another Contact",
            metadata={"duplicate_identifiers": ["SMS"]},
        )
    )
    conn, _ = connector(vendor)
    results = await conn.push([contact(1, phone_number=None)])
    assert results == [Fail("SMS is already associated with another Contact", 400)]
    assert len(vendor.requests) == 1


async def test_email_duplicate_is_not_retried_without_sms() -> None:
    vendor = Vendor(
        lambda r: error(
            400,
            "duplicate_parameter",
            "Unable to create contact, email is already associated with another Contact",
            metadata={"duplicate_identifiers": ["email"]},
        )
    )
    conn, _ = connector(vendor)
    (result,) = await conn.push([contact(1)])
    assert isinstance(result, Fail)
    assert len(vendor.requests) == 1


async def test_401_raises_auth_failed_without_the_key() -> None:
    vendor = Vendor(lambda r: error(401, "unauthorized", "Key not found"))
    conn, _ = connector(vendor)
    with pytest.raises(AuthFailed) as caught:
        await conn.push([contact(1)])
    assert caught.value.http_status == 401
    assert "Key not found" in caught.value.message
    assert KEY not in caught.value.message and KEY not in str(caught.value)
    assert caught.value.partial is None


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (402, "not_enough_credits"),
        (403, "account_under_validation"),
        (403, "permission_denied"),
    ],
)
async def test_account_problems_pause_as_auth_failed(status: int, code: str) -> None:
    vendor = Vendor(lambda r: error(status, code, "Brevo says no"))
    conn, _ = connector(vendor)
    with pytest.raises(AuthFailed) as caught:
        await conn.push([contact(1)])
    assert caught.value.http_status == status
    assert code in caught.value.message and "Brevo says no" in caught.value.message


async def test_404_is_misconfigured() -> None:
    vendor = Vendor(lambda r: httpx.Response(404, text="Not Found"))
    conn, _ = connector(vendor)
    with pytest.raises(Misconfigured) as caught:
        await conn.push([contact(1)])
    assert "BREVO_API_BASE_URL" in caught.value.message


async def test_missing_key_is_misconfigured_before_any_request() -> None:
    vendor = Vendor(lambda r: httpx.Response(204))
    conn, _ = connector(vendor, api_key=None)
    with pytest.raises(Misconfigured, match="BREVO_API_KEY"):
        await conn.push([contact(1)])
    assert vendor.requests == []


@pytest.mark.parametrize(("header", "expected"), [("3", 3.0), (None, 1.0), ("0", 1.0)])
async def test_429_raises_rate_limited(header: str | None, expected: float) -> None:
    headers = {"x-sib-ratelimit-reset": header} if header is not None else {}
    vendor = Vendor(lambda r: httpx.Response(429, headers=headers, json={"message": "slow"}))
    conn, _ = connector(vendor)
    with pytest.raises(RateLimited) as caught:
        await conn.push([contact(1), contact(2)])
    assert caught.value.retry_after == pytest.approx(expected, abs=0.05)
    assert caught.value.partial is None  # nothing answered: the whole batch is not attempted


async def test_429_mid_push_stops_sending_and_keeps_finished_results() -> None:
    count = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal count
        count += 1
        if count == 6:
            return httpx.Response(429, headers={"x-sib-ratelimit-reset": "2"})
        return httpx.Response(201, json={"id": 1000 + count})

    vendor = Vendor(answer)
    conn, _ = connector(vendor)
    rows = [contact(n) for n in range(40)]

    with pytest.raises(RateLimited) as caught:
        await conn.push(rows)

    assert caught.value.retry_after == pytest.approx(2.0, abs=0.05)
    partial = caught.value.partial
    assert partial is not None and len(partial) == 40
    assert len(vendor.requests) < 40  # stopped sending
    answered = {body(r)["email"]: n + 1 for n, r in enumerate(vendor.requests)}
    for row, result in zip(rows, partial, strict=True):
        number = answered.get(row.email)
        if number is None or number == 6:
            assert result is None  # not attempted, or refused by the rate limit
        else:
            assert result == Ok(str(1000 + number), 201)
    assert sum(r is not None for r in partial) == len(vendor.requests) - 1


async def test_5xx_and_read_timeouts_retry_that_row_only() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        email = body(request)["email"]
        if email == "person1@example.com":
            return httpx.Response(503, text="upstream down")
        if email == "person2@example.com":
            raise httpx.ReadTimeout("timed out", request=request)
        if email == "person3@example.com":
            return httpx.Response(408, text="")
        return httpx.Response(201, json={"id": 4})

    conn, _ = connector(Vendor(answer))
    results = await conn.push([contact(1), contact(2), contact(3), contact(4)])
    assert results[0] == Retry("Brevo answered 503: upstream down", 503)
    assert isinstance(results[1], Retry) and "ReadTimeout" in results[1].reason
    assert results[2] == Retry("Brevo answered 408: HTTP 408", 408)
    assert results[3] == Ok("4", 201)


async def test_unreachable_brevo_is_transient() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    conn, _ = connector(Vendor(answer))
    with pytest.raises(Transient) as caught:
        await conn.push([contact(1), contact(2)])
    assert caught.value.partial is None
    assert "ConnectError" in caught.value.message


async def test_unreachable_after_some_answers_carries_them() -> None:
    # Both requests are in flight before person2's fails (an event, not a delay): person1's
    # answer, whenever it comes, is carried in `partial`.
    person1_in_flight = asyncio.Event()

    async def answer(request: httpx.Request) -> httpx.Response:
        if body(request)["email"] == "person2@example.com":
            await asyncio.wait_for(person1_in_flight.wait(), 10)
            raise httpx.ConnectTimeout("connect timeout", request=request)
        person1_in_flight.set()
        return httpx.Response(204)

    conn, _ = connector(Vendor(answer))
    with pytest.raises(Transient) as caught:
        await conn.push([contact(1), contact(2)])
    assert caught.value.partial == [Ok("person1@example.com", 204), None]


@pytest.mark.parametrize("longer_first", [False, True])
async def test_of_two_rate_limits_the_longer_wait_is_raised(longer_first: bool) -> None:
    # Both requests are in flight before either answers (a barrier, not a delay); then one
    # answers and the other only once the first answer was read, in both orders.
    arrived: list[str] = []
    both_in_flight = asyncio.Event()
    first_read = asyncio.Event()
    reset = {"person1@example.com": "1", "person2@example.com": "3600"}
    first = "person2@example.com" if longer_first else "person1@example.com"

    async def answer(request: httpx.Request) -> httpx.Response:
        email = body(request)["email"]
        arrived.append(email)
        if len(arrived) == 2:
            both_in_flight.set()
        await asyncio.wait_for(both_in_flight.wait(), 10)
        headers = {"x-sib-ratelimit-reset": reset[email]}
        if email == first:
            return httpx.Response(429, headers=headers, stream=_Signalling(first_read))
        await asyncio.wait_for(first_read.wait(), 10)
        return httpx.Response(429, headers=headers)

    conn, _ = connector(Vendor(answer))
    with pytest.raises(RateLimited) as caught:
        await conn.push([contact(1), contact(2)])
    assert caught.value.retry_after == pytest.approx(3600, abs=0.05)


class _Signalling(httpx.AsyncByteStream):
    """An empty answer body that sets `read` once the client has read it."""

    def __init__(self, read: asyncio.Event) -> None:
        self.read = read

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b""
        self.read.set()


# -- fan-out and pacing --------------------------------------------------------------------------


async def test_single_upserts_run_concurrently() -> None:
    in_flight = 0
    peak = 0
    gate = asyncio.Event()

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if peak >= 5:
            gate.set()
        await asyncio.wait_for(gate.wait(), timeout=2)
        in_flight -= 1
        return httpx.Response(204)

    conn, _ = connector(Vendor(answer))
    results = await conn.push([contact(n) for n in range(10)])
    assert peak >= 5
    assert all(isinstance(r, Ok) for r in results)


async def test_rows_with_the_same_email_go_one_after_the_other() -> None:
    in_flight: dict[str, int] = {}
    order: list[str] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        sent = body(request)
        email = sent["email"].lower()
        in_flight[email] = in_flight.get(email, 0) + 1
        assert in_flight[email] == 1, "two upserts of one email in flight"
        order.append(sent["attributes"].get("FIRSTNAME", ""))
        await asyncio.sleep(0.01)
        in_flight[email] -= 1
        return httpx.Response(204)

    conn, _ = connector(Vendor(answer))
    rows = [
        contact(1, email="same@example.com", name="First"),
        contact(2, email="other@example.com", name="Other"),
        contact(3, email="SAME@example.com", name="Second"),
    ]
    assert len(await conn.push(rows)) == 3
    assert order.index("First") < order.index("Second")


async def test_pushes_share_one_rate_limiter() -> None:
    vendor = Vendor(lambda r: httpx.Response(204))
    conn, _ = connector(vendor, rate_limit_per_second=50)
    started = time.monotonic()
    # 97% of 50 per second, a quarter of a second's 50 let through at once: 30 requests take
    # ~0.36 s across both pushes (0.05 s each if each push had a limiter of its own).
    await asyncio.gather(
        conn.push([contact(n) for n in range(15)]),
        conn.push([contact(n) for n in range(15, 30)]),
    )
    assert time.monotonic() - started >= 0.3
    assert len(vendor.requests) == 30


# -- import --------------------------------------------------------------------------------------


def import_vendor(
    statuses: list[str], on_import: httpx.Response | None = None, single: int = 204
) -> Vendor:
    polls = iter(statuses)

    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v3/contacts/import":
            return on_import or httpx.Response(202, json={"processId": 78})
        if path == "/v3/processes/78":
            return httpx.Response(200, json={"id": 78, "name": "IMPORTUSER", "status": next(polls)})
        if path == "/v3/contacts":
            return httpx.Response(single)
        return httpx.Response(500)

    return Vendor(answer)


async def test_import_path_sends_one_import_and_polls_until_completed() -> None:
    vendor = import_vendor(["queued", "in_process", "completed"])
    sleeps = Sleeps()
    conn, _ = connector(vendor, sleeps, import_threshold=3, import_poll_seconds=1.5)
    rows = [contact(1, external_id="555"), contact(2), contact(3, phone_number=None)]

    results = await conn.push(rows)

    assert results == [
        Ok("555", 202),
        Ok("person2@example.com", 202),
        Ok("person3@example.com", 202),
    ]
    assert vendor.paths() == ["POST /v3/contacts/import"] + ["GET /v3/processes/78"] * 3
    request = vendor.requests[0]
    assert request.headers["api-key"] == KEY
    sent = body(request)
    assert sent == {
        "jsonBody": [
            {"email": r.email, "attributes": conn.contact_body(r)["attributes"]} for r in rows
        ],
        "listIds": [7],
        "updateExistingContacts": True,
        "emptyContactsAttributes": False,
        "disableNotification": True,
    }
    assert all(r.headers["api-key"] == KEY for r in vendor.requests[1:])
    assert sleeps.calls == [1.5, 1.5, 1.5]


async def test_below_threshold_or_without_list_sends_singles() -> None:
    vendor = import_vendor([])
    conn, _ = connector(vendor, import_threshold=3)
    await conn.push([contact(1), contact(2)])
    assert vendor.paths() == ["POST /v3/contacts"] * 2

    vendor = import_vendor([])
    conn, _ = connector(vendor, import_threshold=2, list_id=None)
    await conn.push([contact(1), contact(2)])
    assert vendor.paths() == ["POST /v3/contacts"] * 2


async def test_invalid_and_repeated_emails_go_single_after_the_import() -> None:
    vendor = import_vendor(["completed"], single=201)
    conn, _ = connector(vendor, import_threshold=3)
    rows = [
        contact(1),
        contact(2, email="not an email"),
        contact(3, email="PERSON1@example.com"),
        contact(4),
    ]
    # Singles answer 201 with no id here, so they fall back to the email.
    results = await conn.push(rows)

    assert vendor.paths()[:2] == ["POST /v3/contacts/import", "GET /v3/processes/78"]
    imported = [item["email"] for item in body(vendor.requests[0])["jsonBody"]]
    assert imported == ["person1@example.com", "person4@example.com"]
    singles = [body(r)["email"] for r in vendor.requests[2:]]
    assert sorted(singles) == ["PERSON1@example.com", "not an email"]
    assert results[0] == Ok("person1@example.com", 202)
    assert results[3] == Ok("person4@example.com", 202)
    assert results[1] == Ok("not an email", 201)
    assert results[2] == Ok("PERSON1@example.com", 201)


async def test_a_phone_seen_earlier_in_the_import_goes_single() -> None:
    vendor = import_vendor(["completed"])
    conn, _ = connector(vendor, import_threshold=2)
    shared = "+1 415 555 2671"
    rows = [contact(1, phone_number=shared), contact(2, phone_number=shared), contact(3)]
    await conn.push(rows)
    imported = [item["email"] for item in body(vendor.requests[0])["jsonBody"]]
    assert imported == ["person1@example.com", "person3@example.com"]
    assert [body(r)["email"] for r in vendor.requests[2:]] == ["person2@example.com"]


@pytest.mark.parametrize(
    "refusal",
    [
        error(400, "invalid_parameter", "We could not find any valid email"),
        httpx.Response(500, text="oops"),
        httpx.Response(200, json={"unexpected": True}),
    ],
)
async def test_import_refused_falls_back_to_singles(refusal: httpx.Response) -> None:
    vendor = import_vendor([], on_import=refusal)
    conn, _ = connector(vendor, import_threshold=2)
    results = await conn.push([contact(1), contact(2)])
    assert vendor.paths() == ["POST /v3/contacts/import"] + ["POST /v3/contacts"] * 2
    assert results == [Ok("person1@example.com", 204), Ok("person2@example.com", 204)]


async def test_import_transport_error_falls_back_to_singles() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/import"):
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(204)

    vendor = Vendor(answer)
    conn, _ = connector(vendor, import_threshold=2)
    results = await conn.push([contact(1), contact(2)])
    assert [r for r in results if not isinstance(r, Ok)] == []
    assert vendor.paths().count("POST /v3/contacts") == 2


@pytest.mark.parametrize(
    ("statuses", "sleeps_made"),
    [
        # Never completes: every 2 s until the 10 s timeout, then every 90 s until the hard
        # limit of 280 s, then the rows go one by one.
        (["queued"] * 100, [2.0] * 5 + [90.0] * 3),
        (["failed"], [2.0]),  # a status that is not progress
    ],
)
async def test_import_that_does_not_complete_falls_back(
    statuses: list[str], sleeps_made: list[float]
) -> None:
    vendor = import_vendor(statuses)
    sleeps = Sleeps()
    conn, _ = connector(
        vendor,
        sleeps,
        import_threshold=2,
        import_timeout_seconds=10,
        import_hard_timeout_seconds=280,
    )
    results = await conn.push([contact(1), contact(2)])
    assert vendor.paths() == (
        ["POST /v3/contacts/import"]
        + ["GET /v3/processes/78"] * len(sleeps_made)
        + ["POST /v3/contacts"] * 2
    )
    assert sleeps.calls == sleeps_made
    assert all(isinstance(r, Ok) and r.http_status == 204 for r in results)


async def test_import_still_running_after_the_timeout_is_polled_until_it_completes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 20: an import slower than BREVO_IMPORT_TIMEOUT_SECONDS is not sent again row by
    row; it is polled, less often, until it completes."""
    vendor = import_vendor(["queued"] * 5 + ["in_process"] * 3 + ["completed"])
    sleeps = Sleeps()
    conn, _ = connector(vendor, sleeps, import_threshold=2, import_timeout_seconds=10)
    with caplog.at_level(logging.WARNING, logger="crmsync.connectors.brevo"):
        results = await conn.push([contact(1), contact(2)])
    assert results == [Ok("person1@example.com", 202), Ok("person2@example.com", 202)]
    assert "POST /v3/contacts" not in vendor.paths()
    assert sleeps.calls == [2.0] * 5 + [90.0] * 4
    assert "still running after 10 s; polling it every 90 s" in caplog.text


async def test_polls_wait_for_the_reset_when_processes_window_is_used_up() -> None:
    """/processes has its own small limit (100 an hour): 0 left means the next poll waits
    for Brevo's reset, instead of bouncing off a 429."""
    polls = iter(
        [
            httpx.Response(
                200,
                json={"id": 78, "status": "queued"},
                headers={"x-sib-ratelimit-remaining": "0", "x-sib-ratelimit-reset": "1200"},
            ),
            httpx.Response(200, json={"id": 78, "status": "completed"}),
        ]
    )

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/import"):
            return httpx.Response(202, json={"processId": 78})
        return next(polls)

    sleeps = Sleeps()
    conn, _ = connector(
        Vendor(answer), sleeps, import_threshold=1, import_hard_timeout_seconds=7200
    )
    assert await conn.push([contact(1)]) == [Ok("person1@example.com", 202)]
    assert sleeps.calls == [2.0, 1200.0]


async def test_unknown_process_falls_back() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/import"):
            return httpx.Response(202, json={"processId": 78})
        if request.url.path.startswith("/v3/processes"):
            return error(404, "invalid_parameter", "processId is invalid")
        return httpx.Response(204)

    vendor = Vendor(answer)
    conn, _ = connector(vendor, import_threshold=1)
    assert await conn.push([contact(1)]) == [Ok("person1@example.com", 204)]
    assert vendor.paths()[-1] == "POST /v3/contacts"


async def test_polling_survives_5xx_and_waits_on_429() -> None:
    polls = iter(
        [
            httpx.Response(502),
            httpx.Response(429, headers={"x-sib-ratelimit-reset": "4"}),
            httpx.Response(200, json={"id": 78, "name": "IMPORTUSER", "status": "completed"}),
        ]
    )

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/import"):
            return httpx.Response(202, json={"processId": 78})
        return next(polls)

    sleeps = Sleeps()
    conn, _ = connector(Vendor(answer), sleeps, import_threshold=1)
    assert await conn.push([contact(1)]) == [Ok("person1@example.com", 202)]
    # 2 s between polls; after the 429, Brevo's reset (4 s) instead.
    assert sleeps.calls == [2.0, 2.0, 4.0]


async def test_import_auth_failure_and_rate_limit_raise() -> None:
    vendor = import_vendor([], on_import=error(401, "unauthorized", "Key not found"))
    conn, _ = connector(vendor, import_threshold=2)
    with pytest.raises(AuthFailed):
        await conn.push([contact(1), contact(2)])
    assert vendor.paths() == ["POST /v3/contacts/import"]

    vendor = import_vendor([], on_import=httpx.Response(429))
    conn, _ = connector(vendor, import_threshold=2)
    with pytest.raises(RateLimited) as caught:
        await conn.push([contact(1), contact(2)])
    assert caught.value.partial is None
    assert vendor.paths() == ["POST /v3/contacts/import"]


async def test_large_imports_are_chunked_by_serialized_size() -> None:
    vendor = import_vendor(["completed"] * 10)
    conn, _ = connector(vendor, import_threshold=2)
    conn.import_max_bytes = 2_000
    rows = [contact(n) for n in range(12)]

    results = await conn.push(rows)

    imports = [r for r in vendor.requests if r.url.path.endswith("/import")]
    assert len(imports) > 1
    assert all(len(r.content) <= 2_000 for r in imports)
    sent = [item["email"] for r in imports for item in body(r)["jsonBody"]]
    assert sent == [r.email for r in rows]
    assert all(isinstance(r, Ok) for r in results)


async def test_rate_limit_during_second_chunk_keeps_the_first() -> None:
    imports = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal imports
        if request.url.path.endswith("/import"):
            imports += 1
            if imports == 2:
                return httpx.Response(429, headers={"x-sib-ratelimit-reset": "5"})
            return httpx.Response(202, json={"processId": 78})
        return httpx.Response(200, json={"id": 78, "name": "IMPORTUSER", "status": "completed"})

    conn, _ = connector(Vendor(answer), import_threshold=2)
    conn.import_max_bytes = 2_000
    rows = [contact(n) for n in range(12)]
    with pytest.raises(RateLimited) as caught:
        await conn.push(rows)
    partial = caught.value.partial
    assert partial is not None
    done = [r for r in partial if r is not None]
    assert done and all(isinstance(r, Ok) for r in done)
    assert partial[-1] is None


def test_importable_email() -> None:
    for good in ["a@example.com", "first.last+tag@sub.example.co.uk", "o'neil@example.org"]:
        assert importable_email(good), good
    for bad in ["", "a", "a@", "@example.com", "a@@example.com", "a b@example.com",
                "a@example", "a..b@example.com", ".a@example.com", "a@-example.com",
                "jos\u00e9@example.com", "a@example.c0m", "x" * 65 + "@example.com"]:  # fmt: skip
        assert not importable_email(bad), bad


# -- client lifecycle and secrets ----------------------------------------------------------------


async def test_aclose_closes_only_its_own_client() -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(Vendor(lambda r: httpx.Response(204))))
    conn = BrevoConnector(make_settings(), client)
    await conn.aclose()
    assert not client.is_closed
    await client.aclose()

    own = BrevoConnector(make_settings())
    inner = own._client
    assert inner.headers["user-agent"] == USER_AGENT
    assert inner.timeout.connect == 5.0 and inner.timeout.read == 30.0
    await own.aclose()
    assert inner.is_closed


async def test_the_key_never_reaches_logs_errors_or_results(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    def echo(status: int) -> Callable[[httpx.Request], httpx.Response]:
        # A vendor that echoes the key back must not get it into our messages either.
        def answer(request: httpx.Request) -> httpx.Response:
            return error(status, "unauthorized", f"key {request.headers['api-key']} refused")

        return answer

    messages: list[str] = []
    for status in (401, 403):
        conn, _ = connector(Vendor(echo(status)))
        with pytest.raises(AuthFailed) as caught:
            await conn.push([contact(1)])
        messages += [caught.value.message, str(caught.value)]

    conn, _ = connector(Vendor(echo(400)))
    messages += [str(r) for r in await conn.push([contact(1)])]
    conn, _ = connector(Vendor(echo(503)))
    messages += [str(r) for r in await conn.push([contact(1)])]

    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused {request.headers['api-key']}", request=request)

    conn, _ = connector(Vendor(broken))
    with pytest.raises(Transient) as transient:
        await conn.push([contact(1)])
    messages.append(transient.value.message)

    def import_echo(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/import"):
            return echo(400)(request)
        return httpx.Response(204)

    conn, _ = connector(Vendor(import_echo), import_threshold=1)
    messages += [str(r) for r in await conn.push([contact(1)])]

    assert caplog.records, "expected some logging"
    for record in caplog.records:
        assert KEY not in record.getMessage()
    for message in messages:
        assert KEY not in message
    assert any("[redacted]" in m for m in messages)
