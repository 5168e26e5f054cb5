"""Mautic: contacts upserted by email with `POST /api/contacts/batch/new`.

The body is a JSON array of flat contacts (email, firstname, lastname, phone and the custom field
aliases); Mautic matches each against existing contacts by email and answers HTTP 201 with
per-item `statusCodes` (201 created, 200 updated, else an error code), the saved `contacts` and
the failed items' `errors` (crm-apis.md 3.3). Auth is HTTP Basic (`MAUTIC_USERNAME` +
`MAUTIC_PASSWORD`, preferred when both pairs are set) or an OAuth2 client-credentials token
(`MAUTIC_CLIENT_ID` + `MAUTIC_CLIENT_SECRET`), cached until shortly before it expires and
fetched again once when the API answers 401.

How answers become row results:

- Items are matched to rows by index for `statusCodes` and `errors` (each a list or an object
  keyed by index), and by email for `contacts` (failed items are missing from it, so positions
  shift).
- Item errors: validation (4xx) -> `Fail` with Mautic's message and details; 5xx, 409 (contact
  checked out in the UI) -> `Retry`.
- 401 / 403 -> `AuthFailed`; 429 -> `RateLimited` (`Retry-After`, `X-RateLimit-Reset`, else 60 s).
- A batch over the server's limit (HTTP 500 or 400 whose message speaks of a limit or maximum,
  or 413) is re-sent in smaller parts, recursively and within `SPLIT_BUDGET` extra requests, and
  later pushes use the smaller size (`max_batch` follows it).
- Other 5xx, timeouts and dropped connections -> `Retry` for the request's rows, as in the
  HubSpot connector: this connector raises `Transient` only as `Unreachable`, when no connection
  could be made (nothing was sent).

Email changes: a contact whose email changed since Mautic took it (`previous_email`) and whose
Mautic id is known is edited with `PATCH /api/contacts/{id}/edit` (the flat contact, new email
included), so it stays one contact; Mautic merges any other contact that already has the new
email into it. A 404 (the contact was deleted) falls back to the upsert by email.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from crmsync.connectors.base import (
    AuthFailed,
    ContactPayload,
    Fail,
    MappedOnce,
    Misconfigured,
    Ok,
    RateLimited,
    Retry,
    RowResult,
    Transient,
    Unreachable,
    make_client,
    request_timeout,
    stable_hash,
    truncate,
)
from crmsync.connectors.fields.http import PacedClient
from crmsync.connectors.fields.mautic import MauticFields
from crmsync.connectors.httputil import (
    body_text,
    describe,
    json_body,
    never_sent,
    redact,
    seconds_header,
)
from crmsync.connectors.mapping import clean_phone, split_name
from crmsync.connectors.ratelimit import Quota, RateLimiter
from crmsync.connectors.upsert import (
    CUSTOM_FIELDS,
    Budget,
    PushRun,
    chunked,
    custom_values,
    email_key,
)
from crmsync.enums import Crm
from crmsync.settings import MauticSettings

logger = logging.getLogger(__name__)

BATCH_PATH = "/api/contacts/batch/new"
EDIT_PATH = "/api/contacts/{id}/edit"
TOKEN_PATH = "/oauth/v2/token"
# Mautic's rate limiter counts per hour and may not say when it resets.
DEFAULT_RATE_LIMIT_WAIT = 60.0
# Extra requests one batch may spend on re-sending over-limit parts.
SPLIT_BUDGET = 32
# A cached OAuth2 token is replaced this long (at most a tenth of its life) before it expires.
TOKEN_MARGIN_SECONDS = 60.0
_SAVED = frozenset({200, 201})
_OVER_LIMIT = re.compile(r"\b(limit|max|maximum|too (large|many|big)|at a time)\b", re.IGNORECASE)
_NUMBER = re.compile(r"\b\d+\b")
# An X-RateLimit-Reset above this is a Unix time, below it a number of seconds.
_EPOCH_THRESHOLD = 1_000_000_000


def field_aliases(settings: MauticSettings) -> dict[str, str]:
    """The configured custom field alias per `CUSTOM_FIELDS` key; an empty setting omits it."""
    aliases: dict[str, str] = {}
    for field in CUSTOM_FIELDS:
        alias = str(getattr(settings, f"field_{field}")).strip()
        if alias:
            aliases[field] = alias
    return aliases


class MauticConnector:
    """The `Connector` for Mautic (see the module docstring for the status mapping)."""

    name = Crm.mautic
    default_concurrency = 4

    def __init__(
        self,
        settings: MauticSettings,
        client: httpx.AsyncClient | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        base = (settings.base_url or "").strip().rstrip("/")
        # MAUTIC_BASE_URL is the site root; tolerate one given with the API prefix.
        self._base = base.removesuffix("/api")
        self._missing = settings.missing()
        self._aliases = field_aliases(settings)
        self._batch_size = settings.batch_size
        self.max_batch = settings.batch_size
        self._owns_client = client is None
        self._client = client if client is not None else make_client()
        self._clock = clock
        self._timeout = request_timeout(settings.timeout_seconds)
        # Mautic's limiter (off by default) counts per hour; its X-RateLimit-* headers say what
        # is left and when the hour ends, so a push stops at the limit instead of at a 429.
        self._limiter = RateLimiter(settings.rate_limit_per_second, vendor="Mautic")
        self._mapped = MappedOnce(self.payload)
        password = settings.password.get_secret_value() if settings.password else None
        secret = settings.client_secret.get_secret_value() if settings.client_secret else None
        self._secrets: list[str | None] = [password, secret]
        self._basic: str | None = None
        self._oauth: _OAuth2 | None = None
        if settings.username and password:
            pair = f"{settings.username}:{password}".encode()
            self._basic = "Basic " + base64.b64encode(pair).decode("ascii")
            self._secrets.append(self._basic.removeprefix("Basic "))
        elif settings.client_id and secret:
            self._oauth = _OAuth2(
                self._base + TOKEN_PATH, settings.client_id, secret, clock, self._redact
            )

    def payload(self, contact: ContactPayload) -> dict[str, Any]:
        """The flat Mautic contact for one row; placeholders and missing values left out.

        `has_gmail` is sent as 1 / 0, which a Mautic boolean field takes as yes / no (a JSON
        `false` would be read as empty) and a text field stores as "1" / "0".
        """
        item: dict[str, Any] = {"email": contact.email.strip()}
        first, last = split_name(contact.name)
        if first:
            item["firstname"] = first
        if last:
            item["lastname"] = last
        phone = clean_phone(contact.phone_number)
        if phone:
            item["phone"] = phone
        for field, value in custom_values(contact).items():
            alias = self._aliases.get(field)
            if alias:
                item[alias] = int(value) if isinstance(value, bool) else value
        return item

    def fingerprint(self, contact: ContactPayload) -> str:
        return stable_hash(self._mapped.remember(contact))

    async def push(self, batch: Sequence[ContactPayload]) -> list[RowResult]:
        if not batch:
            return []
        if self._missing:
            raise Misconfigured(self._missing)
        run = PushRun(batch)
        items = {key: self._mapped.take(contact) for key, contact in run.contacts.items()}
        # A contact whose email changed is edited by its id, so it stays one Mautic contact.
        moved = [key for key, contact in run.contacts.items() if _moved(contact)]
        batched = [key for key in run.keys if key not in set(moved)] if moved else run.keys
        requests = [
            self._send(run, items, keys, Budget(SPLIT_BUDGET))
            for keys in chunked(batched, self._batch_size)
        ]
        requests += [self._edit(run, items, key) for key in moved]
        return await run.run(requests)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def field_api(self) -> MauticFields:
        """The custom contact fields this connector writes (see `connectors.fields`)."""
        if self._missing:
            raise Misconfigured(self._missing)
        paced = PacedClient(self._client, self._limiter)
        return MauticFields(paced, self._base, self._authorization, self._aliases, self._redact)

    # --- one request -------------------------------------------------------------------------

    async def _send(
        self,
        run: PushRun,
        items: dict[str, dict[str, Any]],
        keys: list[str],
        budget: Budget,
        *,
        token_refreshed: bool = False,
    ) -> None:
        """Send `keys`' contacts in one request and record a result for each (or raise)."""
        run.check()
        ticket = await self._limiter.acquire()
        run.check()
        try:
            authorization = await self._authorization()
        except BaseException as exc:
            self._limiter.observe(ticket, None)  # never sent
            # No connection to the token endpoint: nothing was sent, the batch is Unreachable.
            if isinstance(exc, Unreachable) or not isinstance(exc, Transient):
                raise
            logger.warning("%s (%d contacts will be retried)", exc.message, len(keys))
            run.set(keys, Retry(exc.message, exc.http_status))
            return
        started = time.monotonic()
        try:
            response = await self._client.post(
                self._base + BATCH_PATH,
                content=orjson.dumps([items[key] for key in keys]),
                headers={
                    "Authorization": authorization,
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                },
                timeout=self._timeout,
            )
        except BaseException as exc:
            self._limiter.observe(ticket, None)  # no answer: no longer in flight
            if isinstance(exc, httpx.UnsupportedProtocol):
                raise Misconfigured(f"MAUTIC_BASE_URL is not an http(s) URL: {exc}") from None
            if not isinstance(exc, httpx.HTTPError):
                raise
            reason = self._redact(f"Mautic request failed: {describe(exc)}")
            if never_sent(exc):
                raise Unreachable(reason) from None
            logger.warning("%s (%d contacts will be retried)", reason, len(keys))
            run.set(keys, Retry(reason))
            return
        self._limiter.observe(ticket, self._quota(response))
        status = response.status_code
        logger.debug(
            "Mautic batch of %d contacts: HTTP %d in %.2f s",
            len(keys),
            status,
            time.monotonic() - started,
        )
        if status in _SAVED:
            self._read_results(run, keys, response)
            return
        message = self._message(response)
        if status == 401 and self._oauth is not None and not token_refreshed:
            # The token may have been revoked or expired early: fetch a new one, once.
            self._oauth.invalidate(authorization.removeprefix("Bearer "))
            await self._send(run, items, keys, budget, token_refreshed=True)
        elif status in (401, 403):
            raise AuthFailed(self._auth_message(status, response, message), status)
        elif status == 429:
            raise self._rate_limited(response, message)
        elif len(keys) > 1 and (
            status == 413 or (status in (400, 500) and _OVER_LIMIT.search(message))
        ):
            await self._split(run, items, keys, status, message, budget)
        elif status in (404, 405) or 300 <= status < 400:
            where = response.headers.get("Location")
            raise Misconfigured(
                f"Mautic answered {status} for {BATCH_PATH}"
                + (f" (redirecting to {where})" if where else "")
                + f": check MAUTIC_BASE_URL ({self._base}), the site root, and that the API is "
                "enabled",
                status,
            )
        elif status >= 500 or status in (408, 409, 423):
            run.set(keys, Retry(f"Mautic answered {status}: {message}", status))
        elif status >= 400:
            run.set(keys, Fail(f"Mautic refused the batch ({status}): {message}", status))
        else:
            run.set(keys, Retry(f"Mautic answered an unexpected {status}", status))

    async def _edit(
        self, run: PushRun, items: dict[str, dict[str, Any]], key: str, *, refreshed: bool = False
    ) -> None:
        """`PATCH /api/contacts/{id}/edit` with the new email; a 404 falls back to the upsert."""
        run.check()
        ticket = await self._limiter.acquire()
        run.check()
        contact_id = str(run.contacts[key].external_id)
        try:
            authorization = await self._authorization()
            response = await self._client.patch(
                f"{self._base}{EDIT_PATH.format(id=contact_id)}",
                content=orjson.dumps(items[key]),
                headers={
                    "Authorization": authorization,
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                },
                timeout=self._timeout,
            )
        except BaseException as exc:
            self._limiter.observe(ticket, None)  # no answer: no longer in flight
            if isinstance(exc, Transient):
                run.set([key], Retry(exc.message, exc.http_status))
                return
            if not isinstance(exc, httpx.HTTPError):
                raise
            run.set([key], Retry(self._redact(f"Mautic request failed: {describe(exc)}")))
            return
        self._limiter.observe(ticket, self._quota(response))
        status = response.status_code
        if status == 200:
            run.set([key], Ok(contact_id, status))
            return
        message = self._message(response)
        if status == 404:
            logger.info(
                "Mautic has no contact %s any more (its email changed); upserting it by email",
                contact_id,
            )
            await self._send(run, items, [key], Budget(0))
        elif status == 401 and self._oauth is not None and not refreshed:
            self._oauth.invalidate(authorization.removeprefix("Bearer "))
            await self._edit(run, items, key, refreshed=True)
        elif status in (401, 403):
            raise AuthFailed(self._auth_message(status, response, message), status)
        elif status == 429:
            raise self._rate_limited(response, message)
        elif status == 405 or 300 <= status < 400:
            raise Misconfigured(
                f"Mautic answered {status} for {EDIT_PATH}: check MAUTIC_BASE_URL ({self._base})",
                status,
            )
        else:
            run.set([key], self._item_error(status, {"message": message}))

    async def _split(
        self,
        run: PushRun,
        items: dict[str, dict[str, Any]],
        keys: list[str],
        status: int,
        message: str,
        budget: Budget,
    ) -> None:
        """Re-send a batch Mautic found too large in parts of the size it names, or halves."""
        named = [int(number) for number in _NUMBER.findall(message)]
        fitting = [number for number in named if 0 < number < len(keys)]
        size = max(fitting) if fitting else (len(keys) + 1) // 2
        if size < self._batch_size:
            self._batch_size = size
            self.max_batch = size
            logger.warning(
                "Mautic refused a batch of %d contacts as too large (%d: %s); sending at most %d "
                "per request from now on (set MAUTIC_BATCH_SIZE=%d to start there)",
                len(keys),
                status,
                message,
                size,
                size,
            )
        for part in chunked(keys, size):
            if budget.take():
                await self._send(run, items, part, budget)
            else:
                run.set(
                    part,
                    Retry(f"Mautic refused the batch as too large ({status}: {message})", status),
                )

    def _read_results(self, run: PushRun, keys: list[str], response: httpx.Response) -> None:
        """Match a batch answer's statusCodes, errors and contacts to the request's rows."""
        status = response.status_code
        body = json_body(response)
        if not isinstance(body, dict):
            run.set(keys, Retry(f"Mautic answered {status} without a readable body", status))
            return
        codes = _by_index(body.get("statusCodes"))
        errors = _errors_by_index(body.get("errors"), codes)
        ids = _contact_ids(body.get("contacts"), keys, codes)
        for index, key in enumerate(keys):
            code = _as_int(codes.get(index))
            error = errors.get(index)
            if error is not None and code not in _SAVED:
                code = code or _as_int(error.get("code"))
                run.set([key], self._item_error(code, error))
            elif code in _SAVED or (code is None and index in ids):
                contact_id = ids.get(index)
                if contact_id is None:
                    logger.warning("Mautic saved a contact without telling its id")
                run.set([key], Ok(contact_id, code or status))
            elif code is not None and code >= 400:
                run.set([key], self._item_error(code, {}))
            else:
                run.set([key], Retry("Mautic's answer did not cover this contact", status))

    def _item_error(self, code: int | None, error: dict[str, Any]) -> RowResult:
        text = self._redact(_error_text(error)) or "no message"
        if code is None or code >= 500 or code in (408, 409, 423, 429):
            return Retry(f"Mautic could not save the contact ({code or 'no status'}): {text}", code)
        return Fail(f"Mautic refused the contact ({code}): {text}", code)

    # --- auth and messages -------------------------------------------------------------------

    async def _authorization(self) -> str:
        if self._oauth is not None:
            return "Bearer " + await self._oauth.token(self._client)
        return self._basic or ""

    def _auth_message(self, status: int, response: httpx.Response, message: str) -> str:
        kind = _error_type(json_body(response))
        label = f"{status} {kind}" if kind else str(status)
        if kind == "api_disabled":
            fix = "Enable the API in Mautic's Configuration > API Settings"
        elif self._oauth is not None:
            fix = "Check MAUTIC_CLIENT_ID / MAUTIC_CLIENT_SECRET and the API user's permissions"
        else:
            fix = (
                "Check MAUTIC_USERNAME / MAUTIC_PASSWORD, and that the API and HTTP basic auth are "
                "enabled in Mautic's configuration (then clear its cache)"
            )
        return f"Mautic refused the request ({label}): {message.rstrip('.')}. {fix}."

    def _quota(self, response: httpx.Response) -> Quota | None:
        """noxlogic's `X-RateLimit-*` headers as a `Quota` (a 429 without them: none left)."""
        headers = response.headers
        try:
            remaining = int(headers["X-RateLimit-Remaining"])
        except (KeyError, ValueError):
            if response.status_code != 429:
                return None
            remaining = 0
        try:
            limit: int | None = int(headers.get("X-RateLimit-Limit", ""))
        except ValueError:
            limit = None
        return Quota(remaining, self._reset_seconds(response), limit)

    def _reset_seconds(self, response: httpx.Response) -> float | None:
        """Seconds until the window ends: `Retry-After`, else `X-RateLimit-Reset` (a Unix time
        or a number of seconds); None when neither says."""
        now = self._clock()
        headers = response.headers
        if headers.get("Retry-After") is not None:
            return seconds_header(
                headers["Retry-After"], DEFAULT_RATE_LIMIT_WAIT, datetime.fromtimestamp(now, UTC)
            )
        try:
            reset = float(headers.get("X-RateLimit-Reset", ""))
        except ValueError:
            return None
        seconds = reset - now if reset > _EPOCH_THRESHOLD else reset
        return seconds if seconds > 0 else None

    def _rate_limited(self, response: httpx.Response, message: str) -> RateLimited:
        wait = self._reset_seconds(response) or DEFAULT_RATE_LIMIT_WAIT
        text = f"Mautic rate limit reached ({message}); waiting {wait:g} s"
        logger.warning(text)
        return RateLimited(wait, text)

    def _message(self, response: httpx.Response) -> str:
        body = json_body(response)
        if isinstance(body, dict):
            texts = [_error_text(error) for error in _error_list(body)]
            description = body.get("error_description")
            if isinstance(description, str):
                texts.append(f"{body.get('error')}: {description}")
            text = "; ".join(text for text in texts if text)
            if text:
                return truncate(self._redact(text))
        return self._redact(body_text(response) or response.reason_phrase)

    def _redact(self, text: str) -> str:
        tokens = self._oauth.tokens if self._oauth is not None else []
        return redact(text, [*self._secrets, *tokens])


