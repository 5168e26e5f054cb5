"""Settings names and defaults follow the work order; bad values fail at load."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from crmsync.settings import Settings


def load(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load(monkeypatch)
    assert s.database_url == "sqlite+aiosqlite:///./crmsync.db"
    assert s.jwt_secret_key is None
    assert s.brevo.api_base_url == "https://api.brevo.com/v3"
    assert s.hubspot.api_base_url == "https://api.hubapi.com"
    assert s.brevo.sync_max_retries == 3 and s.brevo.retry_delay_seconds == 300
    assert s.brevo.interval_seconds == 5 and s.brevo.sync_retry_exponential
    assert s.hubspot.auth_retry_seconds == 300
    assert s.lease_seconds == 120 and s.shutdown_grace_seconds == 30
    for crm in ("brevo", "hubspot", "mautic", "n8n"):
        assert s.crm(crm).missing() is not None


def test_work_order_names(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load(
        monkeypatch,
        BREVO_API_KEY="k",
        BREVO_LIST_ID="30",
        BREVO_SYNC_SCHEDULER_INTERVAL_MINUTES="2",
        BREVO_SYNC_RETRY_DELAY_MINUTES="5",
        BREVO_SYNC_RETRY_EXPONENTIAL="false",
        HUBSPOT_SYNC_RETRY_DELAY_SECONDS="7",
        HUBSPOT_SYNC_RETRY_DELAY_MINUTES="9",
        HUBSPOT_API_KEY="pat-na1-x",
        N8N_WEBHOOK_URL="http://127.0.0.1/webhook/x",
        MAUTIC_BASE_URL="http://m",
        MAUTIC_CLIENT_ID="id",
        MAUTIC_CLIENT_SECRET="secret",
    )
    assert s.brevo.list_id == 30 and s.brevo.interval_seconds == 120
    assert s.brevo.retry_delay_seconds == 300 and not s.brevo.sync_retry_exponential
    assert s.hubspot.retry_delay_seconds == 7  # _SECONDS wins over _MINUTES
    assert s.hubspot.access_token is not None  # the customer's HUBSPOT_API_KEY name
    assert all(s.crm(c).missing() is None for c in ("brevo", "hubspot", "mautic", "n8n"))
    # Per-CRM settings never leak into another CRM.
    assert s.mautic.sync_retry_exponential and s.mautic.retry_delay_seconds == 300


def test_blank_values_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load(monkeypatch, BREVO_LIST_ID="", JWT_SECRET_KEY="", BREVO_SYNC_RETRY_DELAY_MINUTES="")
    assert s.brevo.list_id is None and s.jwt_secret_key is None
    assert s.brevo.retry_delay_seconds == 300


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"BREVO_LIST_ID": "abc"}, "BREVO_LIST_ID must be the numeric id"),
        ({"BREVO_SYNC_MAX_RETRIES": "-1"}, "greater than or equal to 0"),
        ({"CRMSYNC_LOG_FORMAT": "xml"}, "text"),
        ({"HUBSPOT_SYNC_SCHEDULER_BATCH_SIZE": "0"}, "greater than or equal to 1"),
    ],
)
def test_bad_values_fail_at_load(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str
) -> None:
    with pytest.raises(ValidationError, match=needle):
        load(monkeypatch, **env)


def test_secrets_are_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load(
        monkeypatch,
        BREVO_API_KEY="xkeysib-very-secret",
        JWT_SECRET_KEY="jwt-very-secret-" + "x" * 32,
    )
    assert "very-secret" not in repr(s) and "very-secret" not in str(s.model_dump())
