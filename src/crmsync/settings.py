"""One settings tree, read from the environment and `.env` (pydantic-settings).

Names follow the customer's work order (section 2.1): `BREVO_API_KEY`, `BREVO_SYNC_MAX_RETRIES`,
... and the same pattern for HubSpot, Mautic and n8n. Each CRM has its own settings object with
its prefix, so scheduling and retry knobs never leak from one CRM to another.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from crmsync.enums import Crm

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./crmsync.db"
# The shortest JWT_SECRET_KEY accepted (auth.py applies the same rule to a secret file).
MIN_JWT_SECRET_BYTES = 32


def _config(prefix: str = "") -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix=prefix,
        env_file=".env",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
    )


def _blank_to_none(value: Any) -> Any:
    """An empty variable (`BREVO_LIST_ID=`) means "not set", as in the customer's .env.example."""
    if isinstance(value, str) and not value.strip():
        return None
    return value


class CrmSettings(BaseSettings):
    """Scheduling and retry settings every CRM has, read with that CRM's prefix."""

    model_config = _config()

    sync_scheduler_interval_seconds: float | None = Field(default=None, gt=0)
    sync_scheduler_interval_minutes: float | None = Field(default=None, gt=0)
    sync_scheduler_batch_size: int | None = Field(default=None, ge=1)
    sync_scheduler_max_instances: int | None = Field(default=None, ge=1)
    sync_max_retries: int = Field(default=3, ge=0)
    sync_retry_delay_minutes: float | None = Field(default=None, ge=0)
    sync_retry_delay_seconds: float | None = Field(default=None, ge=0)
    sync_retry_exponential: bool = True
    # Attempts are not spent while a CRM refuses our credentials; we look again after this.
    auth_retry_seconds: float = Field(default=300, gt=0)
    # Requests per second our limiter allows; 0 turns pacing off.
    rate_limit_per_second: float = Field(default=0, ge=0)
    # Vendor outage (circuit breaker): after this many batches in a row failed on the vendor's
    # side (5xx, timeouts, no connection), the CRM pauses and one probe batch tests recovery,
    # first after OUTAGE_PROBE_SECONDS, then at doubling intervals up to the maximum.
    outage_failure_threshold: int = Field(default=5, ge=1)
    outage_probe_seconds: float = Field(default=30, gt=0)
    outage_max_probe_seconds: float = Field(default=600, gt=0)
    # Requests crmsync may send per vendor day (unset: no budget); the day starts at midnight in
    # DAILY_REQUEST_TIME_ZONE (HubSpot: the account's time zone, in its account settings).
    daily_request_limit: int | None = Field(default=None, ge=1)
    daily_request_time_zone: str = "UTC"
    # How long one vendor request may take before it counts as lost (a Retry).
    timeout_seconds: float = Field(default=30, gt=0, le=3600)
    # Region for phone numbers written without a country code (e.g. US); None leaves them out
    # where a vendor needs one (Brevo's SMS).
    default_phone_region: str | None = Field(
        default=None, validation_alias="CRMSYNC_DEFAULT_PHONE_REGION"
    )

    @field_validator(
        "sync_scheduler_interval_seconds",
        "sync_scheduler_interval_minutes",
        "sync_scheduler_batch_size",
        "sync_scheduler_max_instances",
        "sync_retry_delay_minutes",
        "sync_retry_delay_seconds",
        "daily_request_limit",
        mode="before",
    )
    @classmethod
    def _optional_numbers(cls, value: Any) -> Any:
        return _blank_to_none(value)

    @field_validator("daily_request_time_zone")
    @classmethod
    def _known_time_zone(cls, value: str) -> str:
        name = value.strip() or "UTC"
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not a time zone name: use an IANA name such as "
                "America/New_York or Europe/Paris (or UTC)"
            ) from None
        return name

    @model_validator(mode="after")
    def _probe_interval_order(self) -> CrmSettings:
        if self.outage_max_probe_seconds < self.outage_probe_seconds:
            raise ValueError(
                "OUTAGE_MAX_PROBE_SECONDS must be at least OUTAGE_PROBE_SECONDS "
                f"({self.outage_max_probe_seconds:g} < {self.outage_probe_seconds:g})"
            )
        return self

    @property
    def time_zone(self) -> ZoneInfo:
        """The zone whose midnight starts the vendor's day (for the daily request budget)."""
        return ZoneInfo(self.daily_request_time_zone)

    @field_validator("default_phone_region", mode="before")
    @classmethod
    def _phone_region(cls, value: Any) -> Any:
        value = _blank_to_none(value)
        if value is None:
            return None
        region = str(value).strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(
                f"CRMSYNC_DEFAULT_PHONE_REGION must be a two-letter region code such as US, GB "
                f"or FR, got {value!r}"
            )
        return region

    @property
    def interval_seconds(self) -> float:
        """Idle poll interval; `_SECONDS` wins over the work order's `_MINUTES`."""
        if self.sync_scheduler_interval_seconds is not None:
            return self.sync_scheduler_interval_seconds
        if self.sync_scheduler_interval_minutes is not None:
            return self.sync_scheduler_interval_minutes * 60
        return 5.0

    @property
    def retry_delay_seconds(self) -> float:
        """Base backoff delay; `_SECONDS` wins over the work order's `_MINUTES` (default 5 min)."""
        if self.sync_retry_delay_seconds is not None:
            return self.sync_retry_delay_seconds
        if self.sync_retry_delay_minutes is not None:
            return self.sync_retry_delay_minutes * 60
        return 300.0

    def missing(self) -> str | None:
        """Why this CRM cannot run (missing credentials), or None when it is configured."""
        raise NotImplementedError


