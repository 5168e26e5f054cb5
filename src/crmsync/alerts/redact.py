"""A last line of defence: configured secrets never leave in an alert or a log line.

Alert text is built from vendor messages, which are secret-free by contract; this masks any
configured secret that slipped in anyway, and (as a logging filter on `httpx`) keeps the webhook
URL's secret path out of httpx's request log whatever the logging configuration.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from pydantic import BaseModel, SecretStr

from crmsync.alerts.messages import Alert
from crmsync.connectors.httputil import url_secrets
from crmsync.settings import Settings

MASK = "[redacted]"
# Shorter values are not masked: they would garble ordinary words (and are no real secret).
MIN_SECRET_CHARS = 8


class Redactor(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        kept = {s for s in secrets if len(s) >= MIN_SECRET_CHARS}
        # Longest first, so that a URL is masked whole before its path is.
        self.secrets = sorted(kept, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def alert(self, alert: Alert) -> Alert:
        return Alert(alert.kind, self(alert.subject), self(alert.body))

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def secrets_of(settings: Settings) -> list[str]:
    """Every secret in the settings: all `SecretStr` values, and the parts of both webhook URLs
    (alerts' and n8n's) that may be secret."""
    found: list[str] = []

    def walk(model: BaseModel) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, SecretStr):
                found.append(value.get_secret_value())
            elif isinstance(value, BaseModel):
                walk(value)

    walk(settings)
    found += url_secrets(settings.alert_webhook_url)
    found += url_secrets(settings.n8n.webhook_url)
    return [s for s in found if s]
