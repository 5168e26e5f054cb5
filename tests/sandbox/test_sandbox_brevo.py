"""Brevo fake over real HTTP: create/upsert statuses, auth, rate limits, async import."""

from __future__ import annotations

import time

import httpx

from crmsync.sandbox import ManualClock, SandboxConfig, SandboxServer, auth_headers

BREVO = auth_headers(SandboxConfig(), "brevo")


def test_create_then_update_enabled_then_duplicate(sb: SandboxServer, http: httpx.Client) -> None:
    body = {"email": "Jane@Example.com", "attributes": {"FIRSTNAME": "Jane"}, "updateEnabled": True}
    created = http.post("/brevo/v3/contacts", json=body, headers=BREVO)
    assert created.status_code == 201
    contact_id = created.json()["id"]
    assert isinstance(contact_id, int)

    body["attributes"] = {"FIRSTNAME": "Janet"}
    updated = http.post("/brevo/v3/contacts", json=body, headers=BREVO)
    assert updated.status_code == 204
    assert updated.content == b""

    duplicate = http.post("/brevo/v3/contacts", json={"email": "jane@example.com"}, headers=BREVO)
    assert duplicate.status_code == 400
    assert duplicate.json() == {
        "code": "duplicate_parameter",
        "message": "Unable to create contact, email is already associated with another Contact",
        "metadata": {"duplicate_identifiers": ["email"]},
    }

    [stored] = sb.contacts("brevo")
    assert stored["email"] == "jane@example.com"
    assert stored["id"] == contact_id
    assert stored["push_count"] == 2
    assert stored["fields"]["attributes"] == {"FIRSTNAME": "Janet"}
    assert "updateEnabled" not in stored["fields"]


def test_invalid_email_and_sms_rules(http: httpx.Client) -> None:
    invalid = http.post("/brevo/v3/contacts", json={"email": "not-an-email"}, headers=BREVO)
    assert invalid.status_code == 400
    assert invalid.json() == {"code": "invalid_parameter", "message": "Invalid email address"}

    no_country = http.post(
        "/brevo/v3/contacts",
        json={"email": "a@example.com", "attributes": {"SMS": "0612345678"}},
        headers=BREVO,
    )
    assert no_country.status_code == 400
    assert no_country.json()["code"] == "invalid_parameter"

    first = http.post(
        "/brevo/v3/contacts",
        json={"email": "a@example.com", "attributes": {"SMS": "+33612345678"}},
        headers=BREVO,
    )
    assert first.status_code == 201
    clash = http.post(
        "/brevo/v3/contacts",
        # The same number written with 00 instead of + is the same identifier.
        json={"email": "b@example.com", "attributes": {"SMS": "0033612345678"}},
        headers=BREVO,
    )
    assert clash.status_code == 400
    assert clash.json()["code"] == "duplicate_parameter"
    assert clash.json()["metadata"] == {"duplicate_identifiers": ["SMS"]}
    # The owner itself may resend its own number.
    again = http.post(
        "/brevo/v3/contacts",
        json={
            "email": "a@example.com",
            "attributes": {"SMS": "+33612345678"},
            "updateEnabled": True,
        },
        headers=BREVO,
    )
    assert again.status_code == 204


def test_auth_missing_and_wrong_key(sb: SandboxServer, http: httpx.Client) -> None:
    missing = http.post("/brevo/v3/contacts", json={"email": "a@example.com"})
    assert missing.status_code == 401
    assert missing.json() == {
        "message": "authentication not found in headers",
        "code": "unauthorized",
    }
    wrong = http.post(
        "/brevo/v3/contacts", json={"email": "a@example.com"}, headers={"api-key": "x"}
    )
    assert wrong.status_code == 401
    assert wrong.json() == {"code": "unauthorized", "message": "Key not found"}
    assert sb.contacts("brevo") == []
    assert sb.stats()["brevo"]["4xx"] == 2


