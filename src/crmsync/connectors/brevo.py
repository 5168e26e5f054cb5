"""Brevo (API v3) connector: concurrent single upserts, and the asynchronous import for bulk.

Vendor facts are from `shared/reference/crm-apis.md` section 1; the attribute mapping is the work
order's (2.2) with the customer's defects fixed (customer-system 6.2 items 7 and 8): placeholder
names and phones are left out, `HAS_GMAIL` is a real boolean, and Brevo's numeric id is kept.

Single upsert: `POST /contacts` with `updateEnabled: true`. 201 carries Brevo's numeric id; 204
(an update) has no body and therefore no id, so the row keeps the id it already had, or its email.
Up to `MAX_IN_FLIGHT` upserts of one connector are in flight at once, all paced evenly (no
burst) by one `RateLimiter` per connector instance, shared by all its pushes. Rows sharing an
email go one after the other, in input order, so two upserts of the same Brevo contact never race.

Bulk: a push of at least `BREVO_IMPORT_THRESHOLD` rows goes through `POST /contacts/import`
(chunks of at most `import_max_bytes` serialized bytes, well under Brevo's recommended 8 MB),
then `GET /processes/{id}` is polled until `completed`. The import answers for no single row, so:
- Brevo silently skips invalid emails in an import, and an imported row would be marked Ok
  without being in Brevo. Rows whose email does not look valid (`importable_email`, a strict ASCII
  check) are therefore sent as single upserts, where Brevo's own message ends up in `Fail`. Being
  strict costs one request for an odd-but-valid address, never a false Ok.
- Only the first row of each email is imported; later rows with that email go one by one after
  the import, so the last row of the batch is the last write, as with singles. Likewise only the
  first row of each SMS number: a later one would clash with it inside the import, and one by
  one it gets the "upsert without SMS" treatment below.
- Known gap: how Brevo's import treats a row whose SMS already belongs to ANOTHER existing contact
  is undocumented (crm-apis.md 1.2); if it skips the row silently, the row is reported Ok without
  being in Brevo. Nothing short of reading every contact back could tell.
- Without `BREVO_LIST_ID` there is no destination list, which Brevo requires: singles instead.
- If the import request fails (4xx other than auth or rate limit, 5xx, transport error) or the
  process does not complete (unknown id, unknown status, `BREVO_IMPORT_TIMEOUT_SECONDS` passed),
  its rows are sent as single upserts: at-least-once, every write is an upsert by email.
- Imported rows get `Ok(external_id or email)`: the import does not return ids.

Email changes: a contact whose email changed since Brevo took it (`previous_email`) and whose
record is known (`external_id`: Brevo's numeric id, or the email a 204 left) is updated with
`PUT /contacts/{id}` and the new email in the `EMAIL` attribute, never imported, so it stays one
record (swagger `updateContact`). If Brevo answers 404 (the record is gone) or 400
`duplicate_parameter` on the email (another contact has it), the row is upserted by email.

Errors of a single upsert:
- 400 → `Fail(Brevo's message)`; a 400 `duplicate_parameter` / `invalid_parameter` about the
  phone (`SMS` in `metadata.duplicate_identifiers`, or a message naming `SMS` or a phone) is
  retried once at once without `SMS` (the phone belongs to another contact or Brevo will not take
  it; the contact itself is fine, and a phone is optional), and the second answer counts; an
  `Ok` then carries a note, recorded in the contact's sync history, that the phone was dropped.
- Phones without a country code are read as numbers of `CRMSYNC_DEFAULT_PHONE_REGION` when set;
  otherwise they are left out (Brevo refuses an SMS value without one).
- 401 → `AuthFailed`. 402/403 (`not_enough_credits`, `account_under_validation`,
  `permission_denied`, IP not authorised) → `AuthFailed` too, with Brevo's message: no row is at
  fault, a person has to act on the account, and until then a `Fail` would wrongly end good rows
  and a `Retry` would burn their attempts. 404/405 and redirects → `Misconfigured` (base URL or
  list id wrong).
- 408, 5xx, a read timeout or a dropped connection → `Retry` for that row: Brevo may have seen it.
- 429 → `RateLimited(retry_after = x-sib-ratelimit-reset, else 1 s)`.

Batch-wide errors in a concurrent push (429, 401/402/403, 404, or a connection that could not be
opened): the first one stops the push. No new request starts (the limiter is drained on 429);
requests already in flight finish and keep their answers. The push then raises the error with
`partial` set (base.py): answered rows carry their result, the rest are None, meaning "not
attempted" — so a rate limit never spends an attempt and never loses a vendor answer (e.g. the
numeric id of a 201). When no row was answered, `partial` stays None. A connection that could not
be opened raises `Unreachable` (a `Transient`): the request never reached Brevo.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from crmsync.connectors.base import (
    AuthFailed,
    ConnectorError,
    ContactPayload,
    Fail,
    MappedOnce,
    Misconfigured,
    Ok,
    RateLimited,
    Retry,
    RowResult,
    Unreachable,
    make_client,
    request_timeout,
    stable_hash,
    truncate,
)
from crmsync.connectors.fields.brevo import BrevoFields
from crmsync.connectors.fields.http import PacedClient
from crmsync.connectors.httputil import (
    body_text,
    describe,
    json_body,
    never_sent,
    redact,
    seconds_header,
)
from crmsync.connectors.mapping import (
    international_phone,
    is_placeholder,
    plain_email,
    split_name,
)
from crmsync.connectors.ratelimit import Quota, RateLimiter
from crmsync.enums import Crm
from crmsync.settings import BrevoSettings

logger = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

# Single upserts of one connector in flight at once; the rate limiter sets the pace, this only
# bounds open connections when pacing is off.
MAX_IN_FLIGHT = 16
# Brevo accepts import bodies up to 10 MB and recommends staying around 8 MB.
IMPORT_MAX_BYTES = 4_000_000
# Wait after a 429 without a usable `x-sib-ratelimit-reset` (Brevo's windows are per second).
DEFAULT_RATE_LIMIT_WAIT = 1.0
# A request refused 429 is sent again at once when its window frees in less than this.
INLINE_RETRY_WAIT = 0.5
# Once an import outlives BREVO_IMPORT_TIMEOUT_SECONDS it is polled this often: /processes is
# not in Brevo's limits table (General tier: 100 requests per hour), and at this pace an hour
# of polling stays under it even after the default first 90 s of polls every 2 s.
SLOW_POLL_SECONDS = 90.0

_PROCESS_PENDING = frozenset({"queued", "in_process"})
# A 400 message about the phone: "SMS is already associated ...", "Invalid phone number".
_ABOUT_PHONE = re.compile(r"\bSMS\b|(?i:phone)")


def importable_email(email: str) -> bool:
    """True for a plain ASCII address Brevo will surely accept; anything odd goes one by one."""
    return plain_email(email)


def brevo_attributes(contact: ContactPayload, region: str | None = None) -> dict[str, Any]:
    """Work order 2.2 attributes; a missing or placeholder value is left out, never sent.

    `region` reads phones without a country code (CRMSYNC_DEFAULT_PHONE_REGION)."""
    first, last = split_name(contact.name)
    source_url = None if is_placeholder(contact.source_url) else contact.source_url
    email_type = str(contact.email_type).strip() if contact.email_type is not None else None
    attributes: dict[str, Any] = {
        "FIRSTNAME": first,
        "LASTNAME": last,
        "SMS": international_phone(contact.phone_number, region),
        "DOMAIN_ID": str(contact.domain_id) if contact.domain_id else None,
        "PAGE_ID": str(contact.page_id) if contact.page_id else None,
        # A value of the closed EmailType vocabulary (UNKNOWN included): not scraped text.
        "EMAIL_TYPE": email_type or None,
        "SOURCE_URL": source_url.strip() if source_url else None,
        "HAS_GMAIL": contact.has_gmail,
    }
    return {key: value for key, value in attributes.items() if value is not None}


def brevo_quota(response: httpx.Response) -> Quota | None:
    """The `x-sib-ratelimit-*` headers as a `Quota` (a 429 without them: nothing left)."""
    headers = response.headers
    remaining = _whole(headers.get("x-sib-ratelimit-remaining"))
    if remaining is None:
        if response.status_code != 429:
            return None
        remaining = 0
    reset = seconds_header(headers.get("x-sib-ratelimit-reset"), DEFAULT_RATE_LIMIT_WAIT)
    return Quota(remaining, reset, _whole(headers.get("x-sib-ratelimit-limit")))


def _whole(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _known_id(contact: ContactPayload) -> str:
    """The id to keep when Brevo gives none: its numeric id from an earlier sync, else the email.

    An earlier 204 may have stored the email as the id; after an email change that is stale.
    """
    known = contact.external_id
    return known if known is not None and known.isdigit() else contact.email.strip()


def _moved(contact: ContactPayload) -> str | None:
    """The identifier of the Brevo record to update when the contact's email changed, else None:
    its numeric id, or the email Brevo holds (an id stored from a 204 is that email)."""
    if contact.previous_email is None or not contact.external_id:
        return None
    return contact.external_id


class _Fallback:
    """An update by id found no record to update: upsert by email instead."""


class _Push:
    """Results of one push so far, and the batch-wide error that stopped it, if any."""

    def __init__(self, size: int) -> None:
        self.results: list[RowResult | None] = [None] * size
        self.error: ConnectorError | None = None

    @property
    def stopped(self) -> bool:
        return self.error is not None

    def stop(self, error: ConnectorError) -> None:
        # The first error wins, except that a credentials or configuration problem (a person must
        # act) outranks a rate limit or a network blip (which pass by themselves), and of two
        # rate limits the longer wait wins.
        current = self.error
        if (
            current is None
            or (
                isinstance(error, AuthFailed | Misconfigured)
                and not isinstance(current, AuthFailed | Misconfigured)
            )
            or (
                isinstance(error, RateLimited)
                and isinstance(current, RateLimited)
                and error.retry_after > current.retry_after
            )
        ):
            self.error = error

    def finish(self) -> list[RowResult]:
        if self.error is not None:
            if any(result is not None for result in self.results):
                self.error.partial = list(self.results)
            raise self.error
        done = [result for result in self.results if result is not None]
        assert len(done) == len(self.results), "a row was left without a result"
        return done


class BrevoConnector:
    """Pushes contacts to Brevo. See the module docstring for the protocol and its choices."""

    name = Crm.brevo
    max_batch = 1000
    default_concurrency = 1

    def __init__(
        self,
        settings: BrevoSettings,
        client: httpx.AsyncClient | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._settings = settings
        self._region = settings.default_phone_region
        self._base = settings.api_base_url.rstrip("/")
        self._own_client = client is None
        self._timeout = request_timeout(settings.timeout_seconds)
        self._client = client if client is not None else make_client()
        self._sleep = sleep
        # Brevo's limits are per second (and per hour); its headers say how much is left.
        self._limiter = RateLimiter(settings.rate_limit_per_second, window=1.0, vendor="Brevo")
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.import_max_bytes = IMPORT_MAX_BYTES
        self._mapped = MappedOnce(self.contact_body)

    # -- mapping --------------------------------------------------------------------------------

    def _list_ids(self) -> list[int]:
        return [] if self._settings.list_id is None else [self._settings.list_id]

    def contact_body(self, contact: ContactPayload) -> dict[str, Any]:
        """The exact `POST /contacts` body for this contact."""
        body: dict[str, Any] = {
            "email": contact.email.strip(),
            "attributes": brevo_attributes(contact, self._region),
        }
        if list_ids := self._list_ids():
            body["listIds"] = list_ids
        body["updateEnabled"] = True
        return body

    def import_body(self, contacts: Sequence[ContactPayload]) -> dict[str, Any]:
        """The `POST /contacts/import` body for these contacts (needs a list id)."""
        return {
            "jsonBody": [self._import_item(contact) for contact in contacts],
            "listIds": self._list_ids(),
            "updateExistingContacts": True,
            "emptyContactsAttributes": False,
            "disableNotification": True,
        }

    def _import_item(self, contact: ContactPayload) -> dict[str, Any]:
        attributes = brevo_attributes(contact, self._region)
        return {"email": contact.email.strip(), "attributes": attributes}

    def fingerprint(self, contact: ContactPayload) -> str:
        # The import sends the same email, attributes and list: one fingerprint fits both paths.
        return stable_hash(self._mapped.remember(contact))

    # -- push -----------------------------------------------------------------------------------

    async def push(self, batch: Sequence[ContactPayload]) -> list[RowResult]:
        if not batch:
            return []
        self._api_key()  # fail fast, before any request, when the key is missing
        push = _Push(len(batch))
        rows = list(enumerate(batch))
        if len(batch) >= self._settings.import_threshold:
            if self._settings.list_id is None:
                logger.info(
                    "brevo: %d rows but no BREVO_LIST_ID (an import needs one); sending one by one",
                    len(batch),
                )
            else:
                rows = await self._import(rows, push)
        if rows and not push.stopped:
            await self._singles(rows, push)
        outcome = push.finish()
        logger.info(
            "brevo: pushed %d rows: %d ok, %d retry, %d fail",
            len(outcome),
            sum(isinstance(r, Ok) for r in outcome),
            sum(isinstance(r, Retry) for r in outcome),
            sum(isinstance(r, Fail) for r in outcome),
        )
        return outcome

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    def field_api(self) -> BrevoFields:
        """The contact attributes this connector writes (see `connectors.fields`)."""
        paced = PacedClient(self._client, self._limiter)
        return BrevoFields(paced, self._base, self._api_key(), self._safe)

    # -- HTTP -----------------------------------------------------------------------------------

    def _api_key(self) -> str:
        if self._settings.api_key is None:
            raise Misconfigured("BREVO_API_KEY is not set")
        return self._settings.api_key.get_secret_value()

    def _safe(self, text: str) -> str:
        return redact(text, [self._api_key()])

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        headers = {"api-key": self._api_key(), "accept": "application/json"}
        content = None
        if body is not None:
            headers["content-type"] = "application/json"
            content = orjson.dumps(body)
        response = await self._client.request(
            method, self._base + path, content=content, headers=headers, timeout=self._timeout
        )
        logger.debug("brevo: %s %s -> %d", method, path, response.status_code)
        return response

    async def _limited(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        """A paced request to `/contacts*`; a 429 whose window frees within a second is sent
        again once (it was refused, not applied). May raise `RateLimited` before sending."""
        for attempt in (1, 2):
            ticket = await self._limiter.acquire()
            try:
                response = await self._request(method, path, body)
            except BaseException:
                self._limiter.observe(ticket, None)  # no answer: no longer in flight
                raise
            self._limiter.observe(ticket, brevo_quota(response))
            if response.status_code != 429 or attempt == 2:
                break
            if self._limiter.wait_for_next() >= INLINE_RETRY_WAIT:
                break
            logger.debug("brevo: 429 on %s; the window frees in under a second", path)
        return response

    def _message(self, response: httpx.Response) -> tuple[str | None, str]:
        """Brevo's error `code` and a safe `message` (falls back to the body text)."""
        data = json_body(response)
        code = message = None
        if isinstance(data, dict):
            code = data.get("code") if isinstance(data.get("code"), str) else None
            message = data.get("message") if isinstance(data.get("message"), str) else None
        text = message or body_text(response) or f"HTTP {response.status_code}"
        return code, self._safe(text)

    def _account_error(self, response: httpx.Response) -> ConnectorError | None:
        """The batch-wide error a status means, or None when the status is about the row."""
        status = response.status_code
        if status == 429:
            # When the window frees: to a fraction of a second when our own requests fill it.
            wait = self._limiter.wait_for_next() or seconds_header(
                response.headers.get("x-sib-ratelimit-reset"), DEFAULT_RATE_LIMIT_WAIT
            )
            return RateLimited(wait, f"Brevo rate limit reached; retry in {wait:.2g} s")
        if status in (401, 402, 403):
            code, message = self._message(response)
            what = "refused the API key" if status == 401 else "refused the request"
            detail = f"{code}: {message}" if code else message
            return AuthFailed(f"Brevo {what} ({status}): {detail}", status)
        if status in (404, 405) or 300 <= status < 400:
            _, message = self._message(response)
            return Misconfigured(
                f"Brevo answered {status} at {self._settings.api_base_url!r}: {message} "
                "(check BREVO_API_BASE_URL and BREVO_LIST_ID)",
                status,
            )
        return None

    # -- single upserts -------------------------------------------------------------------------

    async def _singles(self, rows: list[tuple[int, ContactPayload]], push: _Push) -> None:
        by_email: dict[str, list[tuple[int, ContactPayload]]] = {}
        for row in rows:
            by_email.setdefault(row[1].email.strip().lower(), []).append(row)
        async with asyncio.TaskGroup() as group:
            for same_email in by_email.values():
                group.create_task(self._upsert_in_order(same_email, push))

    async def _upsert_in_order(self, rows: list[tuple[int, ContactPayload]], push: _Push) -> None:
        for index, contact in rows:
            async with self._in_flight:
                if push.stopped:
                    return
                push.results[index] = await self._upsert(contact, push)

    async def _upsert(self, contact: ContactPayload, push: _Push) -> RowResult | None:
        """One row's result, or None after stopping the push with a batch-wide error."""
        body = self._mapped.take(contact)
        identifier = _moved(contact)
        if identifier is not None:
            result = await self._update(identifier, contact, body, push)
            if not isinstance(result, _Fallback):
                return result
            if push.stopped:
                return None
        dropped: str | None = None  # why the phone was left out, for the sync history
        try:
            response = await self._limited("POST", "/contacts", body)
            if "SMS" in body["attributes"] and self._sms_conflict(response):
                if push.stopped:
                    return None
                dropped = (
                    f"Brevo would not take the phone {body['attributes']['SMS']} "
                    f"({self._message(response)[1]}); saved without it"
                )
                logger.debug("brevo: contact %s: %s", contact.contact_id, dropped)
                body["attributes"] = {k: v for k, v in body["attributes"].items() if k != "SMS"}
                response = await self._limited("POST", "/contacts", body)
        except RateLimited as exc:
            push.stop(exc)
            return None
        except httpx.HTTPError as exc:
            if never_sent(exc):
                push.stop(Unreachable(f"Brevo unreachable: {self._safe(describe(exc))}"))
                return None
            return Retry(f"Brevo request failed: {self._safe(describe(exc))}")
        error = self._account_error(response)
        if error is not None:
            push.stop(error)
            return None
        result = self._row_result(response, contact)
        if dropped is not None and isinstance(result, Ok):
            return Ok(result.external_id, result.http_status, truncate(dropped))
        return result

    async def _update(
        self, identifier: str, contact: ContactPayload, body: dict[str, Any], push: _Push
    ) -> RowResult | _Fallback | None:
        """`PUT /contacts/{identifier}` with the new email in `EMAIL`: the same record, updated.

        `_Fallback` when Brevo has no such contact any more (404) or another contact holds the
        new email (400 duplicate email): the caller then upserts by email.
        """
        update: dict[str, Any] = {
            "attributes": {**body["attributes"], "EMAIL": contact.email.strip()},
        }
        if list_ids := self._list_ids():
            update["listIds"] = list_ids
        path = "/contacts/" + quote(identifier, safe="")
        try:
            response = await self._limited("PUT", path, update)
            if "SMS" in update["attributes"] and self._sms_conflict(response):
                if push.stopped:
                    return None
                del update["attributes"]["SMS"]
                response = await self._limited("PUT", path, update)
        except RateLimited as exc:
            push.stop(exc)
            return None
        except httpx.HTTPError as exc:
            if never_sent(exc):
                push.stop(Unreachable(f"Brevo unreachable: {self._safe(describe(exc))}"))
                return None
            return Retry(f"Brevo request failed: {self._safe(describe(exc))}")
        status = response.status_code
        _, message = self._message(response)
        if status == 404 or (status == 400 and self._email_taken(response)):
            logger.info(
                "brevo: contact %s: no record to move to its new email (%d: %s); upserting it",
                contact.contact_id,
                status,
                message,
            )
            return _Fallback()
        error = self._account_error(response)
        if error is not None:
            push.stop(error)
            return None
        if 200 <= status < 300:
            return Ok(_known_id(contact), status)
        if status == 408 or status >= 500:
            return Retry(f"Brevo answered {status}: {message}", status)
        return Fail(message, status)

    @staticmethod
    def _email_taken(response: httpx.Response) -> bool:
        """A 400 saying another contact already has this email."""
        data = json_body(response)
        if not isinstance(data, dict) or data.get("code") != "duplicate_parameter":
            return False
        metadata = data.get("metadata")
        taken = metadata.get("duplicate_identifiers") if isinstance(metadata, dict) else None
        if isinstance(taken, list):
            return any(str(i).lower() == "email" for i in taken)
        return "email" in str(data.get("message", "")).lower()

    def _sms_conflict(self, response: httpx.Response) -> bool:
        """A 400 about the SMS attribute (already on another contact, or refused as a value)."""
        if response.status_code != 400:
            return False
        data = json_body(response)
        if not isinstance(data, dict) or data.get("code") not in (
            "duplicate_parameter",
            "invalid_parameter",
        ):
            return False
        metadata = data.get("metadata")
        identifiers = metadata.get("duplicate_identifiers") if isinstance(metadata, dict) else None
        if isinstance(identifiers, list) and any(str(i).upper() == "SMS" for i in identifiers):
            return True
        message = data.get("message")
        return isinstance(message, str) and _ABOUT_PHONE.search(message) is not None

    def _row_result(self, response: httpx.Response, contact: ContactPayload) -> RowResult:
        status = response.status_code
        if status == 201:
            data = json_body(response)
            brevo_id = data.get("id") if isinstance(data, dict) else None
            if isinstance(brevo_id, int | str) and str(brevo_id):
                return Ok(str(brevo_id), status)
            logger.warning("brevo: 201 without a contact id for contact %s", contact.contact_id)
            return Ok(_known_id(contact), status)
        if 200 <= status < 300:
            # 204: updated; the body is empty by design and there is no id in it.
            return Ok(_known_id(contact), status)
        _, message = self._message(response)
        if status == 408 or status >= 500:
            return Retry(f"Brevo answered {status}: {message}", status)
        return Fail(message, status)

    # -- import ---------------------------------------------------------------------------------

    async def _import(
        self, rows: list[tuple[int, ContactPayload]], push: _Push
    ) -> list[tuple[int, ContactPayload]]:
        """Import what can be imported; returns the rows still to send one by one."""
        importable: list[tuple[int, ContactPayload]] = []
        singles: list[tuple[int, ContactPayload]] = []
        seen_emails: set[str] = set()
        seen_phones: set[str] = set()
        for index, contact in rows:
            email = contact.email.strip()
            phone = international_phone(contact.phone_number, self._region)
            if (
                importable_email(email)
                and _moved(contact) is None  # the import can only upsert by email
                and email.lower() not in seen_emails
                and (phone is None or phone not in seen_phones)
            ):
                seen_emails.add(email.lower())
                if phone is not None:
                    seen_phones.add(phone)
                importable.append((index, contact))
            else:
                singles.append((index, contact))
        for chunk in self._chunks(importable):
            if push.stopped:
                break
            if await self._import_chunk([contact for _, contact in chunk], push):
                for index, contact in chunk:
                    push.results[index] = Ok(_known_id(contact), 202)
            elif not push.stopped:
                singles.extend(chunk)
        singles.sort(key=lambda row: row[0])
        return singles

    def _chunks(
        self, rows: list[tuple[int, ContactPayload]]
    ) -> Iterator[list[tuple[int, ContactPayload]]]:
        """Runs of rows whose import body stays within `import_max_bytes` once serialized."""
        overhead = len(orjson.dumps(self.import_body([])))
        chunk: list[tuple[int, ContactPayload]] = []
        size = overhead
        for row in rows:
            item = len(orjson.dumps(self._import_item(row[1]))) + 1  # + the separating comma
            if chunk and size + item > self.import_max_bytes:
                yield chunk
                chunk, size = [], overhead
            chunk.append(row)
            size += item
        if chunk:
            yield chunk

    async def _import_chunk(self, contacts: list[ContactPayload], push: _Push) -> bool:
        """True once Brevo has completed importing these contacts."""
        try:
            response = await self._limited("POST", "/contacts/import", self.import_body(contacts))
        except RateLimited as exc:
            push.stop(exc)
            return False
        except httpx.HTTPError as exc:
            logger.warning(
                "brevo: import of %d contacts failed (%s); sending them one by one",
                len(contacts),
                self._safe(describe(exc)),
            )
            return False
        if response.status_code in (401, 402, 403, 429):
            error = self._account_error(response)
            assert error is not None
            push.stop(error)
            return False
        data = json_body(response)
        process_id = data.get("processId") if isinstance(data, dict) else None
        if not 200 <= response.status_code < 300 or not isinstance(process_id, int | str):
            _, message = self._message(response)
            logger.warning(
                "brevo: import of %d contacts refused (%d: %s); sending them one by one",
                len(contacts),
                response.status_code,
                message,
            )
            return False
        return await self._wait_for_process(str(process_id), len(contacts), push)

    async def _wait_for_process(self, process_id: str, count: int, push: _Push) -> bool:
        """True once the import completed; False when it failed, vanished or never ended.

        Polled every `import_poll_seconds`; once it has run `import_timeout_seconds`, every
        `SLOW_POLL_SECONDS` until `import_hard_timeout_seconds`. When Brevo's headers on
        /processes say its window is used up (or it answers 429), the next poll waits for the
        window's reset.
        """
        settings = self._settings
        started = time.monotonic()
        slept = 0.0  # what we slept ourselves (an injected sleep may not move the clock)
        pause = settings.import_poll_seconds
        slow = False
        while (elapsed := max(slept, time.monotonic() - started)) < (
            settings.import_hard_timeout_seconds
        ):
            if elapsed >= settings.import_timeout_seconds and not slow:
                slow = True
                logger.warning(
                    "brevo: import %s of %d contacts still running after %d s; polling it every "
                    "%d s until it ends (at most %d s in all, BREVO_IMPORT_HARD_TIMEOUT_SECONDS)",
                    process_id,
                    count,
                    math.ceil(elapsed),
                    SLOW_POLL_SECONDS,
                    settings.import_hard_timeout_seconds,
                )
            pause = max(pause, SLOW_POLL_SECONDS if slow else settings.import_poll_seconds)
            await self._sleep(pause)
            slept += pause
            pause = 0.0
            try:
                response = await self._request("GET", f"/processes/{process_id}")
            except httpx.HTTPError as exc:
                logger.info("brevo: polling import %s failed: %s", process_id, describe(exc))
                continue
            quota = brevo_quota(response)
            if quota is not None and quota.remaining <= 0:
                pause = quota.reset_after or DEFAULT_RATE_LIMIT_WAIT
            status = response.status_code
            if status in (401, 402, 403):
                error = self._account_error(response)
                assert error is not None
                push.stop(error)
                return False
            if status == 429 or status == 408 or status >= 500:
                continue
            data = json_body(response)
            state = data.get("status") if isinstance(data, dict) else None
            if status == 200 and state == "completed":
                logger.info("brevo: import %s of %d contacts completed", process_id, count)
                return True
            if status == 200 and state in _PROCESS_PENDING:
                continue
            _, message = self._message(response)
            logger.warning(
                "brevo: import %s ended badly (%d, status %r: %s); sending its %d contacts one by "
                "one",
                process_id,
                status,
                state,
                message,
                count,
            )
            return False
        logger.warning(
            "brevo: import %s not completed after %d s (BREVO_IMPORT_HARD_TIMEOUT_SECONDS); "
            "sending its %d contacts one by one",
            process_id,
            math.ceil(max(slept, time.monotonic() - started)),
            count,
        )
        return False
