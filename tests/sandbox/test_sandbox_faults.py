"""Fault injection and the /_sandbox control API, across vendors."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from crmsync.sandbox import SandboxConfig, SandboxServer, auth_headers

CONFIG = SandboxConfig()

# One cheap authenticated write per vendor: (method, path, json body).
CALLS: dict[str, tuple[str, str, Any]] = {
    "brevo": ("POST", "/brevo/v3/contacts", {"email": "f@example.com", "updateEnabled": True}),
    "hubspot": (
        "POST",
        "/hubspot/crm/v3/objects/contacts/batch/upsert",
        {"inputs": [{"id": "f@example.com", "idProperty": "email", "properties": {}}]},
    ),
    "mautic": ("POST", "/mautic/api/contacts/batch/new", [{"email": "f@example.com"}]),
    "n8n": ("POST", "/n8n/webhook/crmsync", {"email": "f@example.com"}),
}


def call(http: httpx.Client, crm: str) -> httpx.Response:
    method, path, body = CALLS[crm]
    return http.request(method, path, json=body, headers=auth_headers(CONFIG, crm))


@pytest.mark.parametrize("crm", list(CALLS))
def test_error_rate_one_gives_vendor_5xx(sb: SandboxServer, http: httpx.Client, crm: str) -> None:
    sb.set_faults(crm, error_rate=1.0)
    statuses = [call(http, crm) for _ in range(12)]
    assert {r.status_code for r in statuses} <= {500, 502, 503}
    assert len({r.status_code for r in statuses}) > 1  # a mix, from the seeded generator
    status, body = statuses[0].status_code, statuses[0].json()
    if crm == "brevo":
        assert set(body) == {"code", "message"}
    elif crm == "hubspot":
        assert (body["status"], body["category"]) == ("error", "INTERNAL_ERROR")
        assert body["correlationId"]
    elif crm == "mautic":
        assert body["errors"][0]["code"] == status
    else:
        assert body["code"] == status
    stats = sb.stats()[crm]
    assert stats["5xx"] == 12
    assert stats["2xx"] == 0
    assert sb.contacts(crm) == []


# One cheap authenticated read per vendor that has one (n8n's webhook only takes writes).
READS = {
    "brevo": "/brevo/v3/contacts/attributes",
    "hubspot": "/hubspot/crm/v3/properties/contacts",
    "mautic": "/mautic/api/fields/contact",
}


@pytest.mark.parametrize("crm", list(READS))
def test_faults_on_writes_leave_reads_alone(
    sb: SandboxServer, http: httpx.Client, crm: str
) -> None:
    sb.set_faults(crm, error_rate=1.0, faults_on="writes")
    read = http.get(READS[crm], headers=auth_headers(CONFIG, crm))
    assert read.status_code == 200, read.text
    assert call(http, crm).status_code in (500, 502, 503)


@pytest.mark.parametrize("crm", list(CALLS))
def test_bad_credentials_refuses_the_right_key(
    sb: SandboxServer, http: httpx.Client, crm: str
) -> None:
    assert call(http, crm).status_code < 300
    sb.set_faults(crm, bad_credentials=True)
    assert (
        call(http, crm).status_code
        == {"brevo": 401, "hubspot": 401, "mautic": 401, "n8n": 403}[crm]
    )
    sb.set_faults(crm, bad_credentials=False)
    assert call(http, crm).status_code < 300


@pytest.mark.parametrize("crm", list(CALLS))
def test_burst_429_answers_next_n_requests(sb: SandboxServer, http: httpx.Client, crm: str) -> None:
    sb.set_faults(crm, burst_429=2)
    statuses = [call(http, crm) for _ in range(3)]
    assert [r.status_code for r in statuses] == [429, 429, statuses[2].status_code]
    assert statuses[2].status_code < 300
    header = {
        "brevo": "x-sib-ratelimit-remaining",
        "hubspot": "x-hubspot-ratelimit-remaining",
        "mautic": "x-ratelimit-remaining",
        "n8n": None,  # n8n has no rate-limit headers
    }[crm]
    if header is not None:
        assert statuses[0].headers[header] == "0"
    assert sb.faults(crm)["burst_429"] == 0
    assert sb.stats()[crm]["429"] == 2


def test_latency_delays_answers(sb: SandboxServer, http: httpx.Client) -> None:
    sb.set_faults("hubspot", latency_ms=150)
    started = time.perf_counter()
    assert call(http, "hubspot").status_code == 200
    assert time.perf_counter() - started >= 0.15
    started = time.perf_counter()
    assert call(http, "brevo").status_code == 201  # other vendors are unaffected
    assert time.perf_counter() - started < 0.15


def test_timeout_answers_504_or_drops(sb: SandboxServer, http: httpx.Client) -> None:
    sb.set_faults("mautic", timeout_rate=1.0, timeout_ms=100)
    started = time.perf_counter()
    r = call(http, "mautic")
    assert r.status_code == 504
    assert time.perf_counter() - started >= 0.1
    assert r.json()["errors"][0]["code"] == 504

    sb.set_faults("mautic", timeout_action="drop")
    with pytest.raises(httpx.RemoteProtocolError):
        call(http, "mautic")
    stats = sb.stats()["mautic"]
    assert (stats["dropped"], stats["5xx"]) == (1, 1)
    assert sb.contacts("mautic") == []


def test_a_client_timeout_sees_the_hang(sb: SandboxServer) -> None:
    sb.set_faults("n8n", timeout_rate=1.0, timeout_ms=2000)
    with httpx.Client(base_url=sb.url, timeout=0.2) as short, pytest.raises(httpx.ReadTimeout):
        call(short, "n8n")


def test_faults_put_validation_and_get(sb: SandboxServer, http: httpx.Client) -> None:
    r = http.put("/_sandbox/hubspot/faults", json={"error_rate": 0.25, "latency_ms": 5})
    assert r.status_code == 200
    assert (r.json()["error_rate"], r.json()["latency_ms"]) == (0.25, 5.0)
    assert http.get("/_sandbox/hubspot/faults").json() == r.json()

    bad = [
        ({"nope": 1}, "unknown hubspot option 'nope'"),
        ({"error_rate": 2}, "must be <= 1.0"),
        ({"error_rate": "high"}, "must be a number"),
        ({"invalid_email_mode": "maybe"}, "must be one of multi_status, batch_400"),
        ([1, 2], "body must be a JSON object"),
    ]
    for body, message in bad:
        r = http.put("/_sandbox/hubspot/faults", json=body)
        assert r.status_code == 400
        assert message in r.json()["error"]
    # A rejected update applies nothing, even its valid keys.
    http.put("/_sandbox/hubspot/faults", json={"latency_ms": 9, "nope": 1})
    assert sb.faults("hubspot")["latency_ms"] == 5.0
    with pytest.raises(ValueError, match="unknown brevo option"):
        sb.set_faults("brevo", rate_limit_per_10s=1)
    unknown = http.get("/_sandbox/zoho/faults")
    assert unknown.status_code == 404
    assert "unknown CRM 'zoho'" in unknown.json()["error"]


def test_reset_clears_state_and_optionally_faults(sb: SandboxServer, http: httpx.Client) -> None:
    for crm in CALLS:
        assert call(http, crm).status_code < 300
    sb.set_faults("hubspot", latency_ms=1)
    assert all(len(sb.contacts(crm)) == 1 for crm in CALLS)

    assert http.post("/_sandbox/reset").status_code == 200
    stats = sb.stats()
    assert all(sb.contacts(crm) == [] for crm in CALLS)
    assert all(stats[crm]["requests"] == 0 for crm in CALLS)
    assert sb.faults("hubspot")["latency_ms"] == 1.0  # kept without ?faults=true

    assert http.post("/_sandbox/reset", params={"faults": "true"}).status_code == 200
    assert sb.faults("hubspot")["latency_ms"] == 0.0
    assert sb.faults("hubspot")["rate_limit_per_10s"] == 0  # the start value (no_rate_limits)

    call(http, "brevo")
    call(http, "mautic")
    assert http.post("/_sandbox/brevo/reset").status_code == 200
    assert sb.contacts("brevo") == []
    assert len(sb.contacts("mautic")) == 1


def test_stats_counters(sb: SandboxServer, http: httpx.Client) -> None:
    call(http, "hubspot")
    http.post(CALLS["hubspot"][1], json={"inputs": "nope"}, headers=auth_headers(CONFIG, "hubspot"))
    http.post(CALLS["hubspot"][1], json={})  # 401
    http.get("/hubspot/not/a/route")
    sb.set_faults("hubspot", burst_429=1)
    call(http, "hubspot")
    stats = sb.stats()["hubspot"]
    assert stats["requests"] == 5
    assert (stats["2xx"], stats["4xx"], stats["429"], stats["5xx"]) == (1, 3, 1, 0)
    assert stats["contacts_received"] == 1
    assert stats["contacts_stored"] == 1
    assert stats["by_endpoint"] == {
        "POST /crm/v3/objects/contacts/batch/upsert": 4,
        "unknown path": 1,
    }
    assert stats["options"]["burst_429"] == 0
    assert stats["in_flight"] == 0


async def test_peak_concurrency_is_measured(sb: SandboxServer) -> None:
    sb.set_faults("brevo", latency_ms=300)
    headers = auth_headers(CONFIG, "brevo")
    async with httpx.AsyncClient(base_url=sb.url) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    "/brevo/v3/contacts", json={"email": f"p{i}@example.com"}, headers=headers
                )
                for i in range(5)
            )
        )
    assert [r.status_code for r in responses] == [201] * 5
    stats = sb.stats()["brevo"]
    assert stats["peak_concurrent"] == 5
    assert stats["in_flight"] == 0


def test_seed_makes_faults_repeatable() -> None:
    def statuses(seed: int) -> list[int]:
        config = SandboxConfig(seed=seed, faults={"hubspot": {"error_rate": 0.5}})
        with SandboxServer(config) as server, httpx.Client(base_url=server.url) as http:
            return [call(http, "hubspot").status_code for _ in range(16)]

    first = statuses(3)
    assert statuses(3) == first
    assert {200} < set(first)  # a mix of successes and errors
    assert statuses(4) != first


@pytest.mark.parametrize("crm", list(CALLS))
def test_an_outage_fails_every_request_until_switched_off(
    sb: SandboxServer, http: httpx.Client, crm: str
) -> None:
    sb.set_faults(crm, outage="5xx")
    refused = [call(http, crm) for _ in range(5)]
    assert {r.status_code for r in refused} == {503}
    assert sb.contacts(crm) == []
    sb.set_faults(crm, outage="drop")
    # The connection is cut mid-answer: httpx sees it as one or the other, by timing.
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        call(http, crm)
    assert sb.contacts(crm) == []
    assert sb.stats()[crm]["dropped"] == 1
    sb.set_faults(crm, outage="off")
    assert call(http, crm).status_code < 300
    with pytest.raises(ValueError, match="outage"):
        sb.set_faults(crm, outage="sometimes")


def test_the_request_log_records_every_request_with_its_status() -> None:
    with (
        SandboxServer(SandboxConfig(request_log=True, no_rate_limits=True)) as server,
        httpx.Client(base_url=server.url, timeout=10) as http,
    ):
        before = time.time()
        assert call(http, "hubspot").status_code == 200
        server.set_faults("hubspot", outage="5xx")
        assert call(http, "hubspot").status_code == 503
        log = server.requests("hubspot")
        assert [(r["endpoint"], r["status"]) for r in log] == [
            ("POST /crm/v3/objects/contacts/batch/upsert", 200),
            ("POST /crm/v3/objects/contacts/batch/upsert", 503),
        ]
        assert all(before <= r["at"] <= time.time() for r in log)
        server.reset()
        assert server.requests("hubspot") == []
    with SandboxServer(SandboxConfig()) as server:
        assert server.control.get("/hubspot/requests").status_code == 400
