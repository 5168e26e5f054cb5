"""E-mail alerts use STARTTLS unless the mail server is on this machine or it is switched off."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiosmtpd.controller import Controller

from crmsync.alerts import channels
from crmsync.alerts.alerter import from_settings
from crmsync.alerts.messages import Alert, Kind
from crmsync.settings import Settings
from tests.alerts.test_email import Inbox, _free_port

ALERT = Alert(Kind.paused, "subject", "body")


def _smtp(monkeypatch: pytest.MonkeyPatch, **env: str) -> channels.SmtpConfig:
    monkeypatch.setenv("CRMSYNC_ALERT_EMAIL_TO", "ops@example.com")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    alerter = from_settings(Settings(_env_file=None))  # type: ignore[call-arg]
    assert alerter is not None
    [outbox] = alerter.outboxes
    channel = outbox.channel
    assert isinstance(channel, channels.EmailChannel)
    return channel._smtp


@pytest.mark.parametrize(
    ("env", "starttls"),
    [
        ({"SMTP_HOST": "smtp.example.com"}, True),  # a remote server: TLS by default
        ({"SMTP_HOST": "10.0.0.5", "SMTP_PORT": "25"}, True),
        ({"SMTP_HOST": "smtp.example.com", "SMTP_STARTTLS": "false"}, False),  # switched off
        ({"SMTP_HOST": "smtp.example.com", "SMTP_STARTTLS": ""}, True),  # blank: the default
        ({"SMTP_HOST": "smtp.example.com", "SMTP_SSL": "true"}, False),  # TLS from the start
        ({}, False),  # the default host: localhost
        ({"SMTP_HOST": "127.0.0.1"}, False),
        ({"SMTP_HOST": "::1"}, False),
        ({"SMTP_HOST": "mail.localhost"}, False),
        ({"SMTP_HOST": "localhost", "SMTP_STARTTLS": "true"}, True),  # asked for explicitly
    ],
)
def test_starttls_unless_local_or_switched_off(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], starttls: bool
) -> None:
    assert _smtp(monkeypatch, **env).starttls is starttls


@pytest.fixture
def plain_server() -> Iterator[tuple[Inbox, int]]:
    handler, port = Inbox(), _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)  # no TLS at all
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


async def test_a_server_without_starttls_is_refused_with_a_way_out(
    plain_server: tuple[Inbox, int],
) -> None:
    handler, port = plain_server
    channel = channels.EmailChannel(
        channels.SmtpConfig("127.0.0.1", port, starttls=True), "crmsync@example.com", ["o@x.io"]
    )
    with pytest.raises(channels.DeliveryError, match="SMTP_STARTTLS=false") as caught:
        await channel.send(ALERT)
    assert not caught.value.retryable
    assert handler.envelopes == []  # nothing was sent in the clear