def test_get_contact_by_email_and_id(http: httpx.Client) -> None:
    contact_id = http.post(
        "/brevo/v3/contacts", json={"email": "a@example.com", "listIds": [3]}, headers=BREVO
    ).json()["id"]
    by_email = http.get("/brevo/v3/contacts/A%40example.com", headers=BREVO)
    by_id = http.get(f"/brevo/v3/contacts/{contact_id}", headers=BREVO)
    assert by_email.status_code == by_id.status_code == 200
    assert by_email.json() == by_id.json()
    assert by_id.json()["email"] == "a@example.com"
    assert by_id.json()["listIds"] == [3]
    missing = http.get("/brevo/v3/contacts/nobody@example.com", headers=BREVO)
    assert missing.status_code == 404
    assert missing.json() == {"code": "document_not_found", "message": "Contact does not exist"}


def test_rate_limit_headers_and_429(sb: SandboxServer, http: httpx.Client) -> None:
    clock = ManualClock()
    sb.sandbox.brevo.clock = clock
    sb.set_faults("brevo", rate_limit_per_second=2, rate_limit_per_hour=100)
    seen = []
    for i in range(3):
        r = http.post("/brevo/v3/contacts", json={"email": f"u{i}@example.com"}, headers=BREVO)
        seen.append((r.status_code, r.headers["x-sib-ratelimit-remaining"]))
        assert r.headers["x-sib-ratelimit-limit"] == "2"
        assert r.headers["x-sib-ratelimit-reset"] == "1"
    assert seen == [(201, "1"), (201, "0"), (429, "0")]
    assert "retry-after" not in r.headers
    assert r.json()["code"] == "too_many_requests"

    clock.advance(1.0)  # the next second's bucket is full again
    r = http.post("/brevo/v3/contacts", json={"email": "u9@example.com"}, headers=BREVO)
    assert (r.status_code, r.headers["x-sib-ratelimit-remaining"]) == (201, "1")
    assert sb.stats()["brevo"]["429"] == 1


def test_rate_headers_on_default_config(http: httpx.Client, sb: SandboxServer) -> None:
    sb.set_faults("brevo", rate_limit_per_second=10, rate_limit_per_hour=36_000)
    r = http.get("/brevo/v3/contacts/x@example.com", headers=BREVO)
    assert r.status_code == 404
    assert r.headers["x-sib-ratelimit-limit"] == "10"
    # An unauthenticated answer on /contacts* still carries the headers (Brevo: "all responses").
    r = http.get("/brevo/v3/contacts/x@example.com")
    assert r.status_code == 401
    assert r.headers["x-sib-ratelimit-limit"] == "10"


def test_import_moves_through_states_and_stores_only_when_completed(
    sb: SandboxServer, http: httpx.Client
) -> None:
    sb.set_faults("brevo", import_queued_ms=300, import_processing_ms=300)
    rows = [
        {"email": "one@example.com", "attributes": {"FIRSTNAME": "One"}},
        {"email": "broken-email", "attributes": {}},
        {"email": "two@example.com"},
    ]
    started = http.post(
        "/brevo/v3/contacts/import", json={"jsonBody": rows, "listIds": [7]}, headers=BREVO
    )
    assert started.status_code == 202
    process_id = started.json()["processId"]
    assert isinstance(process_id, int)

    first = http.get(f"/brevo/v3/processes/{process_id}", headers=BREVO).json()
    assert first == {"id": process_id, "status": "queued", "name": "IMPORTUSER"}
    assert sb.contacts("brevo") == []

    statuses = [first["status"]]
    deadline = time.monotonic() + 5
    while statuses[-1] != "completed" and time.monotonic() < deadline:
        time.sleep(0.05)
        statuses.append(
            http.get(f"/brevo/v3/processes/{process_id}", headers=BREVO).json()["status"]
        )
    assert statuses[-1] == "completed"
    assert "in_process" in statuses
    stored = {c["email"]: c for c in sb.contacts("brevo")}
    assert sorted(stored) == ["one@example.com", "two@example.com"]
    assert stored["one@example.com"]["extra"]["listIds"] == [7]
    [process] = http.get("/_sandbox/brevo/processes").json()
    assert (process["imported"], process["skipped"]) == (2, 1)
    assert sb.stats()["brevo"]["contacts_received"] == 3


