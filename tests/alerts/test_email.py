"""E-mail alerts against a real local SMTP server (aiosmtpd), and beside a failing webhook."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import socket
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from pydantic import SecretStr

from crmsync.alerts import from_settings
from crmsync.enums import Crm
from crmsync.settings import Settings
from crmsync.sync.control import PauseKind
from tests.alerts.receiver import Receiver, eventually
from tests.sync.fakes import FrozenClock

PASSWORD = "smtp-pa55word-SECRET"


class Inbox:
    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.logins: list[tuple[str, str]] = []

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 OK"

    def authenticate(
        self, server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        login = (data.login.decode(), data.password.decode())
        self.logins.append(login)
        return AuthResult(success=login == ("alerts", PASSWORD), handled=False)

    def messages(self) -> list[EmailMessage]:
        out = []
        for envelope in self.envelopes:
            raw = envelope.original_content or b""
            parsed = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            out.append(parsed)
        return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    handler = Inbox()
    port = _free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        authenticator=handler.authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def email_settings(port: int, **extra: object) -> Settings:
    return Settings(
        alert_email_to=" ops@example.com, oncall@example.com ,",
        alert_email_from="crmsync@example.com",
        smtp_host="127.0.0.1",
        smtp_port=port,
        _env_file=None,  # type: ignore[call-arg]
        **extra,  # type: ignore[arg-type]
    )


async def wait_for_mail(handler: Inbox, count: int) -> list[EmailMessage]:
    await eventually(lambda: len(handler.envelopes) >= count)  # aiosmtpd runs in a thread
    return handler.messages()


async def test_the_alert_arrives_by_email_with_subject_body_and_recipients(
    inbox: tuple[Inbox, int], caplog: pytest.LogCaptureFixture
) -> None:
    handler, port = inbox
    caplog.set_level(logging.DEBUG)
    settings = email_settings(port, smtp_username="alerts", smtp_password=SecretStr(PASSWORD))
    alerter = from_settings(settings, clock=FrozenClock())
    assert alerter is not None
    async with alerter:
        await alerter.on_pause(Crm.brevo, PauseKind.auth, "Brevo refused the API key (401)")
        [message] = await wait_for_mail(handler, 1)
    envelope = handler.envelopes[0]
    assert handler.logins == [("alerts", PASSWORD)]
    assert envelope.mail_from == "crmsync@example.com"
    assert envelope.rcpt_tos == ["ops@example.com", "oncall@example.com"]
    assert message["Subject"] == "[crmsync] brevo paused: authentication failed"
    assert message["From"] == "crmsync@example.com"
    assert message["To"] == "ops@example.com, oncall@example.com"
    assert message["Auto-Submitted"] == "auto-generated"
    body = message.get_content()
    assert body.startswith("brevo refused crmsync's credentials")
    assert "Reason: Brevo refused the API key (401)" in body
    assert "Fix BREVO_API_KEY" in body and "`crmsync resume --crm brevo`" in body
    assert PASSWORD not in str(message) and PASSWORD not in caplog.text
    assert "alert '[crmsync] brevo paused: authentication failed' sent via e-mail to 2 " in (
        caplog.text
    )


async def test_a_refused_login_is_logged_and_not_retried(
    inbox: tuple[Inbox, int], caplog: pytest.LogCaptureFixture
) -> None:
    handler, port = inbox
    settings = email_settings(port, smtp_username="alerts", smtp_password=SecretStr("wrong-one"))
    alerter = from_settings(settings, clock=FrozenClock(), retry_delays=(0.01, 0.01))
    assert alerter is not None
    async with alerter:
        await alerter.on_pause(Crm.brevo, PauseKind.auth, "refused")
        async with asyncio.timeout(5):
            await alerter.wait_idle()
    # smtplib tries each mechanism the server offers (PLAIN, LOGIN); no retry after that.
    assert set(handler.logins) == {("alerts", "wrong-one")} and len(handler.logins) == 2
    assert handler.envelopes == []
    assert "after 1 attempt(s): SMTP login refused (535); dropped" in caplog.text


async def test_email_still_arrives_while_the_webhook_fails(
    inbox: tuple[Inbox, int], receiver: Receiver
) -> None:
    handler, port = inbox
    receiver.statuses.extend([500] * 10)
    settings = email_settings(port, alert_webhook_url=receiver.url)
    alerter = from_settings(settings, clock=FrozenClock(), retry_delays=(0.5, 0.5))
    assert alerter is not None
    async with alerter:
        await alerter.on_pause(Crm.hubspot, PauseKind.configuration, "missing property")
        [message] = await wait_for_mail(handler, 1)
        assert receiver.requests == 1  # the webhook is still waiting to retry
    assert message["Subject"] == "[crmsync] hubspot paused: configuration problem"
    assert "`crmsync setup hubspot`" in message.get_content()
