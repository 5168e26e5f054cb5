"""HubSpot fake over real HTTP: batch upsert 200/207/400, create 409, properties, auth, limits."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from crmsync.sandbox import ManualClock, SandboxConfig, SandboxServer, auth_headers

HUBSPOT = auth_headers(SandboxConfig(), "hubspot")
UPSERT = "/hubspot/crm/v3/objects/contacts/batch/upsert"
CREATE = "/hubspot/crm/v3/objects/contacts"
PROPERTIES = "/hubspot/crm/v3/properties/contacts"


def upsert_input(email: str, **properties: Any) -> dict[str, Any]:
    return {"id": email, "idProperty": "email", "properties": {"firstname": "Ann", **properties}}


def test_batch_upsert_creates_then_updates(sb: SandboxServer, http: httpx.Client) -> None:
    inputs = [upsert_input(f"u{i}@example.com", scrapersky_has_gmail=True) for i in range(3)]
    first = http.post(UPSERT, json={"inputs": inputs}, headers=HUBSPOT)
    assert first.status_code == 200
    body = first.json()
    assert body["status"] == "COMPLETE"
    assert {"startedAt", "completedAt"} <= body.keys()
    assert [r["new"] for r in body["results"]] == [True, True, True]
    result = body["results"][0]
    assert result["id"].isdigit()
    assert result["archived"] is False
    assert result["properties"]["email"] == "u0@example.com"
    assert result["properties"]["scrapersky_has_gmail"] == "true"  # values are strings
    assert result["properties"]["hs_object_id"] == result["id"]
    assert result["createdAt"].endswith("Z")

    # Email matching is case-insensitive: the same three contacts, updated.
    again = [upsert_input(f"U{i}@Example.COM", lastname="Lee") for i in range(3)]
    second = http.post(UPSERT, json={"inputs": again}, headers=HUBSPOT)
    assert second.status_code == 200
    assert [r["new"] for r in second.json()["results"]] == [False, False, False]
    assert [r["id"] for r in second.json()["results"]] == [r["id"] for r in body["results"]]

    stored = sb.contacts("hubspot")
    assert len(stored) == 3
    assert stored[0]["push_count"] == 2
    assert stored[0]["fields"] == {"firstname": "Ann", "lastname": "Lee", "email": "u0@example.com"}
    assert sb.stats()["hubspot"]["contacts_received"] == 6


def test_invalid_email_gives_207_by_default(sb: SandboxServer, http: httpx.Client) -> None:
    inputs = [
        upsert_input("ok@example.com"),
        upsert_input("broken@"),
        upsert_input("b@example.com"),
    ]
    r = http.post(UPSERT, json={"inputs": inputs}, headers=HUBSPOT)
    assert r.status_code == 207
    body = r.json()
    assert body["numErrors"] == 1
    [error] = body["errors"]
    assert error["status"] == "error"
    assert error["category"] == "VALIDATION_ERROR"
    assert error["context"] == {"ids": ["broken@"]}
    assert error["message"].startswith("Property values were not valid: ")
    detail = json.loads(error["message"].removeprefix("Property values were not valid: "))
    assert detail[0]["error"] == "INVALID_EMAIL"
    assert sorted(r["properties"]["email"] for r in body["results"]) == [
        "b@example.com",
        "ok@example.com",
    ]
    assert len(sb.contacts("hubspot")) == 2


def test_invalid_email_batch_400_mode(sb: SandboxServer, http: httpx.Client) -> None:
    sb.set_faults("hubspot", invalid_email_mode="batch_400")
    inputs = [upsert_input("ok@example.com"), upsert_input("broken@")]
    r = http.post(UPSERT, json={"inputs": inputs}, headers=HUBSPOT)
    assert r.status_code == 400
    assert r.json()["category"] == "VALIDATION_ERROR"
    assert "Email address broken@ is invalid" in r.json()["message"]
    assert sb.contacts("hubspot") == []


def test_more_than_100_inputs_is_rejected(sb: SandboxServer, http: httpx.Client) -> None:
    inputs = [upsert_input(f"u{i}@example.com") for i in range(101)]
    r = http.post(UPSERT, json={"inputs": inputs}, headers=HUBSPOT)
    assert r.status_code == 400
    assert r.json()["message"] == (
        "The maximum number of inputs supported in a batch is 100. "
        "Please reduce the number of items and try again"
    )
    assert r.json()["category"] == "VALIDATION_ERROR"
    assert sb.contacts("hubspot") == []
    ok = http.post(UPSERT, json={"inputs": inputs[:100]}, headers=HUBSPOT)
    assert ok.status_code == 200
    assert len(ok.json()["results"]) == 100


def test_unknown_property_fails_whole_batch(sb: SandboxServer, http: httpx.Client) -> None:
    inputs = [upsert_input("a@example.com"), upsert_input("b@example.com", favourite_color="red")]
    r = http.post(UPSERT, json={"inputs": inputs}, headers=HUBSPOT)
    assert r.status_code == 400
    assert r.json()["category"] == "VALIDATION_ERROR"
    detail = json.loads(r.json()["message"].removeprefix("Property values were not valid: "))
    assert [(d["name"], d["error"]) for d in detail] == [
        ("favourite_color", "PROPERTY_DOESNT_EXIST")
    ]
    assert sb.contacts("hubspot") == []


def test_duplicate_emails_in_one_batch(sb: SandboxServer, http: httpx.Client) -> None:
    inputs = [upsert_input("a@example.com"), upsert_input("A@example.com")]
    r = http.post(UPSERT, json={"inputs": inputs}, headers=HUBSPOT)
    assert r.status_code == 400
    assert "Duplicate IDs" in r.json()["message"]
    assert sb.contacts("hubspot") == []


def test_id_property_must_be_email(http: httpx.Client) -> None:
    r = http.post(
        UPSERT,
        json={"inputs": [{"id": "a", "idProperty": "firstname", "properties": {}}]},
        headers=HUBSPOT,
    )
    assert r.status_code == 400
    assert r.json()["message"].startswith("Unable to perform update/upsert by non-unique 0-1")


def test_create_then_conflict_then_read_and_patch(http: httpx.Client) -> None:
    body = {"properties": {"email": "solo@example.com", "firstname": "Solo"}, "associations": []}
    created = http.post(CREATE, json=body, headers=HUBSPOT)
    assert created.status_code == 201
    contact_id = created.json()["id"]
    assert created.json()["properties"]["firstname"] == "Solo"

    conflict = http.post(CREATE, json=body, headers=HUBSPOT)
    assert conflict.status_code == 409
    assert conflict.json()["category"] == "CONFLICT"
    assert conflict.json()["message"] == f"Contact already exists. Existing ID: {contact_id}"

    by_id = http.get(f"{CREATE}/{contact_id}", headers=HUBSPOT)
    by_email = http.get(
        f"{CREATE}/SOLO@example.com", params={"idProperty": "email"}, headers=HUBSPOT
    )
    assert by_id.json()["id"] == by_email.json()["id"] == contact_id

    patched = http.patch(
        f"{CREATE}/{contact_id}", json={"properties": {"lastname": "Han"}}, headers=HUBSPOT
    )
    assert patched.status_code == 200
    assert patched.json()["properties"]["firstname"] == "Solo"
    assert patched.json()["properties"]["lastname"] == "Han"
    assert http.get(f"{CREATE}/999999", headers=HUBSPOT).status_code == 404

    invalid = http.post(CREATE, json={"properties": {"email": "x@"}}, headers=HUBSPOT)
    assert invalid.status_code == 400
    assert "INVALID_EMAIL" in invalid.json()["message"]


def test_properties_list_and_create(http: httpx.Client) -> None:
    listed = http.get(PROPERTIES, headers=HUBSPOT)
    assert listed.status_code == 200
    names = {p["name"] for p in listed.json()["results"]}
    assert {"email", "firstname", "lastname", "phone"} <= names
    assert {
        "scrapersky_domain_id",
        "scrapersky_page_id",
        "scrapersky_email_type",
        "scrapersky_source_url",
        "scrapersky_has_gmail",
    } <= names
    sample = listed.json()["results"][0]
    assert {"name", "label", "type", "fieldType", "groupName"} <= sample.keys()

    new = {
        "name": "favourite_color",
        "label": "Favourite colour",
        "type": "string",
        "fieldType": "text",
        "groupName": "contactinformation",
    }
    created = http.post(PROPERTIES, json=new, headers=HUBSPOT)
    assert created.status_code == 201
    assert created.json()["name"] == "favourite_color"
    assert http.get(f"{PROPERTIES}/favourite_color", headers=HUBSPOT).status_code == 200
    again = http.post(PROPERTIES, json=new, headers=HUBSPOT)
    assert again.status_code == 409
    incomplete = http.post(PROPERTIES, json={"name": "x"}, headers=HUBSPOT)
    assert incomplete.status_code == 400
    assert "label" in incomplete.json()["message"]
    # The new property is usable right away.
    r = http.post(
        UPSERT,
        json={"inputs": [upsert_input("c@example.com", favourite_color="red")]},
        headers=HUBSPOT,
    )
    assert r.status_code == 200


def test_without_custom_properties_they_must_be_created_first() -> None:
    with (
        SandboxServer(SandboxConfig()) as sb,
        httpx.Client(base_url=sb.url) as http,
    ):
        names = {p["name"] for p in http.get(PROPERTIES, headers=HUBSPOT).json()["results"]}
        assert "scrapersky_domain_id" not in names
        body = {"inputs": [upsert_input("a@example.com", scrapersky_domain_id="d-1")]}
        missing = http.post(UPSERT, json=body, headers=HUBSPOT)
        assert missing.status_code == 400
        assert "scrapersky_domain_id" in missing.json()["message"]
        assert "PROPERTY_DOESNT_EXIST" in missing.json()["message"]
        prop = {
            "name": "scrapersky_domain_id",
            "label": "Domain",
            "type": "string",
            "fieldType": "text",
            "groupName": "contactinformation",
        }
        assert http.post(PROPERTIES, json=prop, headers=HUBSPOT).status_code == 201
        assert http.post(UPSERT, json=body, headers=HUBSPOT).status_code == 200


@pytest.mark.parametrize("header", [None, "Bearer wrong", "pat-na1-sandbox-token"])
def test_auth_failures(http: httpx.Client, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    r = http.post(UPSERT, json={"inputs": []}, headers=headers)
    assert r.status_code == 401
    assert r.json()["category"] == "INVALID_AUTHENTICATION"
    assert r.json()["status"] == "error"
    assert r.json()["message"].startswith("Authentication credentials not found.")
    assert "x-hubspot-ratelimit-max" not in r.headers


def test_ten_second_window_429(sb: SandboxServer, http: httpx.Client) -> None:
    clock = ManualClock()
    sb.sandbox.hubspot.clock = clock
    sb.set_faults("hubspot", rate_limit_per_10s=3, daily_limit=1000)
    remaining = []
    for _ in range(3):
        r = http.post(UPSERT, json={"inputs": []}, headers=HUBSPOT)
        assert r.status_code == 200
        assert r.headers["x-hubspot-ratelimit-max"] == "3"
        assert r.headers["x-hubspot-ratelimit-interval-milliseconds"] == "10000"
        assert r.headers["x-hubspot-ratelimit-daily"] == "1000"
        remaining.append(r.headers["x-hubspot-ratelimit-remaining"])
        clock.advance(1)
    assert remaining == ["2", "1", "0"]

    limited = http.post(UPSERT, json={"inputs": []}, headers=HUBSPOT)
    assert limited.status_code == 429
    body = limited.json()
    assert body["status"] == "error"
    assert body["errorType"] == "RATE_LIMIT"
    assert body["policyName"] == "TEN_SECONDLY_ROLLING"
    assert body["message"] == "You have reached your ten_secondly_rolling limit."
    assert body["correlationId"] and body["requestId"]
    assert limited.headers["x-hubspot-ratelimit-remaining"] == "0"
    assert limited.headers["x-hubspot-ratelimit-daily-remaining"] == "997"

    clock.advance(7.5)  # the first hit (t=0) left the rolling window; the others have not
    assert http.post(UPSERT, json={"inputs": []}, headers=HUBSPOT).status_code == 200
    assert http.post(UPSERT, json={"inputs": []}, headers=HUBSPOT).status_code == 429


def test_daily_limit_429(sb: SandboxServer, http: httpx.Client) -> None:
    sb.set_faults("hubspot", daily_limit=1, retry_after=True)
    assert http.post(UPSERT, json={"inputs": []}, headers=HUBSPOT).status_code == 200
    r = http.post(UPSERT, json={"inputs": []}, headers=HUBSPOT)
    assert r.status_code == 429
    assert r.json()["policyName"] == "DAILY"
    assert r.json()["message"] == "You have reached your daily limit."
    assert r.headers["x-hubspot-ratelimit-daily-remaining"] == "0"
    assert 0 < int(r.headers["retry-after"]) <= 86_400


def test_shuffled_results_still_cover_every_input(sb: SandboxServer, http: httpx.Client) -> None:
    sb.set_faults("hubspot", shuffle_results=True)
    inputs = [upsert_input(f"s{i}@example.com") for i in range(50)]
    r = http.post(UPSERT, json={"inputs": inputs}, headers=HUBSPOT)
    emails = [x["properties"]["email"] for x in r.json()["results"]]
    assert sorted(emails) == sorted(i["id"] for i in inputs)
    assert emails != [i["id"] for i in inputs]
