"""The one interface every vendor connector implements, and the errors it may raise.

A connector turns a batch of contacts into vendor requests and vendor answers into one result per
row. It is the only place that looks at HTTP status codes: the sync engine above it sees
`Ok / Retry / Fail` per row, or one of the batch-wide exceptions below, and never a vendor name.

Contract for `push(batch)`:
- returns exactly one `RowResult` per input row, in input order;
- every write is idempotent, because the engine is at-least-once: an upsert keyed by email, or,
  for a contact whose email changed since the vendor last accepted it (`previous_email`) and
  whose vendor id is known, an update of that record by its id (falling back to the upsert by
  email when the vendor no longer has the id), so the person stays one record;
- raises `RateLimited`, `AuthFailed`, `Misconfigured` or `Transient` (`Unreachable` when no
  connection could be made) when the whole batch failed for a reason that is not the rows' fault;
  a connector that fans out may hit that reason after some rows were answered: it then sets the
  exception's `partial` (see `ConnectorError`) so that no vendor answer is lost;
- never lets a secret (API key, token, password) into a message, a log line or an exception.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import httpx
import orjson

from crmsync import USER_AGENT
from crmsync.enums import Crm

T = TypeVar("T")

# Vendor messages are stored and shown; keep them to a readable size.
MAX_MESSAGE_CHARS = 1000


# Not frozen: a worker builds one per synced row, and a frozen dataclass's __init__ sets each
# field through object.__setattr__, several times slower (bench/README.md, "Figures behind the
# code"). Treat it as immutable all the same: connectors remember payloads by object
# (`MappedOnce`).
@dataclass(slots=True)
class ContactPayload:
    """One queued (contact, CRM) row as a connector sees it."""

    contact_id: uuid.UUID
    email: str
    name: str | None = None
    phone_number: str | None = None
    email_type: str | None = None
    has_gmail: bool | None = None
    context: str | None = None
    source_url: str | None = None
    domain_id: uuid.UUID | None = None
    page_id: uuid.UUID | None = None
    source_job_id: uuid.UUID | None = None
    # The vendor's id from an earlier sync, if any (Brevo answers 204 without one on update).
    external_id: str | None = None
    # The email the vendor last accepted for this contact (None: never synced, or not known).
    synced_email: str | None = None

    @property
    def previous_email(self) -> str | None:
        """The email the vendor holds when the contact's email changed since, else None.

        A change of case alone is no change: every vendor matches emails case-insensitively.
        """
        old = self.synced_email
        if old is None or old.strip().lower() == self.email.strip().lower():
            return None
        return old


@dataclass(frozen=True, slots=True)
class Ok:
    """The vendor holds the contact; `external_id` is its id there (or our delivery id).

    `note` says what was left out to get there (a phone the vendor would not take): it goes
    into the contact's sync history, so nothing is dropped silently.
    """

    external_id: str | None
    http_status: int | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """Worth trying again later (5xx, timeout, lock): the engine backs off and spends an attempt."""

    reason: str
    http_status: int | None = None


@dataclass(frozen=True, slots=True)
class Fail:
    """The vendor rejected this row for good (invalid email, validation error)."""

    reason: str
    http_status: int | None = None


RowResult = Ok | Retry | Fail


class ConnectorError(Exception):
    """A batch-wide failure. `message` is safe to store and show: it never holds a secret.

    `partial` is None when nothing in the batch was answered (the usual case). Otherwise it holds
    one entry per input row, in input order: the `RowResult` of a row the vendor already answered
    before the failure (record it as if `push` had returned it), or None for a row that was not
    attempted (treat it like the whole batch of a plain exception: no attempt spent).
    """

    def __init__(
        self,
        message: str,
        http_status: int | None = None,
        *,
        partial: Sequence[RowResult | None] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = truncate(message)
        self.http_status = http_status
        self.partial: list[RowResult | None] | None = None if partial is None else list(partial)


class RateLimited(ConnectorError):
    """The vendor's rate limit is exhausted; wait `retry_after` seconds (no attempt is spent)."""

    def __init__(
        self,
        retry_after: float,
        message: str,
        http_status: int | None = 429,
        *,
        partial: Sequence[RowResult | None] | None = None,
    ) -> None:
        super().__init__(message, http_status, partial=partial)
        self.retry_after = max(0.0, retry_after)


