"""Where alerts go: a Slack-compatible webhook and e-mail over SMTP, behind one interface.

A channel's `send` delivers one alert or raises `DeliveryError`, saying whether trying again may
help. Its `name` is safe to log: a webhook is named by its host only, because the path of a
Slack-style URL is its secret.
"""

from __future__ import annotations

import asyncio
import email.utils
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol

import httpx

from crmsync.alerts.messages import Alert
from crmsync.connectors.base import make_client

WEBHOOK_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


class DeliveryError(Exception):
    """An alert was not delivered. `retryable`: the same request may work later."""

    def __init__(self, message: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class Channel(Protocol):
    kind: str  # "webhook" or "email" (a metric label)
    name: str  # for logs; never a secret

    async def send(self, alert: Alert) -> None: ...

    async def aclose(self) -> None: ...


class WebhookChannel:
    """POSTs `{"text": ...}`, which Slack, Mattermost, Rocket.Chat and others all accept."""

    kind = "webhook"

    def __init__(self, url: str, client: httpx.AsyncClient | None = None) -> None:
        self._url = url
        self.name = f"webhook ({httpx.URL(url).host})"
        self._client = client or make_client(max_connections=2)

    async def send(self, alert: Alert) -> None:
        try:
            response = await self._client.post(
                self._url, json={"text": alert.text}, timeout=WEBHOOK_TIMEOUT
            )
        except httpx.TimeoutException:
            raise DeliveryError("timed out", retryable=True) from None
        except httpx.HTTPError as exc:
            # The exception's own text can hold the URL; its type says enough.
            raise DeliveryError(type(exc).__name__, retryable=True) from None
        status = response.status_code
        if 200 <= status < 300:
            return
        detail = " ".join(response.text.split())[:200]
        retryable = status in (408, 425, 429) or status >= 500
        raise DeliveryError(
            f"HTTP {status}: {detail}" if detail else f"HTTP {status}",
            retryable,
            _retry_after(response.headers.get("Retry-After")),
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: the backoff will do


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    ssl: bool = False
    timeout: float = 10.0


class EmailChannel:
    """One plain-text message per alert, to every recipient, through `smtplib` in a thread."""

    kind = "email"

    def __init__(self, smtp: SmtpConfig, sender: str, recipients: Sequence[str]) -> None:
        self._smtp = smtp
        self._sender = sender
        self._recipients = list(recipients)
        count = len(self._recipients)
        self.name = f"e-mail to {count} recipient{'s' if count != 1 else ''} via {smtp.host}"

    def message(self, alert: Alert) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = alert.subject
        msg["From"] = self._sender
        msg["To"] = ", ".join(self._recipients)
        msg["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = email.utils.make_msgid(domain=self._sender.rpartition("@")[2] or None)
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to alerts
        msg.set_content(alert.body)
        return msg

    async def send(self, alert: Alert) -> None:
        # The socket timeout bounds the thread, so shutdown never waits on it for long.
        await asyncio.to_thread(self._send, self.message(alert))

    def _send(self, msg: EmailMessage) -> None:
        smtp = self._smtp
        try:
            client: smtplib.SMTP
            if smtp.ssl:
                context = ssl.create_default_context()
                client = smtplib.SMTP_SSL(
                    smtp.host, smtp.port, timeout=smtp.timeout, context=context
                )
            else:
                client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout)
            with client:
                if smtp.starttls and not smtp.ssl:
                    client.starttls(context=ssl.create_default_context())
                if smtp.username:
                    client.login(smtp.username, smtp.password or "")
                client.send_message(msg, self._sender, self._recipients)
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"SMTP login refused ({exc.smtp_code})", retryable=False) from None
        except smtplib.SMTPRecipientsRefused as exc:
            refused = ", ".join(sorted(exc.recipients))
            raise DeliveryError(f"recipients refused: {refused}", retryable=False) from None
        except smtplib.SMTPNotSupportedError as exc:
            hint = (
                " (set SMTP_SSL=true for a server that speaks TLS from the start, or "
                "SMTP_STARTTLS=false if the path to it is trusted)"
                if smtp.starttls
                else ""
            )
            raise DeliveryError(
                f"not supported by the server: {exc}{hint}", retryable=False
            ) from None
        except smtplib.SMTPResponseException as exc:
            # 4xx: try later; 5xx: the server will say the same again.
            text = (
                exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else ""
            )
            raise DeliveryError(
                f"SMTP {exc.smtp_code}: {' '.join(text.split())[:200]}",
                retryable=exc.smtp_code < 500,
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            # Connection refused or reset, timeout, TLS failure, server went away.
            raise DeliveryError(f"{type(exc).__name__}: {exc}", retryable=True) from None

    async def aclose(self) -> None:
        return None
