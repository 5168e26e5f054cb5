"""What the demo runs with: the sandbox's faults, and crmsync's settings for that sandbox.

The demo's `Settings` are built here, in code, from the sandbox's own credentials and URLs
(`sandbox_env`, the lines `crmsync sandbox` prints). They never come from the environment or a
`.env` file: a `DATABASE_URL` or a real vendor key there must not lead the demo to production
data or a real CRM.
"""

from __future__ import annotations

from typing import Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from crmsync.demo.options import DemoOptions
from crmsync.enums import CRM_NAMES
from crmsync.sandbox import SandboxConfig, sandbox_env
from crmsync.settings import (
    BrevoSettings,
    HubSpotSettings,
    MauticSettings,
    N8nSettings,
    Settings,
)

# One contact in this many gets an email the vendors refuse (a few of the 500).
INVALID_EVERY = 97
# Any list id works in the sandbox; Brevo's imports need one.
SANDBOX_BREVO_LIST_ID = 2


def sandbox_config() -> SandboxConfig:
    """The vendors as they are: rate limits on, and a small share of what goes wrong.

    HubSpot, Mautic and n8n answer about one request in twenty with a 5xx; Brevo answers one
    429 (a used-up second). Brevo gets no 5xx because a failed import falls back to single
    upserts at Brevo's 10 per second, which would stretch the demo far past its first seconds.
    The contacts with invalid emails are refused by the vendors that check emails. The accounts
    already have crmsync's custom fields, as after `crmsync setup`.
    """
    flaky = {"error_rate": 0.05}
    return SandboxConfig(
        seed=None,
        custom_fields=True,
        faults={"brevo": {"burst_429": 1}, "hubspot": flaky, "mautic": flaky, "n8n": flaky},
    )


class _CodeOnly(BaseSettings):
    """Settings from the values given in code only: no environment variable, no `.env`."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


class _DemoSettings(_CodeOnly, Settings):
    pass


class _DemoBrevo(_CodeOnly, BrevoSettings):
    pass


class _DemoHubSpot(_CodeOnly, HubSpotSettings):
    pass


class _DemoMautic(_CodeOnly, MauticSettings):
    pass


class _DemoN8n(_CodeOnly, N8nSettings):
    pass


def demo_settings(options: DemoOptions, sandbox_url: str, config: SandboxConfig) -> Settings:
    """crmsync's settings for the demo: its own SQLite file, every CRM on the sandbox."""
    per_crm: dict[str, dict[str, Any]] = {crm: {} for crm in CRM_NAMES}
    # `BREVO_API_KEY` -> brevo.api_key: the same lines `crmsync sandbox` prints for a .env.
    for key, value in sandbox_env(sandbox_url, config).items():
        crm, _, name = key.lower().partition("_")
        per_crm[crm][name] = value
    for values in per_crm.values():
        values.update(
            # Small batches, so that progress shows; the idle poll picks retries up promptly.
            sync_scheduler_batch_size=50,
            sync_scheduler_interval_seconds=0.5,
            # A 5xx is retried after a second or two, not the production five minutes.
            sync_retry_delay_seconds=1,
        )
    # Brevo pushes one batch at a time (its default), each an import that the sandbox, like
    # Brevo, completes after a while (half a second): imports of 250 rows keep the wait short.
    per_crm["brevo"].update(
        sync_scheduler_batch_size=250,
        list_id=SANDBOX_BREVO_LIST_ID,
        import_threshold=25,
        import_poll_seconds=0.1,
    )
    return _DemoSettings(
        database_url=options.database_url,
        CRMSYNC_STATE_DIR=options.state_dir,
        # The worker's warnings (a 5xx, a 429) show; its routine INFO lines would drown the
        # progress lines.
        CRMSYNC_LOG_LEVEL="WARNING",
        # A Ctrl-C must end the demo within seconds; batches still in flight are short. One cut
        # short stays leased: after a restart it is pushed again within half a minute, not two.
        CRMSYNC_SHUTDOWN_GRACE_SECONDS=2,
        CRMSYNC_LEASE_SECONDS=30,
        brevo=_DemoBrevo(**per_crm["brevo"]),
        hubspot=_DemoHubSpot(**per_crm["hubspot"]),
        mautic=_DemoMautic(**per_crm["mautic"]),
        n8n=_DemoN8n(**per_crm["n8n"]),
    )
