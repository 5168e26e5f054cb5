"""n8n webhook fake over real HTTP: registry 404s, header/basic auth, response modes."""

from __future__ import annotations

import httpx

from crmsync.sandbox import SandboxConfig, SandboxServer, auth_headers

N8N = auth_headers(SandboxConfig(), "n8n")
HOOK = "/n8n/webhook/crmsync"


def test_on_received_stores_contacts_and_idempotency_keys(
    sb: SandboxServer, http: httpx.Client
) -> None:
    batch = {"contacts": [{"email": "a@example.com", "name": "A"}, {"email": "B@example.com"}]}
    r = http.post(HOOK, json=batch, headers={**N8N, "Idempotency-Key": "batch-1"})
    assert r.status_code == 200
    assert r.json() == {"message": "Workflow was started"}
    single = http.post(HOOK, json={"email": "a@example.com", "name": "A2"}, headers=N8N)
    assert single.status_code == 200
    http.post(HOOK, json=batch, headers={**N8N, "Idempotency-Key": "batch-1"})

    stored = {c["email"]: c for c in sb.contacts("n8n")}
    assert sorted(stored) == ["a@example.com", "b@example.com"]
    assert stored["a@example.com"]["push_count"] == 3
    assert stored["b@example.com"]["extra"] == {"idempotency_key": "batch-1"}
    assert http.get("/_sandbox/n8n/idempotency-keys").json() == {"batch-1": 2}
    assert sb.stats()["n8n"]["contacts_received"] == 5


def test_unknown_path_and_wrong_method(http: httpx.Client) -> None:
    r = http.post("/n8n/webhook/other", json={}, headers=N8N)
    assert r.status_code == 404
    assert r.json()["code"] == 404
    assert r.json()["message"] == 'The requested webhook "POST other" is not registered.'
    assert r.json()["hint"]
    get = http.get(HOOK, headers=N8N)
    assert get.status_code == 404
    assert get.json()["message"] == (
        "This webhook is not registered for GET requests. Did you mean to make a POST request?"
    )


def test_header_auth_failures_are_plain_text_403(sb: SandboxServer, http: httpx.Client) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = http.post(HOOK, json={"email": "a@example.com"}, headers=headers)
        assert r.status_code == 403
        assert r.text == "Authorization data is wrong!"
        assert r.headers["content-type"].startswith("text/plain")
        assert r.headers["www-authenticate"] == 'Basic realm="Webhook"'
    assert sb.contacts("n8n") == []


def test_last_node_mode_and_workflow_error(sb: SandboxServer, http: httpx.Client) -> None:
    sb.set_faults("n8n", response_mode="lastNode")
    ids = [
        http.post(HOOK, json={"email": f"{i}@example.com"}, headers=N8N).json() for i in range(2)
    ]
    assert ids == [{"executionId": "1"}, {"executionId": "2"}]
    sb.set_faults("n8n", error_rate=1.0)
    failed = http.post(HOOK, json={"email": "x@example.com"}, headers=N8N)
    assert failed.status_code == 500
    assert failed.json() == {"message": "Error in workflow"}
    assert sb.contacts("n8n")[-1]["email"] == "1@example.com"


def test_test_url_and_single_shot(sb: SandboxServer, http: httpx.Client) -> None:
    url = "/n8n/webhook-test/crmsync"
    assert http.post(url, json={"email": "t@example.com"}, headers=N8N).status_code == 200
    assert http.post(url, json={"email": "t@example.com"}, headers=N8N).status_code == 200
    sb.set_faults("n8n", test_url_single_shot=True)
    assert http.post(url, json={"email": "t@example.com"}, headers=N8N).status_code == 200
    gone = http.post(url, json={"email": "t@example.com"}, headers=N8N)
    assert gone.status_code == 404
    assert "Execute workflow" in gone.json()["hint"]
    # Production URLs are not single-shot.
    assert http.post(HOOK, json={"email": "t@example.com"}, headers=N8N).status_code == 200


def test_basic_auth_mode_and_custom_paths() -> None:
    config = SandboxConfig(n8n_auth="basic", n8n_webhooks=("leads/in", "crmsync"))
    with SandboxServer(config) as sb, httpx.Client(base_url=sb.url) as http:
        url = "/n8n/webhook/leads/in"
        missing = http.post(url, json={"email": "a@example.com"})
        assert missing.status_code == 401
        assert missing.text == "Authorization is required!"
        assert missing.headers["www-authenticate"] == 'Basic realm="Webhook"'
        wrong = http.post(url, json={"email": "a@example.com"}, auth=("sandbox", "nope"))
        assert (wrong.status_code, wrong.text) == (403, "Authorization data is wrong!")
        ok = http.post(url, json={"email": "a@example.com"}, headers=sb.auth_headers("n8n"))
        assert ok.status_code == 200
        assert sb.n8n_webhook_url.endswith("/n8n/webhook/leads/in")
        assert sb.env()["N8N_WEBHOOK_URL"] == sb.n8n_webhook_url
