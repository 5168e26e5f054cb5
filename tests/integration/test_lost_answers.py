"""Issue 20, section 5: a write the vendor applied whose answer never arrived ("apply, then drop the
connection", the sandbox's `apply_then_drop` fault) never makes a duplicate once retried.

HubSpot, Brevo and Mautic hold one record per email because every write is an upsert keyed by
the email: the retry updates the record the lost answer created. n8n cannot deduplicate, so a
retry carries the same `Idempotency-Key` and the same per-contact `idempotency_key` for a
workflow to drop the repeat.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from crmsync.connectors.base import Connector, ContactPayload, Ok, Retry, RowResult
from crmsync.connectors.brevo import BrevoConnector
from crmsync.connectors.hubspot import HubSpotConnector
from crmsync.connectors.mautic import MauticConnector
from crmsync.connectors.n8n import N8nConnector
from crmsync.sandbox import SandboxConfig, SandboxServer
from crmsync.settings import BrevoSettings, HubSpotSettings, MauticSettings, N8nSettings


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(no_rate_limits=True, custom_fields=True)) as server:
        yield server


@pytest.fixture(autouse=True)
def clean(sandbox: SandboxServer) -> None:
    sandbox.reset(faults=True)


def rows(count: int) -> list[ContactPayload]:
    return [
        ContactPayload(uuid.UUID(int=n), f"lost{n}@example.com", name=f"Lost Answer{n}")
        for n in range(1, count + 1)
    ]


def connector(sandbox: SandboxServer, crm: str, **extra: Any) -> Connector:
    config = sandbox.config
    if crm == "brevo":
        return BrevoConnector(
            BrevoSettings(  # type: ignore[call-arg]
                _env_file=None,
                api_key=config.brevo_api_key,
                api_base_url=sandbox.brevo_url,
                rate_limit_per_second=0,
                import_poll_seconds=0.05,
                **extra,
            )
        )
    if crm == "hubspot":
        return HubSpotConnector(
            HubSpotSettings(  # type: ignore[call-arg]
                _env_file=None,
                access_token=config.hubspot_access_token,
                api_base_url=sandbox.hubspot_url,
                rate_limit_per_second=0,
            )
        )
    if crm == "mautic":
        return MauticConnector(
            MauticSettings(  # type: ignore[call-arg]
                _env_file=None,
                base_url=sandbox.mautic_url,
                username=config.mautic_username,
                password=config.mautic_password,
            )
        )
    return N8nConnector(
        N8nSettings(  # type: ignore[call-arg]
            _env_file=None,
            webhook_url=sandbox.n8n_webhook_url,
            webhook_secret=config.n8n_secret,
            **extra,
        )
    )


async def push_until_ok(
    conn: Connector, batch: Sequence[ContactPayload], order: list[int] | None = None
) -> list[list[RowResult]]:
    """Push, then re-push the rows answered `Retry` (optionally reordered), as the engine does."""
    answers = [await conn.push(batch)]
    pending = [
        row for row, result in zip(batch, answers[0], strict=True) if isinstance(result, Retry)
    ]
    if order is not None:
        pending = [pending[i] for i in order]
    if pending:
        answers.append(await conn.push(pending))
    return answers


@pytest.mark.parametrize("crm", ["brevo", "hubspot", "mautic"])
async def test_a_lost_answer_is_retried_into_the_same_record(
    sandbox: SandboxServer, crm: str
) -> None:
    sandbox.set_faults(crm, apply_then_drop=1)
    conn = connector(sandbox, crm)
    batch = rows(3)

    first, retried = await push_until_ok(conn, batch)
    await conn.aclose()

    assert any(isinstance(result, Retry) for result in first)  # the dropped answer
    assert all(isinstance(result, Ok) for result in retried)
    assert sandbox.stats()[crm]["dropped"] == 1
    stored = sandbox.contacts(crm)
    assert sorted(c["email"] for c in stored) == sorted(row.email for row in batch)
    # The contact whose answer was lost was written twice, into one record.
    assert max(c["push_count"] for c in stored) == 2


async def test_a_lost_brevo_import_answer_falls_back_to_upserts_not_duplicates(
    sandbox: SandboxServer,
) -> None:
    sandbox.set_faults("brevo", apply_then_drop=1)
    conn = connector(sandbox, "brevo", list_id=30, import_threshold=2)
    batch = rows(4)

    results = await conn.push(batch)  # the import ran, its answer was lost: one by one
    await conn.aclose()

    assert all(isinstance(result, Ok) for result in results)
    stored = sandbox.contacts("brevo")
    assert sorted(c["email"] for c in stored) == sorted(row.email for row in batch)


async def test_n8n_retry_carries_the_same_keys_in_any_order(sandbox: SandboxServer) -> None:
    sandbox.set_faults("n8n", apply_then_drop=1)
    conn = connector(sandbox, "n8n")
    batch = rows(3)

    first, retried = await push_until_ok(conn, batch, order=[2, 0, 1])
    await conn.aclose()

    assert all(isinstance(result, Retry) for result in first)
    assert all(isinstance(result, Ok) for result in retried)
    # One Idempotency-Key, seen twice: the workflow ran the batch once, then its repeat.
    keys = sandbox.control.get("/n8n/idempotency-keys").json()
    assert list(keys.values()) == [2]
    stored = {c["email"]: c for c in sandbox.contacts("n8n")}
    for row in batch:
        contact = stored[row.email]
        assert contact["push_count"] == 2
        key = contact["fields"]["idempotency_key"]
        assert key.startswith(f"{row.contact_id}:")
