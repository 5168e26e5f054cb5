"""The optional push log: every accepted contact write with its time and sender."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from crmsync.sandbox import SandboxConfig, SandboxServer

UPSERT = "/hubspot/crm/v3/objects/contacts/batch/upsert"
SENDER = "X-Crmsync-Worker"


def _inputs(*emails: str) -> dict[str, object]:
    return {"inputs": [{"id": e, "idProperty": "email", "properties": {}} for e in emails]}


@pytest.fixture(scope="module")
def logged() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(no_rate_limits=True, push_log=True)) as server:
        yield server


@pytest.fixture
def sb(logged: SandboxServer) -> SandboxServer:
    logged.reset(faults=True)
    return logged


def test_writes_are_logged_with_time_and_sender(sb: SandboxServer) -> None:
    hubspot = {**sb.auth_headers("hubspot"), SENDER: "host:1:aaaaaa"}
    before = time.time()
    with httpx.Client(base_url=sb.url) as http:
        r = http.post(UPSERT, json=_inputs("A@example.com", "b@example.com"), headers=hubspot)
        assert r.is_success
        anonymous = sb.auth_headers("hubspot")
        assert http.post(UPSERT, json=_inputs("a@example.com"), headers=anonymous).is_success
        sb.set_faults("hubspot", error_rate=1.0)
        assert http.post(UPSERT, json=_inputs("c@example.com"), headers=hubspot).status_code >= 500
    after = time.time()
    pushes = sb.pushes("hubspot")
    assert [(p["email"], p["sender"]) for p in pushes] == [
        ("a@example.com", "host:1:aaaaaa"),
        ("b@example.com", "host:1:aaaaaa"),
        ("a@example.com", ""),  # no header, still logged; the refused request is not
    ]
    assert all(before <= p["at"] <= after for p in pushes)
    assert pushes[0]["at"] <= pushes[2]["at"]
    assert sb.pushes("n8n") == []
    sb.reset()
    assert sb.pushes("hubspot") == []


def test_a_brevo_import_is_logged_when_applied_with_its_sender(sb: SandboxServer) -> None:
    sb.set_faults("brevo", import_queued_ms=100, import_processing_ms=100)
    headers = {**sb.auth_headers("brevo"), SENDER: "host:2:bbbbbb"}
    body = {"jsonBody": [{"email": "x@example.com"}, {"email": "y@example.com"}], "listIds": [7]}
    sent = time.time()
    r = httpx.post(f"{sb.brevo_url}/contacts/import", json=body, headers=headers)
    assert r.status_code == 202
    deadline = time.monotonic() + 10
    while len(sb.contacts("brevo")) < 2:
        assert time.monotonic() < deadline, "the import never completed"
        time.sleep(0.02)
    pushes = sb.pushes("brevo")
    assert [(p["email"], p["sender"]) for p in pushes] == [
        ("x@example.com", "host:2:bbbbbb"),
        ("y@example.com", "host:2:bbbbbb"),
    ]
    assert all(p["at"] >= sent + 0.2 for p in pushes)  # when the import was applied


def test_the_push_log_is_off_by_default() -> None:
    with SandboxServer(SandboxConfig(no_rate_limits=True)) as sb:
        r = sb.control.get("/hubspot/pushes")
        assert r.status_code == 400 and "push_log" in r.json()["error"]
        assert sb.sandbox.hubspot.store.pushes is None
        assert sb.control.get("/zoho/pushes").status_code == 404
