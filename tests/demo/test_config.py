"""The demo's settings come from code only: never from the environment or a .env file."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmsync.demo.config import demo_settings, sandbox_config
from crmsync.demo.options import DemoOptions
from crmsync.enums import Crm
from crmsync.sandbox import sandbox_env
from crmsync.settings import Settings

SANDBOX = "http://127.0.0.1:18900"

# What a user's environment and .env may hold: production data and real vendors.
FOREIGN = {
    "DATABASE_URL": "postgresql+asyncpg://prod@db.example.com/crm",
    "JWT_SECRET_KEY": "production-secret-" + "p" * 32,
    "CRMSYNC_STATE_DIR": "/var/lib/crmsync",
    "CRMSYNC_LOG_LEVEL": "DEBUG",
    "CRMSYNC_SQLITE_WRITER_PROCESS": "false",
    "BREVO_API_KEY": "xkeysib-real",
    "BREVO_API_BASE_URL": "https://api.brevo.com/v3",
    "BREVO_LIST_ID": "99",
    "BREVO_SYNC_MAX_RETRIES": "9",
    "HUBSPOT_ACCESS_TOKEN": "pat-eu1-real",
    "HUBSPOT_API_BASE_URL": "https://api.hubapi.com",
    "MAUTIC_BASE_URL": "https://mautic.example.com",
    "MAUTIC_BATCH_SIZE": "7",
    "N8N_WEBHOOK_URL": "https://n8n.example.com/webhook/real",
    "N8N_SYNC_SCHEDULER_MAX_INSTANCES": "9",
}


def _demo(tmp_path: Path) -> Settings:
    options = DemoOptions(db=tmp_path / "demo.db")
    return demo_settings(options, SANDBOX, sandbox_config())


def test_the_environment_and_dotenv_are_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = _demo(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in FOREIGN.items()))
    # The .env alone, then the environment too: nothing of either reaches the demo.
    from_dotenv = _demo(tmp_path)
    for key, value in FOREIGN.items():
        monkeypatch.setenv(key, value)
    from_env = _demo(tmp_path)
    assert Settings().database_url == FOREIGN["DATABASE_URL"]  # the trap is armed
    assert from_dotenv.model_dump() == clean.model_dump() == from_env.model_dump()


def test_every_crm_points_at_the_sandbox_and_the_demo_database(tmp_path: Path) -> None:
    settings = _demo(tmp_path)
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path.resolve() / 'demo.db'}"
    assert settings.state_dir == tmp_path.resolve() / ".crmsync-demo"
    assert settings.jwt_secret_key is None  # generated into the demo's own state dir
    for crm in Crm:
        assert settings.crm(crm).missing() is None, crm
    env = sandbox_env(SANDBOX, sandbox_config())
    assert settings.brevo.api_base_url == env["BREVO_API_BASE_URL"]
    assert settings.brevo.api_key is not None
    assert settings.brevo.api_key.get_secret_value() == env["BREVO_API_KEY"]
    assert settings.brevo.list_id is not None
    assert settings.hubspot.api_base_url == env["HUBSPOT_API_BASE_URL"]
    assert settings.mautic.base_url == env["MAUTIC_BASE_URL"]
    assert settings.n8n.webhook_url == env["N8N_WEBHOOK_URL"]
    # Production defaults the demo keeps: our own pacing at the vendors' limits, retries.
    assert settings.brevo.rate_limit_per_second == 10
    assert settings.hubspot.rate_limit_per_second == 10
    assert settings.hubspot.sync_max_retries == 3


def test_the_sandbox_has_limits_on_and_a_few_faults() -> None:
    config = sandbox_config()
    assert not config.no_rate_limits
    assert config.initial_options("hubspot").rate_limit_per_10s > 0  # type: ignore[attr-defined]
    for crm in ("hubspot", "mautic", "n8n"):
        assert 0 < config.initial_options(crm).error_rate <= 0.1
    assert config.initial_options("brevo").burst_429 >= 1