class _OAuth2:
    """An OAuth2 client-credentials token, fetched on demand and cached until near expiry."""

    def __init__(
        self,
        url: str,
        client_id: str,
        client_secret: str,
        clock: Callable[[], float],
        scrub: Callable[[str], str],
    ) -> None:
        self._url = url
        self._client_id = client_id
        self._client_secret = client_secret
        self._clock = clock
        self._scrub = scrub
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        # Tokens handed out, so that messages never show one (the last few are enough).
        self.tokens: list[str] = []

    async def token(self, client: httpx.AsyncClient) -> str:
        async with self._lock:
            if self._token is None or self._clock() >= self._expires_at:
                self._token = await self._fetch(client)
            return self._token

    def invalidate(self, token: str) -> None:
        """Forget `token` (refused by the API); a concurrent refresh is left alone."""
        if self._token == token:
            self._token = None

    async def _fetch(self, client: httpx.AsyncClient) -> str:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._client_secret,
        }
        try:
            response = await client.post(
                self._url, data=form, headers={"Accept": "application/json"}
            )
        except httpx.HTTPError as exc:
            reason = self._scrub(f"Mautic token request failed: {describe(exc)}")
            raise (Unreachable if never_sent(exc) else Transient)(reason) from None
        status = response.status_code
        body = json_body(response)
        token = body.get("access_token") if isinstance(body, dict) else None
        if status == 200 and isinstance(token, str) and token:
            assert isinstance(body, dict)
            try:
                lifetime = float(body.get("expires_in") or 3600)
            except (TypeError, ValueError):
                lifetime = 3600.0
            self._expires_at = self._clock() + lifetime - min(TOKEN_MARGIN_SECONDS, lifetime / 10)
            self.tokens = [*self.tokens[-3:], token]
            logger.debug("Fetched a Mautic OAuth2 token valid for %.0f s", lifetime)
            return token
        if isinstance(body, dict) and isinstance(body.get("error_description"), str):
            message = f"{body.get('error')}: {body['error_description']}"
        elif isinstance(body, dict) and _error_list(body):
            message = "; ".join(_error_text(error) for error in _error_list(body))
        else:
            message = body_text(response) or response.reason_phrase
        message = self._scrub(message).rstrip(".")
        if status in (400, 401, 403):
            raise AuthFailed(
                f"Mautic refused the OAuth2 client credentials ({status}): {message}. Check "
                "MAUTIC_CLIENT_ID / MAUTIC_CLIENT_SECRET (an API client of the "
                "client-credentials type).",
                status,
            )
        if status in (404, 405):
            raise Misconfigured(
                f"Mautic answered {status} for {TOKEN_PATH}: check MAUTIC_BASE_URL", status
            )
        if status == 429:
            wait = seconds_header(response.headers.get("Retry-After"), DEFAULT_RATE_LIMIT_WAIT)
            raise RateLimited(wait, f"Mautic rate limit reached on the token endpoint: {message}")
        raise Transient(f"Mautic's token endpoint answered {status}: {message}", status)