def test_import_update_existing_false_leaves_existing_contacts(
    sb: SandboxServer, http: httpx.Client
) -> None:
    sb.set_faults("brevo", import_queued_ms=0, import_processing_ms=0)
    http.post("/brevo/v3/contacts", json={"email": "old@example.com", "ext_id": "1"}, headers=BREVO)
    r = http.post(
        "/brevo/v3/contacts/import",
        json={
            "jsonBody": [{"email": "old@example.com", "ext_id": "2"}, {"email": "new@example.com"}],
            "newList": {"listName": "sandbox", "folderId": 1},
            "updateExistingContacts": False,
        },
        headers=BREVO,
    )
    process_id = r.json()["processId"]
    assert http.get(f"/brevo/v3/processes/{process_id}", headers=BREVO).json()["status"] == (
        "completed"
    )
    old = http.get("/_sandbox/brevo/contacts", params={"email": "old@example.com"}).json()[0]
    assert old["push_count"] == 1
    assert old["fields"]["ext_id"] == "1"
    assert len(sb.contacts("brevo")) == 2


def test_import_errors(http: httpx.Client) -> None:
    no_list = http.post(
        "/brevo/v3/contacts/import", json={"jsonBody": [{"email": "a@example.com"}]}, headers=BREVO
    )
    assert no_list.status_code == 400
    assert no_list.json()["code"] == "missing_parameter"
    nothing_valid = http.post(
        "/brevo/v3/contacts/import",
        json={"jsonBody": [{"email": "nope"}], "listIds": [1]},
        headers=BREVO,
    )
    assert nothing_valid.status_code == 400
    assert nothing_valid.json()["message"].startswith("We could not find any valid email")
    unknown = http.get("/brevo/v3/processes/999", headers=BREVO)
    assert unknown.status_code == 404
    assert unknown.json() == {"code": "invalid_parameter", "message": "processId is invalid"}


def test_import_csv_file_body(sb: SandboxServer, http: httpx.Client) -> None:
    sb.set_faults("brevo", import_queued_ms=0, import_processing_ms=0)
    csv_text = "EMAIL;FIRSTNAME\ncsv1@example.com;Ann\ncsv2@example.com;Bob\n"
    r = http.post(
        "/brevo/v3/contacts/import", json={"fileBody": csv_text, "listIds": [1]}, headers=BREVO
    )
    assert r.status_code == 202
    http.get(f"/brevo/v3/processes/{r.json()['processId']}", headers=BREVO)
    stored = {c["email"]: c["fields"]["attributes"] for c in sb.contacts("brevo")}
    assert stored == {
        "csv1@example.com": {"FIRSTNAME": "Ann"},
        "csv2@example.com": {"FIRSTNAME": "Bob"},
    }


def test_put_contact_updates_by_identifier(sb: SandboxServer, http: httpx.Client) -> None:
    contact_id = http.post(
        "/brevo/v3/contacts", json={"email": "a@example.com"}, headers=BREVO
    ).json()["id"]
    r = http.put(
        f"/brevo/v3/contacts/{contact_id}", json={"attributes": {"LASTNAME": "X"}}, headers=BREVO
    )
    assert r.status_code == 204
    assert sb.contacts("brevo")[0]["fields"]["attributes"] == {"LASTNAME": "X"}
    missing = http.put("/brevo/v3/contacts/zz@example.com", json={}, headers=BREVO)
    assert missing.status_code == 404
