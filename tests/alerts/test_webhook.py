"""Alerts over real HTTP to a local Slack-style receiver, with a frozen clock."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from pydantic import SecretStr

from crmsync.alerts import Alerter, from_settings
from crmsync.alerts.channels import WebhookChannel
from crmsync.alerts.redact import MASK, Redactor, secrets_of
from crmsync.enums import Crm
from crmsync.settings import HubSpotSettings, Settings
from crmsync.sync.control import PauseKind
from crmsync.sync.state import Outcome, RowUpdate
from tests.alerts.receiver import SECRET_PATH, Receiver, eventually
from tests.sync.fakes import FrozenClock

HUB, BREVO, MAUTIC = Crm.hubspot, Crm.brevo, Crm.mautic
FAST = (0.05, 0.05)
HUB_TOKEN = "pat-na1-0123456789abcdef-SECRET"
SMTP_PASSWORD = "smtp-pa55word-SECRET"


def rows(outcome: Outcome, n: int, message: str = "Invalid email") -> list[RowUpdate]:
    return [RowUpdate(i, uuid.uuid4(), outcome, 4, message=f"{message} #{i}") for i in range(n)]


def make_settings(url: str, **extra: object) -> Settings:
    return Settings(
        alert_webhook_url=url,
        _env_file=None,  # type: ignore[call-arg]
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


AlerterFactory = Callable[..., Alerter]


@pytest.fixture
async def alerts(receiver: Receiver, clock: FrozenClock) -> AsyncIterator[AlerterFactory]:
    """Started alerters on the receiver (ticker off: the tests tick), closed at the end."""
    made: list[Alerter] = []

    def make(**extra: object) -> Alerter:
        alerter = from_settings(
            make_settings(receiver.url, **extra), clock=clock, tick_seconds=3600, retry_delays=FAST
        )
        assert alerter is not None
        made.append(alerter)
        return alerter

    yield make
    for alerter in made:
        await alerter.aclose()


async def settle(alerter: Alerter) -> None:
    async with asyncio.timeout(5):
        await alerter.wait_idle()


async def test_n_errors_in_one_interval_make_one_digest(
    alerts: AlerterFactory, receiver: Receiver, clock: FrozenClock
) -> None:
    alerter = alerts()
    await alerter.start()
    hub = rows(Outcome.error, 15) + rows(Outcome.ok, 80)  # 16 %: no error-rate alert
    await alerter.on_batch(HUB, hub)
    clock.advance(3)
    await alerter.on_batch(BREVO, rows(Outcome.error, 2, "Max retries exceeded"))
    await alerter.on_batch(HUB, rows(Outcome.unchanged, 10))
    alerter.tick()
    await settle(alerter)
    assert receiver.requests == 0  # still gathering the burst
    clock.advance(7)
    alerter.tick()
    [text] = await receiver.wait_for(1)
    lines = text.splitlines()
    assert lines[0] == "[crmsync] 17 contacts reached Error (hubspot 15, brevo 2)"
    assert "  hubspot  15" in lines and "  brevo    2" in lines
    shown = [line for line in lines if "#" in line]
    assert len(shown) == 10
    assert sum("Max retries exceeded" in line for line in shown) == 2  # brevo's are not hidden
    assert f"  hubspot  {hub[0].contact_id}  Invalid email #0" in lines
    assert "  ... and 7 more." in lines
    assert "GET /api/v3/crm/status/failed?crm=brevo" in text
    assert "`crmsync retry --crm hubspot --all-failed`" in text
    alerter.tick()
    await settle(alerter)
    assert receiver.requests == 1


async def test_errors_in_the_quiet_interval_arrive_in_the_next_digest(
    alerts: AlerterFactory, receiver: Receiver, clock: FrozenClock
) -> None:
    alerter = alerts()
    await alerter.start()
    await alerter.on_batch(HUB, rows(Outcome.error, 3))
    clock.advance(10)
    alerter.tick()
    await receiver.wait_for(1)
    clock.advance(30)
    await alerter.on_batch(HUB, rows(Outcome.error, 4))
    clock.advance(200)
    await alerter.on_batch(MAUTIC, rows(Outcome.error, 1, "Contact is locked"))
    clock.advance(69)
    alerter.tick()
    await settle(alerter)
    assert receiver.requests == 1  # 299 s after the first digest: quiet
    clock.advance(1)
    alerter.tick()
    texts = await receiver.wait_for(2)
    assert texts[1].splitlines()[0] == "[crmsync] 5 contacts reached Error (hubspot 4, mautic 1)"
    assert "Contact is locked #0" in texts[1] and "more." not in texts[1]


async def test_the_ticker_sends_a_due_digest_without_a_new_batch(
    receiver: Receiver, clock: FrozenClock
) -> None:
    settings = make_settings(receiver.url, alert_min_interval_seconds=60)
    alerter = from_settings(settings, clock=clock, tick_seconds=0.02)
    assert alerter is not None
    async with alerter:
        await alerter.on_batch(HUB, rows(Outcome.error, 2))
        clock.advance(10)
        [text] = await receiver.wait_for(1)
    assert text.startswith("[crmsync] hubspot: 2 contacts reached Error")
    assert "at most one every 1 min" in text


async def test_pending_errors_are_sent_on_shutdown(receiver: Receiver, clock: FrozenClock) -> None:
    alerter = from_settings(make_settings(receiver.url), clock=clock, tick_seconds=3600)
    assert alerter is not None
    async with alerter:
        await alerter.on_batch(HUB, rows(Outcome.error, 1))
    assert receiver.texts[0].startswith("[crmsync] hubspot: 1 contact reached Error")


async def test_auth_pause_alerts_at_once_and_is_not_repeated_within_the_interval(
    alerts: AlerterFactory, receiver: Receiver, clock: FrozenClock
) -> None:
    alerter = alerts(hubspot=HubSpotSettings(auth_retry_seconds=600))
    await alerter.start()
    reason = "HubSpot refused the access token (401): Authentication credentials not found"
    await alerter.on_pause(HUB, PauseKind.auth, reason)
    [text] = await receiver.wait_for(1)
    assert text.splitlines()[0] == "[crmsync] hubspot paused: authentication failed"
    assert f"Reason: {reason}" in text
    assert "Fix HUBSPOT_ACCESS_TOKEN" in text and "`crmsync resume --crm hubspot`" in text
    assert "every 10 min" in text  # HUBSPOT_AUTH_RETRY_SECONDS
    # Four batches in flight all fail the same way: one alert. Rate limits never alert.
    for _ in range(3):
        await alerter.on_pause(HUB, PauseKind.auth, reason)
    await alerter.on_pause(HUB, PauseKind.rate_limit, "429 Too Many Requests")
    clock.advance(299)
    await alerter.on_pause(HUB, PauseKind.auth, reason)
    await settle(alerter)
    assert receiver.requests == 1
    # Another CRM, or the same one for another reason, is news.
    await alerter.on_pause(MAUTIC, PauseKind.configuration, "MAUTIC_BASE_URL is not an http URL")
    texts = await receiver.wait_for(2)
    assert texts[1].splitlines()[0] == "[crmsync] mautic paused: configuration problem"
    clock.advance(1)  # 300 s after the first: a reminder is due
    await alerter.on_pause(HUB, PauseKind.auth, reason)
    texts = await receiver.wait_for(3)
    assert texts[2].splitlines()[0] == "[crmsync] hubspot paused: authentication failed"


async def test_error_rate_alerts_when_crossing_above_not_on_every_batch(
    alerts: AlerterFactory, receiver: Receiver, clock: FrozenClock
) -> None:
    alerter = alerts(alert_error_rate=0.25, alert_min_interval_seconds=600)
    await alerter.start()
    await alerter.on_batch(HUB, rows(Outcome.ok, 40))
    await alerter.on_batch(HUB, rows(Outcome.retry, 10, "HTTP 503 from HubSpot"))
    await settle(alerter)
    assert receiver.requests == 0  # 10 of 50: 20 %
    await alerter.on_batch(HUB, rows(Outcome.retry, 5, "HTTP 503 from HubSpot"))
    await settle(alerter)
    assert receiver.requests == 0  # held for the gather: an outage may be opening
    clock.advance(10)
    alerter.tick()
    [text] = await receiver.wait_for(1)
    assert text.splitlines()[0] == (
        "[crmsync] hubspot: error rate 27% over the last 15 min (threshold 25%)"
    )
    assert "15 of 55 rows pushed to hubspot failed (15 will be retried, 0 reached Error)" in text
    assert "Most recent failure: HTTP 503 from HubSpot #4" in text
    for _ in range(5):
        clock.advance(60)
        await alerter.on_batch(HUB, rows(Outcome.retry, 10))
    await settle(alerter)
    assert receiver.requests == 1
    clock.advance(290)  # 600 s after the alert, still above: one reminder
    await alerter.on_batch(HUB, rows(Outcome.retry, 10))
    clock.advance(10)
    alerter.tick()
    texts = await receiver.wait_for(2)
    assert "Still: in the last 15 minutes, 75 of 115 rows" in texts[1]
    clock.advance(16 * 60)
    await alerter.on_batch(HUB, rows(Outcome.ok, 30))
    texts = await receiver.wait_for(3)
    assert texts[2].splitlines()[0] == "[crmsync] hubspot: error rate back to 0% (threshold 25%)"


async def test_failed_delivery_is_retried_and_logged(
    alerts: AlerterFactory, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    alerter = alerts()
    await alerter.start()
    receiver.statuses.extend([500, 503])
    await alerter.on_pause(HUB, PauseKind.auth, "refused")
    [text] = await receiver.wait_for(1)
    assert text.startswith("[crmsync] hubspot paused")
    assert receiver.requests == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "alert delivery via webhook (127.0.0.1) failed (attempt 1 of 3): HTTP 500: no_service; "
        "retrying in 0.05 s",
        "alert delivery via webhook (127.0.0.1) failed (attempt 2 of 3): HTTP 503: no_service; "
        "retrying in 0.05 s",
    ]
    await settle(alerter)
    assert alerter.outboxes[0].sent == 1 and alerter.outboxes[0].failed == 0


async def test_delivery_gives_up_after_the_retries_and_at_once_on_a_4xx(
    alerts: AlerterFactory, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    alerter = alerts()
    await alerter.start()
    receiver.statuses.extend([500, 500, 500, 404])
    await alerter.on_pause(HUB, PauseKind.auth, "one")
    await alerter.on_pause(BREVO, PauseKind.auth, "two")
    await alerter.on_pause(MAUTIC, PauseKind.auth, "three")
    [text] = await receiver.wait_for(1)
    assert text.startswith("[crmsync] mautic paused")
    assert receiver.requests == 5  # 3 tries for the first alert, 1 for the second, 1 for the last
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "alert '[crmsync] hubspot paused: authentication failed' not delivered via webhook "
        "(127.0.0.1) after 3 attempt(s): HTTP 500: no_service; dropped",
        "alert '[crmsync] brevo paused: authentication failed' not delivered via webhook "
        "(127.0.0.1) after 1 attempt(s): HTTP 404: no_service; dropped",
    ]
    assert alerter.outboxes[0].failed == 2


async def test_an_unreachable_webhook_is_retried_too(
    clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    closed = Receiver()  # never started: nothing listens on the port
    closed.port = 9
    alerter = from_settings(make_settings(closed.url), clock=clock, retry_delays=(0.01,))
    assert alerter is not None
    async with alerter:
        await alerter.on_pause(HUB, PauseKind.auth, "refused")
        await settle(alerter)
    assert alerter.outboxes[0].failed == 1
    assert "after 2 attempt(s): ConnectError; dropped" in caplog.text


async def test_a_hanging_receiver_never_slows_the_listeners(
    receiver: Receiver, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.hang = True
    channel = WebhookChannel(receiver.url)
    alerter = Alerter(
        [channel], min_interval=0, error_rate=0.2, clock=clock, capacity=5, flush_seconds=0.2
    )
    await alerter.start()
    try:
        await alerter.on_pause(HUB, PauseKind.auth, "first")
        await eventually(lambda: receiver.requests == 1)  # the first delivery is stuck there
        batch = rows(Outcome.error, 100) + rows(Outcome.retry, 100)
        slowest = 0.0
        started = time.perf_counter()
        for i in range(200):
            t0 = time.perf_counter()
            await alerter.on_batch(HUB, batch)  # interval 0: a digest every time
            await alerter.on_pause(BREVO, PauseKind.configuration, f"reason {i}")
            slowest = max(slowest, time.perf_counter() - t0)
        total = time.perf_counter() - started
        # A listener that waited for the hanging delivery would take the webhook's own 10 s
        # timeout. The bounds sit far below that and far above a loaded CI machine's pauses
        # (one call took 0.11 s in a fresh clone's first run there): a wall-clock test must not
        # fail on scheduling noise.
        assert slowest < 1.0, slowest
        assert total < 5.0, total
        outbox = alerter.outboxes[0]
        # Interval 0: each round queues a digest, an error-rate alert and a pause alert. The
        # queue stays bounded: one alert in flight, 5 waiting, the older ones dropped, counted
        # and logged (a line per 100, not per alert).
        assert outbox.waiting == 5 and receiver.received == []
        assert outbox.dropped == 1 + 3 * 200 - 1 - 5
        full = [r for r in caplog.records if "is full" in r.getMessage()]
        assert len(full) == 6 and full[-1].getMessage().endswith("; 500 dropped so far")
    finally:
        receiver.release()
        await alerter.aclose()


async def test_no_configured_secret_reaches_the_alert_or_the_logs(
    alerts: AlerterFactory, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    alerter = alerts(
        hubspot=HubSpotSettings(access_token=SecretStr(HUB_TOKEN)),
        smtp_password=SecretStr(SMTP_PASSWORD),
        alert_min_interval_seconds=0,
    )
    await alerter.start()
    # Vendor messages are secret-free by contract; if one were not, it is masked anyway.
    leaky = f"token {HUB_TOKEN} rejected; webhook {receiver.url}"
    receiver.statuses.append(500)
    await alerter.on_pause(HUB, PauseKind.auth, leaky)
    await alerter.on_batch(HUB, rows(Outcome.error, 1, leaky))
    alerter.tick()
    texts = await receiver.wait_for(2)
    assert receiver.paths == [SECRET_PATH] * 3  # the secret path was used, not shown
    for text in texts:
        assert f"token {MASK} rejected; webhook {MASK}" in text
    everything = "\n".join(texts) + caplog.text
    for secret in (HUB_TOKEN, SMTP_PASSWORD, SECRET_PATH, "s3cr3tW3bh00kT0k3n"):
        assert secret not in everything
    assert "webhook (127.0.0.1)" in caplog.text  # what the logs say instead


def test_secrets_come_from_every_secret_setting() -> None:
    settings = make_settings(
        "https://hooks.example.com/services/T1/B2/abcdefgh",
        hubspot=HubSpotSettings(access_token=SecretStr(HUB_TOKEN)),
        smtp_password=SecretStr(SMTP_PASSWORD),
        jwt_secret_key=SecretStr("j" * 40),
    )
    redact = Redactor(secrets_of(settings))
    text = f"{HUB_TOKEN} {SMTP_PASSWORD} {'j' * 40} /services/T1/B2/abcdefgh short"
    assert redact(text) == f"{MASK} {MASK} {MASK} {MASK} short"


def test_no_channel_means_no_alerter() -> None:
    assert from_settings(Settings(_env_file=None)) is None
    assert from_settings(make_settings("not a url")) is None


async def test_an_outage_is_one_alert_not_an_error_rate_and_its_all_clear(
    alerts: AlerterFactory, receiver: Receiver, clock: FrozenClock
) -> None:
    alerter = alerts(alert_error_rate=0.2)
    await alerter.start()
    # The batches that open the breaker fail first: the error rate crosses at once...
    await alerter.on_batch(HUB, rows(Outcome.retry, 100, "HubSpot answered 503"))
    clock.advance(2)
    # ...and the outage follows within seconds: its alert is the only one.
    await alerter.on_pause(HUB, PauseKind.outage, "HubSpot answered 503: unavailable")
    [text] = await receiver.wait_for(1)
    assert text.splitlines()[0] == "[crmsync] hubspot paused: vendor outage"
    assert "Last failure: HubSpot answered 503: unavailable" in text
    assert "HUBSPOT_OUTAGE_PROBE_SECONDS" in text
    clock.advance(60)
    alerter.tick()
    # Batches pushed before the outage began may still be recorded: not judged now.
    await alerter.on_batch(HUB, rows(Outcome.retry, 50, "HubSpot answered 503"))
    clock.advance(60)
    alerter.tick()
    await alerter.on_outage(HUB, False)
    # After recovery the rows go through: no "back to normal" for a rate never announced.
    await alerter.on_batch(HUB, rows(Outcome.ok, 100))
    clock.advance(60)
    alerter.tick()
    await settle(alerter)
    assert receiver.texts == [text]