# --- reading Mautic's answers --------------------------------------------------------------------


def _moved(contact: ContactPayload) -> bool:
    """The contact's email changed since Mautic took it, and its Mautic id is known."""
    known = contact.external_id
    return contact.previous_email is not None and known is not None and known.isdigit()


def _by_index(value: Any) -> dict[int, Any]:
    """A list, or an object keyed by index (PHP arrays with gaps), as {index: value}."""
    if isinstance(value, list):
        return dict(enumerate(value))
    if isinstance(value, dict):
        return {int(key): item for key, item in value.items() if str(key).isdigit()}
    return {}


def _errors_by_index(value: Any, codes: dict[int, Any]) -> dict[int, dict[str, Any]]:
    """Item errors by input index.

    An object is keyed by index. A list is too, by position (what PHP gives when the failed
    items are the first ones), unless it holds exactly one error per failed status code at other
    positions: then the errors belong to those items in order.
    """
    if isinstance(value, list):
        errors = [error for error in value if isinstance(error, dict)]
        failed = sorted(index for index, code in codes.items() if _as_int(code) not in _SAVED)
        if len(errors) == len(failed) and failed != list(range(len(errors))):
            return dict(zip(failed, errors, strict=True))
    return {index: error for index, error in _by_index(value).items() if isinstance(error, dict)}


