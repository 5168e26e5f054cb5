"""Pieces every vendor fake shares: JSON responses, the contact store, rate-limit windows,
request statistics and the request pipeline that applies faults and limits.

Everything here runs on the server's single event loop, so no locks are needed. The hot path
(`Vendor.endpoint` wrapping a handler) does a handful of attribute reads per request and no
per-contact work; vendors keep their per-contact loops lean (orjson, plain dicts).
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import random
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from crmsync.sandbox.config import FaultOptions, SandboxConfig, options_dict

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# Who sent a request, as the push log records it: crmsync workers send their worker id here.
SENDER_HEADER = "x-crmsync-worker"
# The sender of the request being handled. A context variable follows the request's task, and
# `loop.call_later` copies it, so a Brevo import applied later still knows who sent it.
_sender: contextvars.ContextVar[str] = contextvars.ContextVar("sandbox_sender", default="")
Handler = Callable[[Request], Awaitable[Response]]
RawHeaders = list[tuple[bytes, bytes]]


class JSONResponse(Response):
    """A JSON response rendered with orjson (several times faster than the stdlib)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class DropConnection(Response):
    """Sends the status line and headers, then stops: uvicorn closes the socket mid-response.

    ASGI has no "close without answering"; announcing a body that never comes is the closest
    a client can see (httpx raises RemoteProtocolError), like a proxy cutting a hung request.
    """

    def __init__(self) -> None:
        super().__init__(status_code=200, headers={"content-length": "64"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})


class BadRequestBody(Exception):
    """The body is not the JSON the endpoint expects; `message` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


async def read_json(request: Request) -> Any:
    body = await request.body()
    if not body:
        raise BadRequestBody("request body is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestBody(f"request body is not valid JSON: {exc}") from None


# Pragmatic syntax check (ASCII local part and domain, alphabetic TLD). Vendors are stricter in
# ways we cannot copy (HubSpot checks TLDs); this catches what scraped data gets wrong.
_EMAIL = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)


def is_valid_email(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 254 and _EMAIL.fullmatch(value) is not None


def iso(ts: float) -> str:
    """ISO-8601 UTC with milliseconds and `Z`, as HubSpot and Brevo write timestamps."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


@dataclass(slots=True)
class StoredContact:
    """One contact as a fake holds it. Timestamps are ISO strings (rendered once per write)."""

    email: str
    id: int | str
    fields: dict[str, Any]
    created_at: str
    updated_at: str
    last_pushed_at: str
    # Writes for this email the fake accepted (creates, updates and no-op updates).
    push_count: int = 1
    # Vendor extras (Brevo list ids, n8n idempotency key, ...), shown by inspection.
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "email": self.email,
            "id": self.id,
            "fields": self.fields,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "push_count": self.push_count,
            "last_pushed_at": self.last_pushed_at,
            **({"extra": self.extra} if self.extra else {}),
        }


class ContactStore:
    """Contacts keyed by lower-cased email, so an upsert can never create a duplicate.

    With the push log on (`SandboxConfig.push_log`), every accepted write also appends
    `(email, wall-clock time, sender)` to `pushes`: who wrote which contact when, for tests that
    check several workers never pushed the same contact under overlapping leases.
    """

    def __init__(self, *, string_ids: bool = False, first_id: int = 1) -> None:
        self._string_ids = string_ids
        self._first_id = first_id
        self.pushes: list[tuple[str, float, str]] | None = None
        self.clear()

    def clear(self) -> None:
        self.by_email: dict[str, StoredContact] = {}
        self.by_id: dict[int | str, StoredContact] = {}
        self._next_id = self._first_id
        if self.pushes is not None:
            self.pushes = []

    def __len__(self) -> int:
        return len(self.by_email)

    def get(self, email: str) -> StoredContact | None:
        return self.by_email.get(email.lower())

    def upsert(self, email: str, fields: dict[str, Any], now: str) -> tuple[StoredContact, bool]:
        """Store `fields` as the contact's last received fields; True when it was created.

        `updated_at` only moves when the fields changed; `last_pushed_at` moves on every write,
        so a test can tell a no-op re-push from a real update.
        """
        key = email.lower()
        if self.pushes is not None:
            self.pushes.append((key, time.time(), _sender.get()))
        contact = self.by_email.get(key)
        if contact is None:
            new_id: int | str = str(self._next_id) if self._string_ids else self._next_id
            self._next_id += 1
            contact = StoredContact(key, new_id, fields, now, now, now)
            self.by_email[key] = contact
            self.by_id[new_id] = contact
            return contact, True
        if fields != contact.fields:
            contact.fields = fields
            contact.updated_at = now
        contact.push_count += 1
        contact.last_pushed_at = now
        return contact, False

    def change_email(self, contact: StoredContact, email: str) -> None:
        """Give a stored contact a new email (an update by id); the caller checked it is free."""
        key = email.lower()
        if self.by_email.get(contact.email) is contact:
            del self.by_email[contact.email]
        contact.email = key
        self.by_email[key] = contact

    def delete(self, contact: StoredContact) -> None:
        """Forget a contact (merged into another one)."""
        if self.by_email.get(contact.email) is contact:
            del self.by_email[contact.email]
        self.by_id.pop(contact.id, None)


