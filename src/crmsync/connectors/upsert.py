"""What the batch-upsert connectors (HubSpot, Mautic) share: the contact's custom fields, and
one push fanned out over several vendor requests with its results collected by email.

Both vendors take a batch as one JSON array and answer per item, but a push may need more than one
request (chunks over the vendor's limit, halves while isolating a bad row). `PushRun` holds what
those requests share:

- rows are deduplicated by email (case-insensitive): an email is sent once and every row that
  carries it gets the same result;
- results are collected by that email key as answers arrive, in any order;
- the first batch-wide error (rate limit, refused credentials) stops requests that have not been
  sent yet, and is re-raised with `partial` set, so answers already received are not lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Sequence

from crmsync.connectors.base import (
    AuthFailed,
    ConnectorError,
    ContactPayload,
    Misconfigured,
    RateLimited,
    Retry,
    RowResult,
)
from crmsync.connectors.mapping import is_placeholder

# The customer's custom fields, by the suffix of their setting (HUBSPOT_CUSTOM_PROPERTY_<X>,
# MAUTIC_FIELD_<X>), with the label a created HubSpot property gets.
CUSTOM_FIELDS: dict[str, str] = {
    "domain_id": "ScraperSky domain ID",
    "page_id": "ScraperSky page ID",
    "email_type": "ScraperSky email type",
    "source_url": "ScraperSky source URL",
    "has_gmail": "ScraperSky has Gmail",
}


def custom_values(contact: ContactPayload) -> dict[str, str | bool]:
    """The contact's custom field values by `CUSTOM_FIELDS` key; missing values left out.

    `email_type` is an enum, so "UNKNOWN" is a value here, not a placeholder.
    """
    values: dict[str, str | bool] = {}
    if contact.domain_id is not None:
        values["domain_id"] = str(contact.domain_id)
    if contact.page_id is not None:
        values["page_id"] = str(contact.page_id)
    if contact.email_type and contact.email_type.strip():
        values["email_type"] = contact.email_type.strip()
    if contact.source_url is not None and not is_placeholder(contact.source_url):
        values["source_url"] = contact.source_url.strip()
    if contact.has_gmail is not None:
        values["has_gmail"] = contact.has_gmail
    return values


def email_key(email: str) -> str:
    """The identity of a contact at the vendors: its email, trimmed, case-insensitive."""
    return email.strip().lower()


def chunked(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i : i + size]) for i in range(0, len(items), max(1, size))]


def halves(items: Sequence[str]) -> list[list[str]]:
    middle = (len(items) + 1) // 2
    return [list(items[:middle]), list(items[middle:])]


class Budget:
    """How many extra requests a push may still spend on splitting a refused batch."""

    def __init__(self, requests: int) -> None:
        self.left = requests

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


# When several requests of one push fail batch-wide, the most severe error is raised.
_SEVERITY: tuple[type[ConnectorError], ...] = (AuthFailed, Misconfigured, RateLimited)


class PushRun:
    """The state of one `push`: unique contacts by email key and their results so far."""

    def __init__(self, batch: Sequence[ContactPayload]) -> None:
        self.row_keys = [email_key(contact.email) for contact in batch]
        # The first row of each email stands for all rows with that email.
        self.contacts: dict[str, ContactPayload] = {}
        for key, contact in zip(self.row_keys, batch, strict=True):
            self.contacts.setdefault(key, contact)
        self.results: dict[str, RowResult] = {}
        self._stopped: ConnectorError | None = None

    @property
    def keys(self) -> list[str]:
        """Unique email keys, in the order of their first row."""
        return list(self.contacts)

    def set(self, keys: Iterable[str], result: RowResult) -> None:
        for key in keys:
            self.results[key] = result

    def check(self) -> None:
        """Raise the batch-wide error that stopped this push, if any (call before each send)."""
        if self._stopped is not None:
            raise self._stopped

    async def run(self, requests: Iterable[Awaitable[None]]) -> list[RowResult]:
        """Await the requests concurrently; one result per input row, in input order.

        A request records its rows' results with `set` or raises a `ConnectorError`. The most
        severe such error is re-raised once all requests have settled, carrying `partial`.
        """
        outcomes = await asyncio.gather(
            *(self._guard(request) for request in requests), return_exceptions=True
        )
        errors: list[ConnectorError] = []
        for outcome in outcomes:
            if isinstance(outcome, ConnectorError):
                errors.append(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
        if errors:
            raise self._with_partial(_most_severe(errors))
        return [
            self.results.get(key) or Retry("the vendor's answer did not cover this contact")
            for key in self.row_keys
        ]

    async def _guard(self, request: Awaitable[None]) -> None:
        try:
            await request
        except ConnectorError as exc:
            if self._stopped is None:
                self._stopped = exc
            raise

    def _with_partial(self, exc: ConnectorError) -> ConnectorError:
        if not self.results:
            return exc
        exc.partial = [self.results.get(key) for key in self.row_keys]
        return exc


def _most_severe(errors: list[ConnectorError]) -> ConnectorError:
    for kind in _SEVERITY:
        found = [exc for exc in errors if isinstance(exc, kind)]
        if found:
            if kind is RateLimited:
                return max(found, key=lambda exc: getattr(exc, "retry_after", 0.0))
            return found[0]
    return errors[0]
