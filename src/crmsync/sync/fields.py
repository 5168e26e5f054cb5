"""The worker's field check: a CRM's custom fields must exist before contacts go to it.

Brevo and Mautic silently drop values for fields that do not exist; a sync would mark contacts
Complete with their data missing. So before a CRM's first batch, and again whenever it resumes
from a pause that was not a rate limit (an operator's pause, refused credentials, a configuration
problem, an outage), the worker reads the vendor's field list once (`connectors.fields`). If a
field is missing, the CRM is paused as a configuration problem with a reason that says what to
run ("Brevo attribute DOMAIN_ID does not exist: run crmsync setup brevo"); contacts stay Queued,
no attempt is spent. The pause lasts `{CRM}_AUTH_RETRY_SECONDS`, then the check runs again;
`crmsync resume` after `crmsync setup` makes it run at once.

A connector without fields (n8n, or a test double) is never checked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from crmsync.connectors.base import (
    AuthFailed,
    Connector,
    ConnectorError,
    RateLimited,
    Transient,
)
from crmsync.connectors.fields import HasFields, missing_fields, missing_reason
from crmsync.sync.control import PauseKind

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Pause:
    """Pause the CRM (until `{CRM}_AUTH_RETRY_SECONDS` from now) for this reason."""

    kind: PauseKind
    reason: str


@dataclass(frozen=True, slots=True)
class Wait:
    """The check could not run (vendor down, rate limited): try again in `seconds`.

    `vendor_down` when the vendor failed the read (5xx, timeout, no connection): the worker
    counts it toward the outage breaker like a failed batch, so an outage that starts before a
    CRM's first batch still opens the breaker instead of being checked for ever.
    """

    seconds: float | None  # None: the CRM's poll interval
    reason: str
    vendor_down: bool = False


class FieldGate:
    """Whether one CRM's fields still need a look, and the look itself."""

    def __init__(self, connector: Connector) -> None:
        self._connector = connector if isinstance(connector, HasFields) else None
        self.pending = self._connector is not None

    def forget(self) -> None:
        """The CRM was paused: look again before it syncs again."""
        if self._connector is not None:
            self.pending = True

    async def check(self) -> Pause | Wait | None:
        """None when every field exists (or the CRM has none); else what to do instead."""
        if self._connector is None:
            self.pending = False
            return None
        try:
            api = self._connector.field_api()
            missing = await missing_fields(api)
        except AuthFailed as exc:
            return Pause(PauseKind.auth, exc.message)
        except RateLimited as exc:
            return Wait(exc.retry_after, exc.message)
        except ConnectorError as exc:
            # A wrong URL would fail every push the same way: pause rather than hammer it.
            if exc.http_status in (404, 405):
                return Pause(PauseKind.configuration, exc.message)
            vendor_down = isinstance(exc, Transient) or (exc.http_status or 0) >= 500
            return Wait(None, exc.message, vendor_down)
        if missing:
            return Pause(PauseKind.configuration, missing_reason(api.crm, missing))
        self.pending = False
        log.info("%s: every custom field crmsync writes exists", api.crm.value)
        return None