class FixedWindow:
    """At most `limit` hits per window of `seconds`.

    Windows are aligned on the clock (Brevo's second and hour, HubSpot's UTC day), or, with
    `from_first_hit`, a window starts at the whole second of the first hit after the previous
    one ended: noxlogic's RateLimitBundle behind Mautic stores `time() + period` at the first
    call, and PHP's `time()` is whole seconds, so its reset timestamp is exact.
    """

    def __init__(self, seconds: float, *, from_first_hit: bool = False) -> None:
        self.seconds = seconds
        self.from_first_hit = from_first_hit
        self.clear()

    def clear(self) -> None:
        self._start = -math.inf
        self._count = 0

    def _roll(self, now: float) -> None:
        if self._start <= now < self._start + self.seconds:
            return
        if self.from_first_hit:
            self._start = float(math.floor(now))
        else:
            self._start = now - (now % self.seconds)
        self._count = 0

    def allows(self, now: float, limit: int) -> bool:
        self._roll(now)
        return self._count < limit

    def take(self, now: float) -> None:
        self._roll(now)
        self._count += 1

    def remaining(self, now: float, limit: int) -> int:
        self._roll(now)
        return max(0, limit - self._count)

    def reset_at(self, now: float) -> float:
        """When the window ends and every slot frees at once."""
        self._roll(now)
        return self._start + self.seconds


