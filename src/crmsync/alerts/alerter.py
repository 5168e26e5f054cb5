"""The alerter: the worker's listeners on one side, the delivery outboxes on the other.

`on_batch` and `on_pause` run inline in the sync (awaited by the worker after each batch), so
they only update in-memory counters and queue text; they never touch the network.

A vendor outage is one incident and gets one alert: an error-rate alert is held for
`rules.GATHER_SECONDS` (the failing batches that open the outage breaker come within seconds)
and dropped if the CRM's outage is seen meanwhile (by this process's workers; the alert itself
comes from the worker that opened the breaker, in whatever process); the failures the outage
explains leave the error-rate window, so its recovery announces no rate "back to normal" either.

A ticker task sends a digest (or held alert) that became due while no batch came by. Lifecycle:
`start()` in a running loop, `aclose()` after the worker stopped (it sends what is still
collected, with a short timeout); or `async with alerter:`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import socket
from collections.abc import Mapping, Sequence
from types import TracebackType

import httpx

from crmsync.alerts import messages, rules
from crmsync.alerts.channels import Channel, EmailChannel, SmtpConfig, WebhookChannel
from crmsync.alerts.outbox import RETRY_DELAYS, Outbox
from crmsync.alerts.redact import Redactor, secrets_of
from crmsync.clock import Clock, utcnow
from crmsync.enums import Crm
from crmsync.settings import Settings
from crmsync.sync.control import PauseKind
from crmsync.sync.state import RowUpdate

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0
FLUSH_SECONDS = 5.0


class Alerter:
    def __init__(
        self,
        channels: Sequence[Channel],
        *,
        min_interval: float,
        error_rate: float,
        auth_retry_seconds: Mapping[Crm, float] | None = None,
        redact: Redactor | None = None,
        clock: Clock = utcnow,
        source: str | None = None,
        tick_seconds: float = TICK_SECONDS,
        flush_seconds: float = FLUSH_SECONDS,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        capacity: int | None = None,
    ) -> None:
        self.min_interval = min_interval
        self.clock = clock
        self.source = source or f"crmsync on {socket.gethostname()}"
        self._redact = redact or Redactor(())
        self._retry_seconds = dict(auth_retry_seconds or {})
        self._tick_seconds = tick_seconds
        self._flush_seconds = flush_seconds
        extra = {} if capacity is None else {"capacity": capacity}
        self.outboxes = [
            Outbox(c, self._redact, retry_delays=retry_delays, **extra) for c in channels
        ]
        self.digest = rules.ErrorDigest(min_interval)
        self.rate = rules.ErrorRateWatch(error_rate, min_interval)
        self.pauses = rules.Dedup(min_interval)
        self.gather = dt.timedelta(seconds=min(rules.GATHER_SECONDS, min_interval))
        # Error-rate alerts waiting out the gather, by CRM: (due, alert).
        self._held: dict[Crm, tuple[dt.datetime, messages.Alert]] = {}
        # CRMs a worker of this process sees in an outage: their failures are not judged.
        self._outages: set[Crm] = set()
        self._ticker: asyncio.Task[None] | None = None

    # -- the worker's listeners (inline in the sync: memory only) --------------------------------

    async def on_batch(self, crm: Crm, updates: Sequence[RowUpdate]) -> None:
        now = self.clock()
        self.digest.add(crm, updates, now)
        change = None if crm in self._outages else self.rate.add(crm, updates, now)
        if change is not None:
            if change.above:
                alert = messages.rate_alert(
                    change.reading, change.again, self.min_interval, self.source, now
                )
                self._held[crm] = (now + self.gather, alert)
            elif self._held.pop(crm, None) is None:  # an alert never sent needs no all-clear
                self.emit(messages.rate_ok_alert(change.reading, self.source, now))
        self.tick()

    async def on_pause(self, crm: Crm, kind: PauseKind, reason: str) -> None:
        if kind is PauseKind.rate_limit:
            return  # routine: the worker waits and goes on by itself
        now = self.clock()
        if kind is PauseKind.outage:
            await self.on_outage(crm, True)
        if self.pauses.allow((crm, kind, reason), now):
            retry = self._retry_seconds.get(crm, 300.0)
            self.emit(messages.pause_alert(crm, kind.value, reason, retry, self.source, now))

    async def on_outage(self, crm: Crm, down: bool) -> None:
        """A worker saw the CRM's outage begin (`down`) or end. The outage alert explains the
        failures around it: a held error-rate alert is dropped, failures are not judged while
        it lasts, and the rate starts afresh on both sides of it."""
        if down:
            self._outages.add(crm)
            self._held.pop(crm, None)
        else:
            self._outages.discard(crm)
        self.rate.forget(crm)

    # -- sending ---------------------------------------------------------------------------------

    def tick(self, force: bool = False) -> None:
        """Queue the error digest and held error-rate alerts that are due (all, with `force`)."""
        now = self.clock()
        for crm, (due, alert) in list(self._held.items()):
            if force or due <= now:
                del self._held[crm]
                self.emit(alert)
        digest = self.digest.take(now, force)
        if digest is not None:
            self.emit(messages.digest_alert(digest, self.min_interval, self.source))

    def emit(self, alert: messages.Alert) -> None:
        alert = self._redact.alert(alert)
        log.info("alert: %s", alert.subject)
        for outbox in self.outboxes:
            outbox.put(alert)

    async def wait_idle(self) -> None:
        """Return once every queued alert was delivered or given up (bound it with a timeout)."""
        await asyncio.gather(*(o.wait_idle() for o in self.outboxes))

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        logging.getLogger("httpx").addFilter(self._redact)
        for outbox in self.outboxes:
            outbox.start()
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_forever(), name="alerts:tick")
        log.info("alerts go to %s", ", ".join(o.channel.name for o in self.outboxes))

    async def aclose(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        self.tick(force=True)  # errors still collected go out now rather than never
        await asyncio.gather(*(o.aclose(self._flush_seconds) for o in self.outboxes))
        logging.getLogger("httpx").removeFilter(self._redact)

    async def __aenter__(self) -> Alerter:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self._tick_seconds)
            try:
                self.tick()
            except Exception:
                log.exception("alert digest failed")


def from_settings(
    settings: Settings,
    *,
    clock: Clock = utcnow,
    tick_seconds: float = TICK_SECONDS,
    retry_delays: Sequence[float] = RETRY_DELAYS,
) -> Alerter | None:
    """The alerter the settings ask for, or None when no channel is configured."""
    channels: list[Channel] = []
    url = settings.alert_webhook_url
    if url:
        if _is_http(url):
            channels.append(WebhookChannel(url))
        else:
            log.error("CRMSYNC_ALERT_WEBHOOK_URL is not an http(s) URL: webhook alerts are off")
    recipients = [r.strip() for r in (settings.alert_email_to or "").split(",") if r.strip()]
    if recipients:
        smtp = SmtpConfig(
            settings.smtp_host,
            settings.smtp_port,
            settings.smtp_username or None,
            settings.smtp_password.get_secret_value() if settings.smtp_password else None,
            uses_starttls(settings),
            settings.smtp_ssl,
            settings.smtp_timeout_seconds,
        )
        channels.append(EmailChannel(smtp, settings.alert_email_from, recipients))
    if not channels:
        return None
    return Alerter(
        channels,
        min_interval=settings.alert_min_interval_seconds,
        error_rate=settings.alert_error_rate,
        auth_retry_seconds={crm: settings.crm(crm).auth_retry_seconds for crm in Crm},
        redact=Redactor(secrets_of(settings)),
        clock=clock,
        tick_seconds=tick_seconds,
        retry_delays=retry_delays,
    )


def uses_starttls(settings: Settings) -> bool:
    """STARTTLS unless SMTP_STARTTLS=false, TLS from the start (SMTP_SSL) or a server on this
    machine: a password and the alerts' text never cross a network in the clear by default."""
    if settings.smtp_ssl:
        return False
    if settings.smtp_starttls is not None:
        return settings.smtp_starttls
    return not is_local_host(settings.smtp_host)


def is_local_host(host: str) -> bool:
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_http(url: str) -> bool:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host)
