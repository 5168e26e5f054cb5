"""Mautic fake over real HTTP: batch envelope, limits, basic + OAuth2 auth, 401/403, 429."""

from __future__ import annotations

import httpx

from crmsync.sandbox import ManualClock, SandboxConfig, SandboxServer, auth_headers

CONFIG = SandboxConfig()
MAUTIC = auth_headers(CONFIG, "mautic")
BATCH = "/mautic/api/contacts/batch/new"
DENIED = {
    "errors": [{"message": "API authorization denied.", "code": 401, "type": "access_denied"}]
}


def test_batch_new_envelope(sb: SandboxServer, http: httpx.Client) -> None:
    items = [
        {"email": "a@example.com", "firstname": "A"},
        {"email": "b@example.com", "scrapersky_has_gmail": True},
        {"email": "not-an-email"},
    ]
    first = http.post(BATCH, json=items, headers=MAUTIC)
    assert first.status_code == 201
    assert first.headers["mautic-version"] == CONFIG.mautic_version
    body = first.json()
    assert body["statusCodes"] == [201, 201, 400]
    assert [c["fields"]["all"]["email"] for c in body["contacts"]] == [
        "a@example.com",
        "b@example.com",
    ]
    assert all(isinstance(c["id"], int) for c in body["contacts"])
    assert list(body["errors"]) == ["2"]  # keyed by input index
    assert body["errors"]["2"]["code"] == 400
    assert "email" in body["errors"]["2"]["details"]

    # Same emails again (different case): matched and updated, never duplicated.
    second = http.post(BATCH, json=[{"email": "A@example.com", "firstname": "Z"}], headers=MAUTIC)
    assert second.status_code == 201
    assert second.json()["statusCodes"] == [200]
    assert "errors" not in second.json()
    assert second.json()["contacts"][0]["id"] == body["contacts"][0]["id"]
    stored = {c["email"]: c for c in sb.contacts("mautic")}
    assert len(stored) == 2
    assert stored["a@example.com"]["push_count"] == 2
    assert stored["a@example.com"]["fields"]["firstname"] == "Z"


def test_errors_and_contacts_formats(sb: SandboxServer, http: httpx.Client) -> None:
    items = [{"email": "bad"}, {"email": "ok@example.com"}]
    sb.set_faults("mautic", errors_format="list", contacts_format="object_on_gaps")
    body = http.post(BATCH, json=items, headers=MAUTIC).json()
    assert isinstance(body["errors"], list)
    assert body["errors"][0]["code"] == 400
    assert list(body["contacts"]) == ["1"]


def test_batch_over_limit(sb: SandboxServer, http: httpx.Client) -> None:
    items = [{"email": f"u{i}@example.com"} for i in range(201)]
    r = http.post(BATCH, json=items, headers=MAUTIC)
    assert r.status_code == 500
    assert r.json()["errors"][0]["message"] == "A max of 200 entities are supported at a time."
    assert r.json()["errors"][0]["code"] == 500
    sb.set_faults("mautic", over_limit_status=400, batch_limit=3)
    r = http.post(BATCH, json=items[:4], headers=MAUTIC)
    assert r.status_code == 400
    assert r.json()["errors"][0]["message"] == "A max of 3 entities are supported at a time."
    assert sb.contacts("mautic") == []
    assert http.post(BATCH, json=items[:3], headers=MAUTIC).json()["statusCodes"] == [201] * 3


def test_single_new_201_then_200(http: httpx.Client) -> None:
    created = http.post(
        "/mautic/api/contacts/new", json={"email": "one@example.com"}, headers=MAUTIC
    )
    assert created.status_code == 201
    contact_id = created.json()["contact"]["id"]
    assert created.headers["location"] == f"/api/contacts/{contact_id}"
    matched = http.post(
        "/mautic/api/contacts/new", json={"email": "ONE@example.com"}, headers=MAUTIC
    )
    assert matched.status_code == 200
    assert matched.json()["contact"]["id"] == contact_id
    invalid = http.post("/mautic/api/contacts/new", json={"email": "x"}, headers=MAUTIC)
    assert invalid.status_code == 400
    assert invalid.json()["errors"][0]["details"]["email"]

    found = http.get(
        "/mautic/api/contacts", params={"search": "email:one@example.com"}, headers=MAUTIC
    )
    assert found.json()["total"] == 1
    assert list(found.json()["contacts"]) == [str(contact_id)]
    assert http.get(f"/mautic/api/contacts/{contact_id}", headers=MAUTIC).status_code == 200
    missing = http.get("/mautic/api/contacts/9999", headers=MAUTIC)
    assert missing.status_code == 404
    assert missing.headers["mautic-version"] == CONFIG.mautic_version