class BrevoSettings(CrmSettings):
    model_config = _config("BREVO_")

    api_key: SecretStr | None = None
    api_base_url: str = "https://api.brevo.com/v3"
    list_id: int | None = None
    rate_limit_per_second: float = Field(default=10, ge=0)
    # At least this many due rows go through the asynchronous import endpoint.
    import_threshold: int = Field(default=500, ge=1)
    import_poll_seconds: float = Field(default=2.0, gt=0)
    # An import still running after this long is polled less often (within the limit Brevo
    # puts on /processes) until it ends or IMPORT_HARD_TIMEOUT_SECONDS passes; only then are
    # its rows sent one by one.
    import_timeout_seconds: float = Field(default=90.0, gt=0)
    import_hard_timeout_seconds: float = Field(default=3600.0, gt=0)

    @field_validator("list_id", mode="before")
    @classmethod
    def _list_id_is_a_number(cls, value: Any) -> Any:
        value = _blank_to_none(value)
        if isinstance(value, str) and not value.strip().isdigit():
            raise ValueError(f"BREVO_LIST_ID must be the numeric id of a Brevo list, got {value!r}")
        return value

    @model_validator(mode="after")
    def _hard_timeout_is_the_longer(self) -> BrevoSettings:
        if self.import_hard_timeout_seconds < self.import_timeout_seconds:
            raise ValueError(
                "BREVO_IMPORT_HARD_TIMEOUT_SECONDS must be at least BREVO_IMPORT_TIMEOUT_SECONDS "
                f"({self.import_hard_timeout_seconds:g} < {self.import_timeout_seconds:g})"
            )
        return self

    def missing(self) -> str | None:
        return None if self.api_key else "BREVO_API_KEY is not set"