def _contact_ids(value: Any, keys: list[str], codes: dict[int, Any]) -> dict[int, str]:
    """Saved contacts' ids by input index, matched by email (positions shift past failures)."""
    index_of = {key: index for index, key in enumerate(keys)}
    found: dict[int, str] = {}
    unplaced: list[str] = []
    entries = value.items() if isinstance(value, dict) else enumerate(value or [])
    for position, contact in entries:
        if not isinstance(contact, dict) or contact.get("id") is None:
            continue
        contact_id = str(contact["id"])
        email = _contact_email(contact)
        if email is not None and email_key(email) in index_of:
            found[index_of[email_key(email)]] = contact_id
        elif isinstance(value, dict) and str(position).isdigit():
            found.setdefault(int(position), contact_id)
        else:
            unplaced.append(contact_id)
    # Without emails, a list holding exactly the saved items can only be in their order.
    saved = [i for i in range(len(keys)) if _as_int(codes.get(i)) in _SAVED and i not in found]
    if unplaced and len(unplaced) == len(saved):
        found.update(zip(saved, unplaced, strict=True))
    return found


def _contact_email(contact: dict[str, Any]) -> str | None:
    fields = contact.get("fields")
    if isinstance(fields, dict):
        every = fields.get("all")
        if isinstance(every, dict) and isinstance(every.get("email"), str):
            return str(every["email"])
        core = fields.get("core")
        email = core.get("email") if isinstance(core, dict) else None
        if isinstance(email, dict) and isinstance(email.get("value"), str):
            return str(email["value"])
    email = contact.get("email")
    return email if isinstance(email, str) else None