def test_basic_auth_failures(http: httpx.Client) -> None:
    for headers in ({}, {"Authorization": "Basic c2FuZGJveDp3cm9uZw=="}):  # sandbox:wrong
        r = http.post(BATCH, json=[], headers=headers)
        assert r.status_code == 401
        assert r.json() == DENIED
        assert r.headers["mautic-version"] == CONFIG.mautic_version


def test_oauth2_client_credentials(http: httpx.Client) -> None:
    token = http.post(
        "/mautic/oauth/v2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": CONFIG.mautic_client_id,
            "client_secret": CONFIG.mautic_client_secret,
        },
    )
    assert token.status_code == 200
    assert token.json()["expires_in"] == 3600
    assert token.json()["token_type"] == "bearer"
    bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
    r = http.post(BATCH, json=[{"email": "o@example.com"}], headers=bearer)
    assert r.status_code == 201
    assert r.json()["statusCodes"] == [201]

    assert http.post(BATCH, json=[], headers={"Authorization": "Bearer nope"}).json() == DENIED
    bad_client = http.post(
        "/mautic/oauth/v2/token",
        data={"grant_type": "client_credentials", "client_id": "x", "client_secret": "y"},
    )
    assert bad_client.status_code == 400
    assert bad_client.json()["error"] == "invalid_client"
    bad_grant = http.post("/mautic/oauth/v2/token", data={"grant_type": "password"})
    assert bad_grant.json()["error"] == "unsupported_grant_type"


def test_api_disabled_and_basic_auth_disabled(sb: SandboxServer, http: httpx.Client) -> None:
    sb.set_faults("mautic", api_disabled=True)
    r = http.post(BATCH, json=[], headers={"Authorization": "Bearer whatever"})
    assert r.status_code == 403
    assert r.json()["errors"][0]["type"] == "api_disabled"
    assert r.json()["errors"][0]["code"] == 403
    basic = http.post(BATCH, json=[], headers=MAUTIC)
    assert basic.status_code == 403
    assert basic.json()["errors"][0]["type"] == "access_denied"

    sb.set_faults("mautic", api_disabled=False, basic_auth_enabled=False)
    assert http.post(BATCH, json=[], headers=MAUTIC).status_code == 401


def test_hourly_rate_limit(sb: SandboxServer, http: httpx.Client) -> None:
    clock = ManualClock(1_800_000_000.0)  # an hour boundary
    sb.sandbox.mautic.clock = clock
    sb.set_faults("mautic", rate_limit_per_hour=2)
    first = http.post(BATCH, json=[], headers=MAUTIC)
    assert first.headers["x-ratelimit-limit"] == "2"
    assert first.headers["x-ratelimit-remaining"] == "1"
    assert first.headers["x-ratelimit-reset"] == str(1_800_000_000 + 3600)
    assert http.post(BATCH, json=[], headers=MAUTIC).status_code == 201
    limited = http.post(BATCH, json=[], headers=MAUTIC)
    assert limited.status_code == 429
    assert limited.json() == {
        "errors": [
            {
                "code": 429,
                "message": "You exceeded the rate limit of 2 API calls per hour.",
                "details": [],
            }
        ]
    }
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert limited.headers["mautic-version"] == CONFIG.mautic_version
    clock.advance(3600)
    assert http.post(BATCH, json=[], headers=MAUTIC).status_code == 201


def test_no_rate_limit_headers_when_off(http: httpx.Client) -> None:
    r = http.post(BATCH, json=[], headers=MAUTIC)
    assert r.status_code == 201
    assert "x-ratelimit-limit" not in r.headers
