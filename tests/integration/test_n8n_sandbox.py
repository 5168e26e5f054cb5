"""The n8n connector over real HTTP against the sandbox's n8n webhook fake."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from crmsync.connectors.base import AuthFailed, ContactPayload, Misconfigured, Ok, Retry
from crmsync.connectors.n8n import N8nConnector
from crmsync.sandbox import SandboxConfig, SandboxServer
from crmsync.settings import N8nSettings


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(no_rate_limits=True)) as server:
        yield server


@pytest.fixture(autouse=True)
def clean(sandbox: SandboxServer) -> None:
    sandbox.reset(faults=True)


def make_settings(sandbox: SandboxServer, **overrides: Any) -> N8nSettings:
    values: dict[str, Any] = {
        "webhook_url": sandbox.n8n_webhook_url,
        "webhook_secret": sandbox.config.n8n_secret,
        "batch_size": 100,
    }
    values.update(overrides)
    return N8nSettings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
async def n8n(sandbox: SandboxServer) -> AsyncIterator[N8nConnector]:
    connector = N8nConnector(make_settings(sandbox))
    yield connector
    await connector.aclose()


def contact(n: int, **fields: Any) -> ContactPayload:
    values: dict[str, Any] = {
        "contact_id": uuid.UUID(int=n),
        "email": f"person{n}@example.com",
        "name": f"Jane Number{n}",
        "phone_number": "Phone not found",
        "domain_id": uuid.UUID(int=500),
        "page_id": uuid.UUID(int=600 + n),
    }
    values.update(fields)
    return ContactPayload(**values)


def stored(sandbox: SandboxServer) -> dict[str, dict[str, Any]]:
    return {c["email"]: c for c in sandbox.contacts("n8n")}


async def test_batch_is_delivered(sandbox: SandboxServer, n8n: N8nConnector) -> None:
    results = await n8n.push([contact(1), contact(2)])

    keys = sandbox.control.get("/n8n/idempotency-keys").json()
    (key,) = keys
    assert results == [Ok(key, 200), Ok(key, 200)]
    held = stored(sandbox)
    assert sorted(held) == ["person1@example.com", "person2@example.com"]
    fields = held["person1@example.com"]["fields"]
    assert fields["contact_id"] == str(uuid.UUID(int=1))
    assert fields["first_name"] == "Jane" and fields["last_name"] == "Number1"
    assert fields["phone_number"] is None
    assert fields["page_id"] == str(uuid.UUID(int=601))


async def test_single_mode_keeps_the_legacy_shape(sandbox: SandboxServer) -> None:
    connector = N8nConnector(make_settings(sandbox, batch_size=1))
    (result,) = await connector.push([contact(1)])
    await connector.aclose()
    assert isinstance(result, Ok)
    fields = stored(sandbox)["person1@example.com"]["fields"]
    assert fields["scrapersky_domain_id"] == str(uuid.UUID(int=500))
    assert fields["scrapersky_page_id"] == str(uuid.UUID(int=601))
    assert fields["timestamp"].endswith("Z")
    assert "contacts" not in fields


async def test_last_node_mode_returns_the_execution_id(
    sandbox: SandboxServer, n8n: N8nConnector
) -> None:
    sandbox.set_faults("n8n", response_mode="lastNode")
    assert await n8n.push([contact(1)]) == [Ok("1", 200)]


async def test_unknown_path_is_misconfigured(sandbox: SandboxServer) -> None:
    url = sandbox.n8n_webhook_url.rsplit("/", 1)[0] + "/no-such-hook"
    connector = N8nConnector(make_settings(sandbox, webhook_url=url))
    with pytest.raises(Misconfigured) as caught:
        await connector.push([contact(1)])
    await connector.aclose()
    assert caught.value.http_status == 404
    # n8n names the webhook's path, the URL's secret: redacted like one.
    assert 'The requested webhook "POST [redacted]" is not registered.' in caught.value.message
    assert "no-such-hook" not in caught.value.message
    assert "Hint: The workflow must be active" in caught.value.message


async def test_wrong_secret_is_auth_failed(sandbox: SandboxServer) -> None:
    connector = N8nConnector(make_settings(sandbox, webhook_secret="wrong-secret"))
    with pytest.raises(AuthFailed) as caught:
        await connector.push([contact(1)])
    await connector.aclose()
    assert caught.value.http_status == 403
    assert "Authorization data is wrong!" in caught.value.message
    assert "wrong-secret" not in caught.value.message
    assert stored(sandbox) == {}


async def test_repeated_pushes_keep_one_record_per_email(
    sandbox: SandboxServer, n8n: N8nConnector
) -> None:
    rows = [contact(n) for n in range(1, 6)]
    for _ in range(3):
        assert all(isinstance(r, Ok) for r in await n8n.push(rows))
    held = stored(sandbox)
    assert sorted(held) == sorted(r.email for r in rows)
    assert all(c["push_count"] == 3 for c in held.values())
    # The same batch carried the same Idempotency-Key every time.
    assert list(sandbox.control.get("/n8n/idempotency-keys").json().values()) == [3]


async def test_workflow_errors_retry(sandbox: SandboxServer, n8n: N8nConnector) -> None:
    sandbox.set_faults("n8n", error_rate=1.0, response_mode="lastNode")
    results = await n8n.push([contact(1), contact(2)])
    assert all(isinstance(r, Retry) and r.http_status == 500 for r in results)
    assert all(isinstance(r, Retry) and "Error in workflow" in r.reason for r in results)