class HubSpotSettings(CrmSettings):
    model_config = _config("HUBSPOT_")

    # HUBSPOT_API_KEY is the customer's name for the same private-app token.
    access_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("HUBSPOT_ACCESS_TOKEN", "HUBSPOT_API_KEY")
    )
    api_base_url: str = "https://api.hubapi.com"
    # HubSpot's Free/Starter limit is 100 requests per 10 s per app: pace at that by default.
    rate_limit_per_second: float = Field(default=10, ge=0)
    custom_property_domain_id: str = "scrapersky_domain_id"
    custom_property_page_id: str = "scrapersky_page_id"
    custom_property_email_type: str = "scrapersky_email_type"
    custom_property_source_url: str = "scrapersky_source_url"
    custom_property_has_gmail: str = "scrapersky_has_gmail"

    def missing(self) -> str | None:
        return None if self.access_token else "HUBSPOT_ACCESS_TOKEN is not set"


class MauticSettings(CrmSettings):
    model_config = _config("MAUTIC_")

    base_url: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    batch_size: int = Field(default=200, ge=1)
    # Custom field aliases in Mautic; an empty value leaves the field out.
    field_domain_id: str = "scrapersky_domain_id"
    field_page_id: str = "scrapersky_page_id"
    field_email_type: str = "scrapersky_email_type"
    field_source_url: str = "scrapersky_source_url"
    field_has_gmail: str = "scrapersky_has_gmail"

    def missing(self) -> str | None:
        if not self.base_url:
            return "MAUTIC_BASE_URL is not set"
        if self.username and self.password:
            return None
        if self.client_id and self.client_secret:
            return None
        return (
            "set MAUTIC_USERNAME and MAUTIC_PASSWORD, or MAUTIC_CLIENT_ID and MAUTIC_CLIENT_SECRET"
        )


class N8nSettings(CrmSettings):
    model_config = _config("N8N_")

    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    auth_header_name: str | None = None
    auth_header_value: SecretStr | None = None
    batch_size: int = Field(default=100, ge=1)

    def missing(self) -> str | None:
        return None if self.webhook_url else "N8N_WEBHOOK_URL is not set"