class AuthFailed(ConnectorError):
    """Credentials were refused: the CRM pauses until a person fixes them (no attempt spent)."""


class Misconfigured(ConnectorError):
    """The vendor says our configuration is wrong (unknown webhook, missing setting): pause."""


class Transient(ConnectorError):
    """The whole batch failed for a passing reason (timeout, 5xx on a batch call): back off."""


class Unreachable(Transient):
    """No connection could be made (refused, DNS failure, connect timeout): the request was never
    sent, so the vendor cannot have acted on it and no attempt is spent (see `never_sent`).

    A read timeout or a dropped connection is not this: the vendor may have applied the write.
    """


@runtime_checkable
class Connector(Protocol):
    """What the sync engine needs of a vendor."""

    name: Crm
    # The most rows one `push` call takes; the engine's default claim size.
    max_batch: int
    # Batches one worker may have in flight for this CRM at once (default of MAX_INSTANCES).
    default_concurrency: int

    def fingerprint(self, contact: ContactPayload) -> str:
        """A stable hash of exactly what would be sent for this contact (its mapped payload).

        The engine skips the vendor call when it equals the hash of the payload the vendor last
        accepted, so it must change whenever the request body for the contact would change.
        """
        ...

    async def push(self, batch: Sequence[ContactPayload]) -> list[RowResult]: ...

    async def aclose(self) -> None: ...


def stable_hash(payload: Any) -> str:
    """Hash of a JSON-able value, independent of key order."""
    data = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def truncate(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"


def request_timeout(seconds: float = 30.0) -> httpx.Timeout:
    """A vendor request's timeout (`{CRM}_TIMEOUT_SECONDS`): connecting takes at most 5 s."""
    return httpx.Timeout(seconds, connect=min(5.0, seconds))


def make_client(
    base_url: str = "",
    headers: dict[str, str] | None = None,
    max_connections: int = 100,
    timeout_seconds: float = 30.0,
) -> httpx.AsyncClient:
    """The pooled HTTP client every connector uses: our User-Agent, 30 s per request unless
    told otherwise (connectors pass their CRM's timeout with each request)."""
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"User-Agent": USER_AGENT, **(headers or {})},
        timeout=request_timeout(timeout_seconds),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=20),
    )


class MappedOnce(Generic[T]):
    """Each contact's mapped payload, built in `fingerprint` and taken again by `push`.

    The engine fingerprints every claimed row, then pushes the rows whose fingerprint changed,
    with the same `ContactPayload` objects: mapping each contact once instead of twice is a
    measurable share of a worker's time per row. Entries are keyed by object identity (and hold
    the object, so an id cannot be reused while its entry lives); `take` removes its entry, and
    past `limit` the oldest entries go, so rows fingerprinted but never pushed (unchanged) do
    not pile up. A payload is built afresh whenever it is not (or no longer) remembered.
    """

    def __init__(self, build: Callable[[ContactPayload], T], limit: int = 20_000) -> None:
        self._build = build
        self._limit = limit
        self._items: dict[int, tuple[ContactPayload, T]] = {}

    def remember(self, contact: ContactPayload) -> T:
        value = self._build(contact)
        self._items[id(contact)] = (contact, value)
        if len(self._items) > self._limit:
            del self._items[next(iter(self._items))]
        return value

    def take(self, contact: ContactPayload) -> T:
        entry = self._items.pop(id(contact), None)
        if entry is not None and entry[0] is contact:
            return entry[1]
        return self._build(contact)
