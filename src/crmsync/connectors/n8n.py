"""n8n connector: one webhook call per batch (crm-apis.md section 4).

Body: `{"contacts": [<contact>, ...]}`, one object per row with the contact's fields
(`contact_id, email, name, first_name, last_name, phone_number, email_type, has_gmail, context,
source_url, domain_id, page_id, source_job_id, idempotency_key`; every key always present, null
when unknown; placeholder names and phones are null), and `previous_email`: the email the
workflow last received for the contact when it changed since, else null (n8n has no record id
to update by). With `N8N_BATCH_SIZE=1` each request carries ONE contact object and no
envelope, as the customer's system sent (customer-system 4.4), and that object also keeps the
old keys `scrapersky_domain_id`, `scrapersky_page_id` and `timestamp` (UTC, ISO 8601 with `Z`)
so that workflows built for the old system keep working unchanged.

Idempotency: n8n cannot deduplicate by email, and a batch may have run although its answer was
lost (a timeout, a reset connection). Every contact object carries `idempotency_key`,
`"<contact_id>:<fingerprint>"`, the fingerprint being the hash of the object's other fields (the
engine's own "already synced" hash), and the request's `Idempotency-Key` header is a UUID derived
from the sorted keys of its contacts: a retry of the same rows, in any order and whatever the
timestamp, carries the same keys, so a workflow can drop repeats. A random key would make every
retry look new. The flip side: a contact changed and then changed back sends the same key as
before, so a workflow should keep keys for a window (hours), not forever.

Answers (n8n has no per-row results, so every row of a batch gets the same one):
- 2xx → `Ok` with the execution id if the JSON answer has one (`executionId`, `execution_id` or
  `id`; n8n's default "Workflow was started" has none), else the idempotency key as delivery id.
- 404 (webhook not registered: workflow inactive, test URL, wrong path or method) →
  `Misconfigured` with n8n's message and hint; redirects → `Misconfigured` too.
- 401/403 (n8n answers in plain text) → `AuthFailed`.
- 429 → `RateLimited(Retry-After, else 5 s)`: n8n has no built-in limit, so a 429 comes from a
  proxy or admission control that is overloaded, not from a per-second window.
- 413 → the batch is split in half and each half sent on its own; a single contact that is still
  too large fails.
- 408, 5xx (incl. 500 "Error in workflow" and Cloudflare's 524), a read timeout or a dropped
  connection → `Retry` for every row: n8n may have started a run, and a workflow error may be
  caused by the data, so attempts are spent and bounded.
- A connection that could not be opened → `Unreachable`: the request never reached n8n.
- Any other 4xx → `Fail` for every row, with n8n's text.
If a batch-wide error hits the second half of a split batch, the first half's answers travel in the
exception's `partial` (base.py).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

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
)
from crmsync.connectors.httputil import (
    body_text,
    describe,
    json_body,
    never_sent,
    redact,
    seconds_header,
    url_secrets,
)
from crmsync.connectors.mapping import clean_phone, is_placeholder, split_name
from crmsync.enums import Crm
from crmsync.settings import N8nSettings

logger = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], datetime]

# Wait after a 429 without a usable Retry-After.
DEFAULT_RATE_LIMIT_WAIT = 5.0
# Fixed namespace of our delivery ids (uuid5 of the batch's content hash).
DELIVERY_NAMESPACE = uuid.UUID("6f1f9a56-0c55-4d43-9a4e-7c1b2f0e8d21")
_EXECUTION_ID_KEYS = ("executionId", "execution_id", "id")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _text(value: str | None) -> str | None:
    return None if is_placeholder(value) else value


def contact_object(contact: ContactPayload) -> dict[str, Any]:
    """What the workflow receives for one contact (without the single-mode compatibility keys)."""
    first, last = split_name(contact.name)
    return {
        "contact_id": str(contact.contact_id),
        "email": contact.email,
        "name": _text(contact.name),
        "first_name": first,
        "last_name": last,
        "phone_number": clean_phone(contact.phone_number),
        "email_type": None if contact.email_type is None else str(contact.email_type),
        "has_gmail": contact.has_gmail,
        "context": contact.context,
        "source_url": contact.source_url,
        "domain_id": None if contact.domain_id is None else str(contact.domain_id),
        "page_id": None if contact.page_id is None else str(contact.page_id),
        "source_job_id": None if contact.source_job_id is None else str(contact.source_job_id),
        # The email the workflow last received for this contact when it changed since, else
        # null: a workflow keyed by email can find the old entry and update it.
        "previous_email": contact.previous_email,
    }


def keyed_object(contact: ContactPayload) -> tuple[str, dict[str, Any]]:
    """(fingerprint, the object sent): `contact_object` with its `idempotency_key`.

    The fingerprint leaves `previous_email` out: what the workflow holds afterwards does not
    depend on the old email (and fingerprints stay those of before `previous_email` existed,
    so an upgrade re-sends nothing).
    """
    item = contact_object(contact)
    fingerprint = stable_hash({k: v for k, v in item.items() if k != "previous_email"})
    item["idempotency_key"] = f"{item['contact_id']}:{fingerprint}"
    return fingerprint, item


def delivery_key(objects: Sequence[dict[str, Any]]) -> str:
    """The batch's `Idempotency-Key`: the same contacts and payloads, in any order, give the
    same key."""
    keys = sorted(str(item["idempotency_key"]) for item in objects)
    return str(uuid.uuid5(DELIVERY_NAMESPACE, "\n".join(keys)))


def execution_id(response: httpx.Response) -> str | None:
    data = json_body(response)
    if isinstance(data, list) and data:
        data = data[0]
    if not isinstance(data, dict):
        return None
    for key in _EXECUTION_ID_KEYS:
        value = data.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return str(value)
    return None


class N8nConnector:
    """Posts contacts to an n8n webhook. See the module docstring for the protocol."""

    name = Crm.n8n
    default_concurrency = 4

    def __init__(
        self,
        settings: N8nSettings,
        client: httpx.AsyncClient | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = _utcnow,
    ) -> None:
        self._settings = settings
        self.max_batch = settings.batch_size
        self._single = settings.batch_size == 1
        self._own_client = client is None
        self._timeout = request_timeout(settings.timeout_seconds)
        self._client = client if client is not None else make_client()
        # Accepted so every connector is built the same way; an n8n push never waits.
        self._sleep = sleep
        self._clock = clock
        self._mapped = MappedOnce(keyed_object)

    def fingerprint(self, contact: ContactPayload) -> str:
        return self._mapped.remember(contact)[0]

    def request_body(self, objects: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The JSON sent for these contact objects (one bare object in single mode)."""
        if not self._single:
            return {"contacts": list(objects)}
        (only,) = objects
        return {
            **only,
            "scrapersky_domain_id": only["domain_id"],
            "scrapersky_page_id": only["page_id"],
            "timestamp": self._clock().astimezone(UTC).replace(tzinfo=None).isoformat() + "Z",
        }

    async def push(self, batch: Sequence[ContactPayload]) -> list[RowResult]:
        if not batch:
            return []
        url, auth = self._target()
        objects = [self._mapped.take(contact)[1] for contact in batch]
        results: list[RowResult | None] = [None] * len(batch)
        try:
            if self._single:
                for index in range(len(batch)):
                    await self._deliver(url, auth, objects, [index], results)
            else:
                await self._deliver(url, auth, objects, list(range(len(batch))), results)
        except ConnectorError as error:
            if any(result is not None for result in results):
                error.partial = results
            raise
        done = [result for result in results if result is not None]
        assert len(done) == len(batch), "a row was left without a result"
        return done

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    def _target(self) -> tuple[str, dict[str, str]]:
        """The webhook URL and our auth headers; `Misconfigured` when settings are incomplete."""
        settings = self._settings
        if not settings.webhook_url:
            raise Misconfigured("N8N_WEBHOOK_URL is not set")
        headers: dict[str, str] = {}
        if settings.webhook_secret is not None:
            headers["Authorization"] = f"Bearer {settings.webhook_secret.get_secret_value()}"
        if settings.auth_header_name:
            if settings.auth_header_value is None:
                raise Misconfigured("N8N_AUTH_HEADER_NAME is set but N8N_AUTH_HEADER_VALUE is not")
            headers[settings.auth_header_name] = settings.auth_header_value.get_secret_value()
        return settings.webhook_url, headers

    def _safe(self, text: str) -> str:
        settings = self._settings
        secrets = [
            settings.webhook_secret.get_secret_value() if settings.webhook_secret else None,
            settings.auth_header_value.get_secret_value() if settings.auth_header_value else None,
            # The webhook URL is a secret too: n8n's 404 names its path.
            *url_secrets(settings.webhook_url),
        ]
        return redact(text, secrets)

    async def _deliver(
        self,
        url: str,
        auth: dict[str, str],
        objects: list[dict[str, Any]],
        indexes: list[int],
        results: list[RowResult | None],
    ) -> None:
        """Send the rows at `indexes` as one request and write their results."""
        part = [objects[i] for i in indexes]
        key = delivery_key(part)
        headers = {**auth, "Idempotency-Key": key, "content-type": "application/json"}
        try:
            response = await self._client.post(
                url,
                content=orjson.dumps(self.request_body(part)),
                headers=headers,
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            if never_sent(exc):
                raise Unreachable(f"n8n unreachable: {self._safe(describe(exc))}") from None
            for i in indexes:
                results[i] = Retry(f"n8n request failed: {self._safe(describe(exc))}")
            return
        status = response.status_code
        logger.debug("n8n: delivery %s of %d contacts -> %d", key, len(indexes), status)
        if 200 <= status < 300:
            delivered = execution_id(response) or key
            for i in indexes:
                results[i] = Ok(delivered, status)
            return
        if status == 413 and len(indexes) > 1:
            half = len(indexes) // 2
            logger.info("n8n: %d contacts too large for one request; splitting", len(indexes))
            await self._deliver(url, auth, objects, indexes[:half], results)
            await self._deliver(url, auth, objects, indexes[half:], results)
            return
        self._raise_for_batch(response)
        text = self._safe(body_text(response)) or f"HTTP {status}"
        outcome: RowResult
        if status == 413:
            outcome = Fail(f"n8n refused the contact as too large (413): {text}", status)
        elif status == 408 or status >= 500:
            outcome = Retry(f"n8n answered {status}: {text}", status)
        else:
            outcome = Fail(f"n8n answered {status}: {text}", status)
        for i in indexes:
            results[i] = outcome

    def _raise_for_batch(self, response: httpx.Response) -> None:
        """Raise the batch-wide error a status means; return when it is about the rows."""
        status = response.status_code
        if status == 404:
            data = json_body(response)
            message = hint = None
            if isinstance(data, dict):
                message, hint = data.get("message"), data.get("hint")
            text = message if isinstance(message, str) else body_text(response)
            if isinstance(hint, str) and hint:
                text = f"{text} Hint: {hint}"
            raise Misconfigured(f"n8n webhook not found (404): {self._safe(text)}", status)
        if 300 <= status < 400:
            raise Misconfigured(
                f"n8n webhook answered a redirect ({status}); set N8N_WEBHOOK_URL to the final URL",
                status,
            )
        if status in (401, 403):
            text = self._safe(body_text(response)) or f"HTTP {status}"
            raise AuthFailed(f"n8n refused our credentials ({status}): {text}", status)
        if status == 429:
            wait = seconds_header(response.headers.get("retry-after"), DEFAULT_RATE_LIMIT_WAIT)
            raise RateLimited(wait, f"n8n is rate limiting; retry in {wait:g} s")