def _error_list(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The errors of a whole-request failure: `{"errors": [...]}` or Mautic 2's `{"error": {}}`."""
    errors = body.get("errors")
    if isinstance(errors, list):
        return [error for error in errors if isinstance(error, dict)]
    if isinstance(errors, dict):
        return [error for error in errors.values() if isinstance(error, dict)]
    error = body.get("error")
    return [error] if isinstance(error, dict) else []


def _error_type(body: Any) -> str | None:
    if isinstance(body, dict):
        for error in _error_list(body):
            if error.get("type"):
                return str(error["type"])
        if isinstance(body.get("error"), str):
            return str(body["error"])
    return None


def _error_text(error: dict[str, Any]) -> str:
    """Mautic's message with its field details, e.g. "email: A valid email is required"."""
    message = str(error.get("message") or "").strip()
    details = error.get("details")
    parts: list[str] = []
    if isinstance(details, dict):
        for field, value in details.items():
            texts = value if isinstance(value, list) else [value]
            parts.append(f"{field}: {'; '.join(str(text) for text in texts)}")
    elif isinstance(details, list):
        parts = [str(detail) for detail in details if detail]
    detail = "; ".join(parts)
    if detail and detail not in message:
        message = f"{message} ({detail})" if message else detail
    return truncate(message)


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


__all__ = ["MauticConnector", "field_aliases"]