class Settings(BaseSettings):
    """Everything crmsync reads from its environment."""

    model_config = _config()

    database_url: str = DEFAULT_DATABASE_URL
    jwt_secret_key: SecretStr | None = None
    # When set, a token's `iss` must be this / its `aud` must name this (checked by auth.py).
    jwt_issuer: str | None = Field(default=None, validation_alias="CRMSYNC_JWT_ISSUER")
    jwt_audience: str | None = Field(default=None, validation_alias="CRMSYNC_JWT_AUDIENCE")
    state_dir: Path = Field(default=Path(".crmsync"), validation_alias="CRMSYNC_STATE_DIR")

    lease_seconds: float = Field(default=120, gt=0, validation_alias="CRMSYNC_LEASE_SECONDS")
    shutdown_grace_seconds: float = Field(
        default=30, ge=0, validation_alias="CRMSYNC_SHUTDOWN_GRACE_SECONDS"
    )
    event_retention_days: float = Field(
        default=30, gt=0, validation_alias="CRMSYNC_EVENT_RETENTION_DAYS"
    )
    resync_on_change: bool = Field(default=True, validation_alias="CRMSYNC_RESYNC_ON_CHANGE")
    # While a worker runs: how long a thread may hold the GIL before another that waits gets it
    # (`sys.setswitchinterval`; Python's default is 5 ms). 0 leaves Python's default alone.
    thread_switch_interval_ms: float = Field(
        default=0.2, ge=0, le=100, validation_alias="CRMSYNC_THREAD_SWITCH_INTERVAL_MS"
    )
    # On SQLite, a worker runs its queue transactions in a child process, on a core of its own.
    sqlite_writer_process: bool = Field(
        default=True, validation_alias="CRMSYNC_SQLITE_WRITER_PROCESS"
    )
    log_format: Literal["text", "json"] = Field(
        default="text", validation_alias="CRMSYNC_LOG_FORMAT"
    )
    log_level: str = Field(default="INFO", validation_alias="CRMSYNC_LOG_LEVEL")
    metrics_public: bool = Field(default=False, validation_alias="CRMSYNC_METRICS_PUBLIC")
    # Browser origins allowed to call the API (the customer's front end on another host).
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="CRMSYNC_CORS_ORIGINS"
    )
    access_log: bool = Field(default=False, validation_alias="CRMSYNC_ACCESS_LOG")
    # The longest an API statement may run (PostgreSQL statement_timeout, a progress handler on
    # SQLite); a request that needs longer is answered 503. 0 turns the limit off.
    statement_timeout_seconds: float = Field(
        default=30, ge=0, validation_alias="CRMSYNC_STATEMENT_TIMEOUT_SECONDS"
    )
    # A request body larger than this is refused (413) before it is read: the default holds a
    # 10,000-contact bulk request of ~3 KB per contact (typical contacts take a few hundred bytes).
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024, ge=4096, validation_alias="CRMSYNC_MAX_BODY_BYTES"
    )

    alert_webhook_url: str | None = Field(
        default=None, validation_alias="CRMSYNC_ALERT_WEBHOOK_URL"
    )
    alert_min_interval_seconds: float = Field(
        default=300, ge=0, validation_alias="CRMSYNC_ALERT_MIN_INTERVAL_SECONDS"
    )
    alert_error_rate: float = Field(
        default=0.2, ge=0, le=1, validation_alias="CRMSYNC_ALERT_ERROR_RATE"
    )
    alert_email_to: str | None = Field(default=None, validation_alias="CRMSYNC_ALERT_EMAIL_TO")
    alert_email_from: str = Field(
        default="crmsync@localhost", validation_alias="CRMSYNC_ALERT_EMAIL_FROM"
    )
    smtp_host: str = Field(default="localhost", validation_alias="SMTP_HOST")
    smtp_port: int = Field(default=25, validation_alias="SMTP_PORT")
    smtp_username: str | None = Field(default=None, validation_alias="SMTP_USERNAME")
    smtp_password: SecretStr | None = Field(default=None, validation_alias="SMTP_PASSWORD")
    # Unset: STARTTLS unless SMTP_HOST is this machine (alerts/alerter.py); false turns it off.
    smtp_starttls: bool | None = Field(default=None, validation_alias="SMTP_STARTTLS")
    # Implicit TLS from the first byte (usually port 465), instead of STARTTLS on 25/587.
    smtp_ssl: bool = Field(default=False, validation_alias="SMTP_SSL")
    smtp_timeout_seconds: float = Field(default=10, gt=0, validation_alias="SMTP_TIMEOUT_SECONDS")

    brevo: BrevoSettings = Field(default_factory=BrevoSettings)
    hubspot: HubSpotSettings = Field(default_factory=HubSpotSettings)
    mautic: MauticSettings = Field(default_factory=MauticSettings)
    n8n: N8nSettings = Field(default_factory=N8nSettings)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip().rstrip("/") for part in value.split(",") if part.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins_are_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(
                    f"CRMSYNC_CORS_ORIGINS: {origin!r} is not an origin like "
                    "https://app.example.com (scheme and host, no path)"
                )
        return value

    @field_validator(
        "jwt_secret_key",
        "jwt_issuer",
        "jwt_audience",
        "alert_webhook_url",
        "alert_email_to",
        "smtp_starttls",
        mode="before",
    )
    @classmethod
    def _optional_strings(cls, value: Any) -> Any:
        return _blank_to_none(value)

    @field_validator("jwt_secret_key")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        """A short HS256 secret can be guessed offline from any one token: refuse to start."""
        length = 0 if value is None else len(value.get_secret_value().encode())
        if value is not None and length < MIN_JWT_SECRET_BYTES:
            raise ValueError(
                f"JWT_SECRET_KEY is {length} bytes long; it must be at least "
                f"{MIN_JWT_SECRET_BYTES} bytes. Generate one with: "
                "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        return value

    def crm(self, name: Crm | str) -> CrmSettings:
        crm_settings: CrmSettings = getattr(self, Crm(name).value)
        return crm_settings

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