class RollingWindow:
    """At most `limit` hits in any `seconds`-long interval (HubSpot's ten-second window)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._hits: deque[float] = deque()

    def clear(self) -> None:
        self._hits.clear()

    def _prune(self, now: float) -> None:
        hits, horizon = self._hits, now - self.seconds
        while hits and hits[0] <= horizon:
            hits.popleft()

    def allows(self, now: float, limit: int) -> bool:
        self._prune(now)
        return len(self._hits) < limit

    def take(self, now: float) -> None:
        self._hits.append(now)

    def remaining(self, now: float, limit: int) -> int:
        self._prune(now)
        return max(0, limit - len(self._hits))

    def reset_at(self, now: float) -> float:
        """When the next slot frees up (the oldest hit leaves the window)."""
        self._prune(now)
        return self._hits[0] + self.seconds if self._hits else now


Window = FixedWindow | RollingWindow


class Windows:
    """A vendor's limit windows by name, of the kind its `rate_window` option names.

    Changing the option at run time (`PUT /_sandbox/{crm}/faults`) starts fresh windows of the
    new kind; `clear` forgets every window (a reset).
    """

    def __init__(self, *, from_first_hit: bool = False) -> None:
        self._from_first_hit = from_first_hit
        self._windows: dict[tuple[str, str, float], Window] = {}

    def get(self, name: str, kind: str, seconds: float) -> Window:
        key = (name, kind, seconds)
        window = self._windows.get(key)
        if window is None:
            stale = [k for k in self._windows if k[0] == name]
            for k in stale:
                del self._windows[k]
            if kind == "rolling":
                window = RollingWindow(seconds)
            else:
                window = FixedWindow(seconds, from_first_hit=self._from_first_hit)
            self._windows[key] = window
        return window

    def clear(self) -> None:
        self._windows.clear()


class ManualClock:
    """A clock to set by hand: assign it to `vendor.clock` to freeze rate-limit windows."""

    def __init__(self, now: float = 1_800_000_000.25) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def seconds_until(moment: float, now: float) -> int:
    return max(1, math.ceil(moment - now))


@dataclass(slots=True)
class VendorStats:
    """Counters behind `GET /_sandbox/stats`. 4xx excludes 429, which has its own count.

    `contacts_received` counts contact records in request bodies that reached a handler (past
    faults, auth and limits), valid or not; `contacts_stored` in `inspect()` is what was kept.
    """

    requests: int = 0
    contacts_received: int = 0
    ok_2xx: int = 0
    client_4xx: int = 0
    rate_limited_429: int = 0
    server_5xx: int = 0
    dropped: int = 0
    in_flight: int = 0
    peak_concurrent: int = 0
    by_endpoint: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "contacts_received": self.contacts_received,
            "2xx": self.ok_2xx,
            "4xx": self.client_4xx,
            "429": self.rate_limited_429,
            "5xx": self.server_5xx,
            "dropped": self.dropped,
            "in_flight": self.in_flight,
            "peak_concurrent": self.peak_concurrent,
            "by_endpoint": dict(self.by_endpoint),
        }

    def count_status(self, status: int) -> None:
        if status < 300:
            self.ok_2xx += 1
        elif status == 429:
            self.rate_limited_429 += 1
        elif status >= 500:
            self.server_5xx += 1
        elif status >= 400:
            self.client_4xx += 1


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """One request as the request log holds it (`SandboxConfig.request_log`)."""

    at: float  # Unix time, s, when it arrived
    endpoint: str  # the `by_endpoint` label
    status: int  # 0: the connection was dropped
    sender: str

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "endpoint": self.endpoint,
            "status": self.status,
            "sender": self.sender,
        }


class Vendor:
    """Base of the four fakes: state, the fault/limit pipeline and the inspection hooks.

    Subclasses set `name`, build their routes, and implement `authenticate`, `error_response`
    and `check_limits`. `endpoint(...)` wraps a handler with, in this order:
    outage -> latency -> timeout -> random 5xx -> authentication -> burst_429 -> rate limits ->
    handler -> apply_then_drop (the handler's write is kept, its answer is not sent).
    Faults come before authentication because in production they happen in front of the app
    (load balancer, overloaded worker); rate limits come after it because vendors count them
    per account or app.
    """

    name: ClassVar[str]
    # Brevo documents its rate headers on every response of a limited endpoint; the others only
    # add them once a request was authenticated and counted.
    limit_headers_on_rejections: ClassVar[bool] = False
    options: FaultOptions

    def __init__(self, config: SandboxConfig, store: ContactStore) -> None:
        self.config = config
        self.store = store
        self.stats = VendorStats()
        # One generator per vendor, so faults on one vendor don't shift another's sequence.
        self.rng = random.Random(None if config.seed is None else f"{config.seed}:{self.name}")
        self.clock: Callable[[], float] = time.time
        self.options = config.initial_options(self.name)
        if config.push_log:
            store.pushes = []
        self.requests: list[LoggedRequest] | None = [] if config.request_log else None

    # --- hooks for subclasses -------------------------------------------------------------

    def authenticate(self, request: Request) -> Response | None:
        """None when the credentials are good, else the vendor's refusal."""
        raise NotImplementedError

    def error_response(self, status: int) -> Response:
        """The vendor's body for an injected server error (500/502/503/504)."""
        raise NotImplementedError

    def check_limits(self, now: float, *, burst: bool) -> tuple[Response | None, RawHeaders]:
        """Count one request against the limits: (429 response or None, rate headers).

        `burst` means the request must be refused as rate limited regardless (burst_429).
        """
        return (self.rate_limited_response(now) if burst else None), []

    def rate_limited_response(self, now: float) -> Response:
        raise NotImplementedError

    def not_found_response(self, request: Request) -> Response:
        """The vendor's answer for a path the fake does not serve."""
        raise NotImplementedError

    def limit_headers(self, now: float) -> RawHeaders:
        """Current rate headers without counting a request (for refused requests)."""
        return []

    def reset(self, *, faults: bool) -> None:
        """Forget contacts, stats and limiter windows; with `faults`, restore start options."""
        self.store.clear()
        self.stats = VendorStats()
        if self.requests is not None:
            self.requests = []
        if faults:
            self.options = self.config.initial_options(self.name)

    def inspect(self) -> dict[str, Any]:
        return {**self.stats.as_json(), "contacts_stored": len(self.store), "options": self.opts}

    @property
    def opts(self) -> dict[str, Any]:
        return options_dict(self.options)

    # --- shared helpers --------------------------------------------------------------------

    def correlation_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def retry_after(self, headers: RawHeaders, seconds: int) -> RawHeaders:
        if self.options.retry_after:
            headers.append((b"retry-after", str(seconds).encode()))
        return headers

    def fallback_route(self) -> Route:
        """Catch-all for unserved paths, counted as "unknown path" so a wrong URL shows up."""

        async def unknown(request: Request) -> Response:
            return self.not_found_response(request)

        handler = self.endpoint("unknown path", unknown, auth=False, limited=False)
        return Route("/{rest:path}", handler, methods=ALL_METHODS)

    def endpoint(
        self, label: str, handler: Handler, *, auth: bool = True, limited: bool = True
    ) -> Handler:
        """Wrap `handler` with stats, faults, auth and limits. `label` keys `by_endpoint`."""

        async def run(request: Request) -> Response:
            arrived = time.time()
            if self.store.pushes is not None:
                _sender.set(request.headers.get(SENDER_HEADER, ""))
            stats = self.stats
            stats.requests += 1
            stats.by_endpoint[label] = stats.by_endpoint.get(label, 0) + 1
            stats.in_flight += 1
            if stats.in_flight > stats.peak_concurrent:
                stats.peak_concurrent = stats.in_flight
            status = 500  # what Starlette answers if the handler raises
            try:
                response = await self._pipeline(request, handler, auth, limited)
                if isinstance(response, DropConnection):
                    stats.dropped += 1
                    status = 0
                else:
                    status = response.status_code
                return response
            finally:
                # `stats` may have been replaced by a reset while we waited; count on the old one.
                stats.in_flight -= 1
                if status:
                    stats.count_status(status)
                if self.requests is not None:
                    sender = request.headers.get(SENDER_HEADER, "")
                    self.requests.append(LoggedRequest(arrived, label, status, sender))

        return run

    async def _pipeline(
        self, request: Request, handler: Handler, auth: bool, limited: bool
    ) -> Response:
        options = self.options
        if options.outage != "off":
            # In front of the vendor's app (load balancer, DNS, a dead data centre): nothing is
            # authenticated, counted against a limit or stored.
            if options.outage == "drop":
                return DropConnection()
            return self._with_limit_headers(self.error_response(503), limited)
        if options.latency_ms:
            await asyncio.sleep(options.latency_ms / 1000)
        faulty = options.faults_on == "all" or request.method not in ("GET", "HEAD")
        if faulty and options.timeout_rate and self.rng.random() < options.timeout_rate:
            await asyncio.sleep(options.timeout_ms / 1000)
            if options.timeout_action == "drop":
                return DropConnection()
            return self._with_limit_headers(self.error_response(504), limited)
        if faulty and options.error_rate and self.rng.random() < options.error_rate:
            status = self.rng.choice((500, 502, 503))
            return self._with_limit_headers(self.error_response(status), limited)
        if auth:
            refused = self.authenticate(request)
            if refused is not None:
                return self._with_limit_headers(refused, limited)
        headers: RawHeaders = []
        if limited:
            now = self.clock()
            burst = options.burst_429 > 0
            if burst:
                options.burst_429 -= 1
            refused, headers = self.check_limits(now, burst=burst)
            if refused is not None:
                return refused
        response = await handler(request)
        if self._drop_after_apply(options):
            # The write is done; the answer never reaches the client (reset connection).
            return DropConnection()
        if headers:
            response.raw_headers.extend(headers)
        return response

    def _drop_after_apply(self, options: FaultOptions) -> bool:
        if options.apply_then_drop > 0:
            options.apply_then_drop -= 1
            return True
        return bool(
            options.apply_then_drop_rate and self.rng.random() < options.apply_then_drop_rate
        )

    def _with_limit_headers(self, response: Response, limited: bool) -> Response:
        if limited and self.limit_headers_on_rejections:
            response.raw_headers.extend(self.limit_headers(self.clock()))
        return response
