"""HubSpot CRM v3: contacts upserted by email with `batch/upsert`, at most 100 per request.

`POST {HUBSPOT_API_BASE_URL}/crm/v3/objects/contacts/batch/upsert`, authenticated with the
private-app token as `Authorization: Bearer`, body
`{"inputs": [{"id": email, "idProperty": "email", "properties": {...}}]}` (crm-apis.md 2.2).
A push of more than 100 contacts is sent as several requests at once, paced by the limiter.

How answers become row results:

- 200 / 207: results and errors are matched to rows by email, case-insensitively, in any order;
  an error names its input in `context` (e.g. `{"ids": [...]}`) or in its message.
- A missing custom property (`PROPERTY_DOESNT_EXIST`) fails every row of the request with the fix
  (`crmsync setup hubspot`): splitting would only fail every row the same way. (The worker checks
  the properties before it syncs, so this only happens when one is deleted while it runs.)
- Any other whole-request refusal (400, 409, 413, 422; e.g. one invalid email, which may refuse
  the whole batch) is narrowed down: inputs the error names are failed and the rest re-sent; if it
  names none, the batch is halved, recursively. A row refused alone gets `Fail` with HubSpot's
  message. At most `SPLIT_BUDGET` extra requests per 100 inputs; rows left then get `Retry`.
- 429: `RateLimited` (see `_rate_limited`); the limiter's saved-up tokens are drained.
- 401 / 403: `AuthFailed`. 404 / 405: `Misconfigured` (wrong base URL).
- 423 (locked; HubSpot says wait at least 2 s) and 477 (migration in progress, `Retry-After` up to
  a day): `RateLimited` for that wait, so the CRM pauses like after a 429 and no attempt is spent.
- 5xx, timeouts, dropped connections: `Retry` for the request's rows. This connector raises
  `Transient` only as `Unreachable`, when no connection could be made (nothing was sent): a push
  is several requests, and per-row results keep the answers of the ones that succeeded. The
  engine bounds `Retry` by attempts, so a request that always fails (a row HubSpot chokes on)
  cannot loop forever.
- A batch-wide error after some requests were answered is raised with `partial` set.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import email_validator
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
    Unreachable,
    make_client,
    request_timeout,
    stable_hash,
    truncate,
)
from crmsync.connectors.fields import set_up
from crmsync.connectors.fields.http import PacedClient
from crmsync.connectors.fields.hubspot import HubSpotFields
from crmsync.connectors.httputil import (
    body_text,
    describe,
    json_body,
    never_sent,
    redact,
    seconds_header,
)
from crmsync.connectors.mapping import clean_phone, plain_email, split_name
from crmsync.connectors.ratelimit import Quota, RateLimiter
from crmsync.connectors.upsert import (
    CUSTOM_FIELDS,
    Budget,
    PushRun,
    chunked,
    custom_values,
    email_key,
    halves,
)
from crmsync.enums import Crm
from crmsync.settings import HubSpotSettings

logger = logging.getLogger(__name__)

UPSERT_PATH = "/crm/v3/objects/contacts/batch/upsert"
UPDATE_PATH = "/crm/v3/objects/contacts/batch/update"
MAX_INPUTS = 100
# Extra requests one chunk of 100 inputs may spend isolating refused rows: halving isolates one
# bad row in about 14 requests, so this finds two or three per attempt.
SPLIT_BUDGET = 32
# The rolling window HubSpot counts requests in, when its header does not say.
DEFAULT_WINDOW_SECONDS = 10.0
# A request refused 429 is sent again at once when the window frees in less than this.
INLINE_RETRY_WAIT = 0.5
# The daily limit resets at midnight in the account's time zone, which we cannot know: wait until
# the next midnight UTC but look again at least this often, so a reset at another hour is not
# missed by a whole day.
DAILY_RECHECK_SECONDS = 3600.0
ENSURE_PROPERTIES = 'run "crmsync setup hubspot"'
SCOPES = "crm.objects.contacts.read and crm.objects.contacts.write"

# 423 Locked: "locks last 2 s, wait at least 2 s" (crm-apis.md 2.4).
LOCKED_WAIT_SECONDS = 2.0
# 477 Migration in Progress comes with Retry-After (up to a day); without one, look again hourly.
MIGRATION_WAIT_SECONDS = 3600.0
_NARROW_STATUSES = frozenset({400, 409, 413, 422})
# A 207 error in one of these categories is HubSpot's trouble, not the row's.
_RETRY_CATEGORIES = frozenset({"RATE_LIMITS", "RATE_LIMIT", "LOCKED", "INTERNAL_ERROR", "TIMEOUT"})
# `Property "x" does not exist`, however many times the quotes were JSON-escaped.
_PROPERTY_MISSING = re.compile(r'Property \\*"([^"\\]+)\\*" does not exist', re.IGNORECASE)
_VALUES_NOT_VALID = "Property values were not valid: "
_SPECIAL_USE = frozenset(email_validator.SPECIAL_USE_DOMAIN_NAMES)


def email_problem(email: str) -> str | None:
    """Why HubSpot would refuse this email as a contact's, or None when it is fine.

    HubSpot checks the syntax and that the domain could be a real one (a dot, no special-use
    name such as `localhost`); it does not look the domain up. A plain ASCII address passes at
    once; anything else goes through `email-validator` with the same rules (and no
    internationalized local part, which HubSpot's own check does not take either).
    """
    text = email.strip()
    if plain_email(text) and text.rpartition(".")[2].lower() not in _SPECIAL_USE:
        return None
    try:
        email_validator.validate_email(text, check_deliverability=False, allow_smtputf8=False)
    except email_validator.EmailNotValidError as exc:
        return str(exc)
    return None


def property_names(settings: HubSpotSettings) -> dict[str, str]:
    """The configured custom property name per `CUSTOM_FIELDS` key; an empty setting omits it."""
    names: dict[str, str] = {}
    for field in CUSTOM_FIELDS:
        name = str(getattr(settings, f"custom_property_{field}")).strip()
        if name:
            names[field] = name
    return names


class HubSpotConnector:
    """The `Connector` for HubSpot (see the module docstring for the status mapping)."""

    name = Crm.hubspot
    max_batch = MAX_INPUTS
    default_concurrency = 4

    def __init__(
        self,
        settings: HubSpotSettings,
        client: httpx.AsyncClient | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._base = settings.api_base_url.rstrip("/")
        self._token = settings.access_token.get_secret_value() if settings.access_token else None
        self._properties = property_names(settings)
        self._owns_client = client is None
        self._client = client if client is not None else make_client()
        self._clock = clock
        self._timeout = request_timeout(settings.timeout_seconds)
        # HubSpot counts requests over a rolling 10 s window (its headers say the length):
        # paced 3% under the limit, with its X-HubSpot-RateLimit-* headers heeded.
        self._limiter = RateLimiter(
            settings.rate_limit_per_second, window=DEFAULT_WINDOW_SECONDS, vendor="HubSpot"
        )
        self._mapped = MappedOnce(self.payload)

    def payload(self, contact: ContactPayload) -> dict[str, Any]:
        """The `batch/upsert` input for one contact; placeholders and missing values left out."""
        email = contact.email.strip()
        properties: dict[str, str] = {"email": email}
        first, last = split_name(contact.name)
        if first:
            properties["firstname"] = first
        if last:
            properties["lastname"] = last
        phone = clean_phone(contact.phone_number)
        if phone:
            properties["phone"] = phone
        for field, value in custom_values(contact).items():
            name = self._properties.get(field)
            if name:
                properties[name] = (
                    ("true" if value else "false") if isinstance(value, bool) else value
                )
        return {"id": email, "idProperty": "email", "properties": properties}

    def fingerprint(self, contact: ContactPayload) -> str:
        return stable_hash(self._mapped.remember(contact))

    async def push(self, batch: Sequence[ContactPayload]) -> list[RowResult]:
        if not batch:
            return []
        if self._token is None:
            raise Misconfigured("HUBSPOT_ACCESS_TOKEN is not set")
        run = PushRun(batch)
        inputs = {key: self._mapped.take(contact) for key, contact in run.contacts.items()}
        # An invalid email would make HubSpot refuse the row, or the whole batch: not sent.
        keys = []
        for key, contact in run.contacts.items():
            problem = email_problem(contact.email)
            if problem is None:
                keys.append(key)
            else:
                run.set([key], Fail(f"HubSpot would refuse this email: {problem}"))
        # A contact whose email changed is updated by its record id, so it stays one record.
        moved = {key for key in keys if _moved(run.contacts[key])}
        upserts = [key for key in keys if key not in moved]
        requests = [
            self._upsert(run, inputs, part, Budget(SPLIT_BUDGET))
            for part in chunked(upserts, MAX_INPUTS)
        ]
        requests += [
            self._update(run, inputs, part, Budget(SPLIT_BUDGET))
            for part in chunked([key for key in keys if key in moved], MAX_INPUTS)
        ]
        return await run.run(requests)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def field_api(self) -> HubSpotFields:
        """The custom contact properties this connector writes (see `connectors.fields`)."""
        if self._token is None:
            raise Misconfigured("HUBSPOT_ACCESS_TOKEN is not set")
        paced = PacedClient(self._client, self._limiter)
        return HubSpotFields(paced, self._base, self._token, self._properties, self._redact)

    # --- one request -------------------------------------------------------------------------

    async def _post(
        self, run: PushRun, keys: list[str], path: str, body: dict[str, Any]
    ) -> httpx.Response | None:
        """One paced request for `keys`; None when it got no answer (their results are set)."""
        run.check()
        ticket = await self._limiter.acquire()
        run.check()
        started = time.monotonic()
        try:
            response = await self._client.post(
                self._base + path,
                content=orjson.dumps(body),
                headers=_headers(self._token),
                timeout=self._timeout,
            )
        except BaseException as exc:
            self._limiter.observe(ticket, None)  # no answer: no longer in flight
            if not isinstance(exc, httpx.HTTPError):
                raise
            self._transport_error(run, keys, exc)
            return None
        self._limiter.observe(ticket, hubspot_quota(response))
        logger.debug(
            "HubSpot %s of %d contacts: HTTP %d in %.2f s",
            path,
            len(keys),
            response.status_code,
            time.monotonic() - started,
        )
        return response

    async def _upsert(
        self,
        run: PushRun,
        inputs: dict[str, dict[str, Any]],
        keys: list[str],
        budget: Budget,
        *,
        refused: bool = False,
    ) -> None:
        """Send `keys`' inputs in one request and record a result for each (or raise).

        `refused`: this is the one re-send of a request refused 429 (see `_window_429`).
        """
        body = {"inputs": [inputs[key] for key in keys]}
        response = await self._post(run, keys, UPSERT_PATH, body)
        if response is not None:
            await self._upsert_status(run, inputs, keys, response, budget, refused=refused)

    async def _upsert_status(
        self,
        run: PushRun,
        inputs: dict[str, dict[str, Any]],
        keys: list[str],
        response: httpx.Response,
        budget: Budget,
        *,
        refused: bool = False,
    ) -> None:
        """Record what an answer's status means for `keys` (or raise a batch-wide error)."""
        status = response.status_code
        if status in (200, 201, 207):
            unsettled = self._read_results(run, keys, response)
            if unsettled:
                await self._split(run, inputs, unsettled, status, budget)
        elif status == 429:
            if not refused and self._window_429(response):
                await self._upsert(run, inputs, keys, budget, refused=True)
                return
            raise self._rate_limited(response)
        elif status == 401:
            raise AuthFailed(
                f"HubSpot refused the access token (401): {self._message(response).rstrip('.')}. "
                "Check HUBSPOT_ACCESS_TOKEN (a private-app token).",
                401,
            )
        elif status == 403:
            raise AuthFailed(
                f"HubSpot refused the request (403): {self._message(response).rstrip('.')}. "
                f"The private app needs the scopes {SCOPES}.",
                403,
            )
        elif status in _NARROW_STATUSES:
            await self._narrow(run, inputs, keys, response, budget)
        elif status in (404, 405):
            raise Misconfigured(
                f"HubSpot answered {status} for {response.url.path}: check HUBSPOT_API_BASE_URL "
                f"({self._base})",
                status,
            )
        elif status in (423, 477):
            raise self._on_hold(response)
        elif status >= 500:
            run.set(keys, Retry(f"HubSpot answered {status}: {self._message(response)}", status))
        elif 400 <= status < 500:
            message = self._message(response)
            run.set(keys, Fail(f"HubSpot refused the batch ({status}): {message}", status))
        else:
            run.set(keys, Retry(f"HubSpot answered an unexpected {status}", status))

    async def _update(
        self, run: PushRun, inputs: dict[str, dict[str, Any]], keys: list[str], budget: Budget
    ) -> None:
        """Update the records of contacts whose email changed, by record id (`batch/update`).

        Inputs whose id HubSpot no longer has (`OBJECT_NOT_FOUND`), or whose new email another
        record holds (`CONFLICT`), are upserted by email instead.
        """
        ids = {str(run.contacts[key].external_id): key for key in keys}
        body = {
            "inputs": [{"id": i, "properties": inputs[k]["properties"]} for i, k in ids.items()]
        }
        response = await self._post(run, keys, UPDATE_PATH, body)
        if response is None:
            return
        status = response.status_code
        answer = json_body(response)
        if status in (200, 207) and isinstance(answer, dict):
            fallback = self._read_updates(run, ids, answer, status)
        elif status in _NARROW_STATUSES and len(keys) > 1 and budget.take():
            # One bad input refuses the whole request: find it by halves.
            for part in halves(keys):
                await self._update(run, inputs, part, budget)
            return
        elif status in _NARROW_STATUSES:
            error = answer if isinstance(answer, dict) else {"message": body_text(response)}
            missing = _missing_properties(error)
            reason = (
                self._missing_reason(missing)
                if missing is not None
                else f"HubSpot refused the update ({status}): {self._error_text(error)}"
            )
            run.set(keys, Fail(reason, status))
            return
        else:
            await self._upsert_status(run, inputs, keys, response, budget)
            return
        if fallback:
            logger.info(
                "HubSpot: %d contact(s) whose email changed have no record under their id any "
                "more (or their new email has one): upserting them by email",
                len(fallback),
            )
            await self._upsert(run, inputs, fallback, budget)

    def _read_updates(
        self, run: PushRun, ids: dict[str, str], answer: dict[str, Any], status: int
    ) -> list[str]:
        """Record a `batch/update` answer; the keys to upsert by email instead."""
        for item in _dicts(answer.get("results")):
            key = ids.get(str(item.get("id")))
            if key is not None:
                run.set([key], Ok(str(item["id"]), status))
        fallback: list[str] = []
        for error in _dicts(answer.get("errors")):
            context = error.get("context")
            named = context.get("ids") if isinstance(context, dict) else None
            keys = [ids[str(i)] for i in named or [] if str(i) in ids]
            category = str(error.get("category", "")).upper()
            if category in ("OBJECT_NOT_FOUND", "CONFLICT"):
                fallback += keys
            elif category in _RETRY_CATEGORIES:
                run.set(keys, Retry(f"HubSpot could not save: {self._error_text(error)}", status))
            else:
                run.set(
                    keys, Fail(f"HubSpot refused the update: {self._error_text(error)}", status)
                )
        for key in ids.values():
            if key not in run.results and key not in fallback:
                run.set([key], Retry("HubSpot's answer did not include this contact", status))
        return fallback

    def _transport_error(self, run: PushRun, keys: list[str], exc: httpx.HTTPError) -> None:
        if isinstance(exc, httpx.UnsupportedProtocol):
            raise Misconfigured(f"HUBSPOT_API_BASE_URL is not an http(s) URL: {exc}") from None
        reason = self._redact(f"HubSpot request failed: {describe(exc)}")
        if never_sent(exc):
            raise Unreachable(reason) from None
        logger.warning("%s (%d contacts will be retried)", reason, len(keys))
        run.set(keys, Retry(reason))

    def _read_results(
        self, run: PushRun, keys: list[str], response: httpx.Response
    ) -> tuple[list[str], str] | None:
        """Match a 200 / 207 answer's results and errors to the request's rows by email.

        Returns the rows left without a result when HubSpot reported errors it did not tie to
        a contact (with those errors' text), for the caller to re-send in parts; else None.
        """
        status = response.status_code
        body = json_body(response)
        if not isinstance(body, dict):
            run.set(keys, Retry(f"HubSpot answered {status} without a readable body", status))
            return None
        pending = dict.fromkeys(keys)  # an ordered set
        unmatched_ids: list[str] = []
        for item in _dicts(body.get("results")):
            if item.get("id") is None:
                continue
            properties = item.get("properties")
            email = properties.get("email") if isinstance(properties, dict) else None
            key = email_key(email) if isinstance(email, str) else None
            if key is not None and key in pending:
                run.set([key], Ok(str(item["id"]), status))
                del pending[key]
            else:
                unmatched_ids.append(str(item["id"]))
        unattributed: list[str] = []
        for error in _dicts(body.get("errors")):
            named = _named(error, list(pending))
            missing = _missing_properties(error)
            result: RowResult
            if missing is not None:
                # A property error concerns every input, named or not.
                result = Fail(self._missing_reason(missing), status)
                named = named or list(pending)
            elif not named:
                unattributed.append(self._error_text(error))
                continue
            elif str(error.get("category", "")).upper() in _RETRY_CATEGORIES:
                text = self._error_text(error)
                result = Retry(f"HubSpot could not save the contact: {text}", status)
            else:
                result = Fail(f"HubSpot refused the contact: {self._error_text(error)}", status)
            run.set(named, result)
            for key in named:
                pending.pop(key, None)
        if not pending:
            return None
        left = list(pending)
        if len(left) == 1 and len(unattributed) == 1 and not unmatched_ids:
            run.set(left, Fail(f"HubSpot refused the contact: {unattributed[0]}", status))
        elif len(left) == 1 and len(unmatched_ids) == 1 and not unattributed:
            run.set(left, Ok(unmatched_ids[0], status))
        elif unattributed:
            # Which rows the errors are about is unknown: halving the rest finds out.
            return left, truncate("; ".join(unattributed))
        else:
            run.set(left, Retry("HubSpot's answer did not include this contact", status))
        return None

    async def _split(
        self,
        run: PushRun,
        inputs: dict[str, dict[str, Any]],
        unsettled: tuple[list[str], str],
        status: int,
        budget: Budget,
    ) -> None:
        """Re-send, in halves, the rows of a 207 whose errors named no contact."""
        keys, errors = unsettled
        logger.info(
            "HubSpot reported errors it did not tie to a contact (%s); re-sending the %d "
            "contacts without a result in halves",
            errors,
            len(keys),
        )
        for part in halves(keys):
            if budget.take():
                await self._upsert(run, inputs, part, budget)
            else:
                reason = f"HubSpot reported errors it did not tie to a contact: {errors}"
                run.set(part, Retry(f"{reason}; not narrowed down further in this attempt", status))

    async def _narrow(
        self,
        run: PushRun,
        inputs: dict[str, dict[str, Any]],
        keys: list[str],
        response: httpx.Response,
        budget: Budget,
    ) -> None:
        """A request refused as a whole: find the rows at fault instead of failing them all."""
        status = response.status_code
        body = json_body(response)
        error = body if isinstance(body, dict) else {"message": body_text(response)}
        missing = _missing_properties(error)
        if missing is not None:
            reason = self._missing_reason(missing)
            logger.error("%s (%d contacts failed)", reason, len(keys))
            run.set(keys, Fail(reason, status))
            return
        message = self._error_text(error)
        named = _named(error, keys)
        if len(keys) == 1 or len(named) == len(keys):
            run.set(keys, Fail(f"HubSpot refused the contact ({status}): {message}", status))
            return
        if named:
            run.set(named, Fail(f"HubSpot refused the contact ({status}): {message}", status))
            parts = [[key for key in keys if key not in named]]
        else:
            parts = halves(keys)
        logger.info(
            "HubSpot refused a batch of %d contacts (%d: %s); re-sending in %d part(s)",
            len(keys),
            status,
            message,
            len(parts),
        )
        for part in parts:
            if budget.take():
                await self._upsert(run, inputs, part, budget)
            else:
                run.set(
                    part,
                    Retry(
                        f"HubSpot refused the batch this contact was in ({status}: {message}); "
                        "not narrowed down further in this attempt",
                        status,
                    ),
                )

    # --- messages ----------------------------------------------------------------------------

    def _window_429(self, response: httpx.Response) -> bool:
        """Whether a 429 is the short window's and it frees within a second: send again then
        (the request was refused, not applied), instead of pausing the CRM."""
        headers = response.headers
        if (
            _policy(response) == "DAILY"
            or headers.get("X-HubSpot-RateLimit-Daily-Remaining", "").strip() == "0"
            or headers.get("Retry-After") is not None
        ):
            return False
        return self._limiter.wait_for_next() < INLINE_RETRY_WAIT

    def _rate_limited(self, response: httpx.Response) -> RateLimited:
        """A 429 as `RateLimited`: wait for the short window to free, or for the daily reset."""
        policy = _policy(response)
        headers = response.headers
        now = datetime.fromtimestamp(self._clock(), UTC)
        retry_after = headers.get("Retry-After")
        daily_left = headers.get("X-HubSpot-RateLimit-Daily-Remaining", "").strip()
        if policy == "DAILY" or (not policy and daily_left == "0"):
            midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
            default = min((midnight - now).total_seconds(), DAILY_RECHECK_SECONDS)
            wait = seconds_header(retry_after, default, now)
            message = (
                f"HubSpot's daily API limit is used up; trying again in {wait / 60:.0f} min "
                "(it resets at midnight in the HubSpot account's time zone, which crmsync does "
                "not know, so it looks at least hourly until midnight UTC)"
            )
        else:
            # When our own requests fill the window, its oldest leaves it in a fraction of it.
            window = _window_seconds(headers.get("X-HubSpot-RateLimit-Interval-Milliseconds"))
            wait = seconds_header(retry_after, self._limiter.wait_for_next() or window, now)
            message = (
                f"HubSpot rate limit reached ({policy or 'rolling window'}); waiting {wait:.2g} s"
            )
        logger.warning(message)
        return RateLimited(wait, message)

    def _on_hold(self, response: httpx.Response) -> RateLimited:
        """423 (a lock while syncing fast) or 477 (account migration): wait, spend no attempt."""
        status = response.status_code
        now = datetime.fromtimestamp(self._clock(), UTC)
        retry_after = response.headers.get("Retry-After")
        if status == 423:
            wait = seconds_header(retry_after, LOCKED_WAIT_SECONDS, now)
            what = "HubSpot answered 423 Locked"
        else:
            wait = seconds_header(retry_after, MIGRATION_WAIT_SECONDS, now)
            what = "HubSpot answered 477: the account's data is being migrated"
        message = f"{what} ({self._message(response)}); waiting {wait:g} s"
        logger.warning(message)
        return RateLimited(wait, message, status)

    def _missing_reason(self, names: list[str]) -> str:
        settings = {name: field for field, name in self._properties.items()}
        quoted = ", ".join(f'"{name}"' for name in names) or "a property crmsync sends"
        hints = [
            f"HUBSPOT_CUSTOM_PROPERTY_{settings[name].upper()}"
            for name in names
            if name in settings
        ]
        reason = f"HubSpot has no contact property {quoted}: {ENSURE_PROPERTIES} to create it"
        if hints:
            reason += f" (or set {', '.join(hints)} to an existing property, or empty to omit it)"
        return self._redact(reason)

    def _message(self, response: httpx.Response) -> str:
        body = json_body(response)
        if isinstance(body, dict):
            return self._error_text(body)
        return self._redact(body_text(response) or response.reason_phrase)

    def _error_text(self, error: dict[str, Any]) -> str:
        """HubSpot's message, with the inner messages of a property-values error unwrapped."""
        message = str(error.get("message") or "").strip()
        if message.startswith(_VALUES_NOT_VALID):
            try:
                details = orjson.loads(message[len(_VALUES_NOT_VALID) :])
                inner = [
                    str(d["message"]) for d in details if isinstance(d, dict) and "message" in d
                ]
            except (orjson.JSONDecodeError, TypeError):
                inner = []
            if inner:
                message = "; ".join(inner)
        category = error.get("category")
        if category and str(category) not in message:
            message = f"{category}: {message}" if message else str(category)
        return truncate(self._redact(message or "no message"))

    def _redact(self, text: str) -> str:
        return redact(text, [self._token])


# --- fields ------------------------------------------------------------------------------------


async def ensure_properties(
    settings: HubSpotSettings, client: httpx.AsyncClient | None = None
) -> list[str]:
    """Create each configured custom contact property HubSpot lacks; the names created.

    What `crmsync setup hubspot` does (`fields.set_up`), kept for `crmsync hubspot
    ensure-properties`. Raises `AuthFailed` when the token or its scopes are refused, and a
    `ConnectorError` on any other failure.
    """
    connector = HubSpotConnector(settings, client)
    try:
        results = await set_up(connector.field_api())
    finally:
        await connector.aclose()
    return [result.field.name for result in results if result.status == "created"]


# --- helpers -----------------------------------------------------------------------------------


def _headers(token: str | None) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Accept": "application/json",
    }


def hubspot_quota(response: httpx.Response) -> Quota | None:
    """The short window's `X-HubSpot-RateLimit-*` headers as a `Quota` (HubSpot says no reset)."""
    headers = response.headers
    try:
        remaining = int(headers["X-HubSpot-RateLimit-Remaining"])
    except (KeyError, ValueError):
        if response.status_code != 429 or _policy(response) == "DAILY":
            return None
        remaining = 0
    try:
        limit: int | None = int(headers.get("X-HubSpot-RateLimit-Max", ""))
    except ValueError:
        limit = None
    window = _window_seconds(headers.get("X-HubSpot-RateLimit-Interval-Milliseconds"))
    return Quota(remaining, None, limit, window)


def _policy(response: httpx.Response) -> str:
    """The `policyName` of a 429 (DAILY, TEN_SECONDLY_ROLLING, ...), upper case, or ""."""
    body = json_body(response)
    return str(body.get("policyName") or "").upper() if isinstance(body, dict) else ""


def _window_seconds(milliseconds: str | None) -> float:
    try:
        window = float(milliseconds or "") / 1000
    except ValueError:
        return DEFAULT_WINDOW_SECONDS
    return window if 0 < window <= 3600 else DEFAULT_WINDOW_SECONDS


def _moved(contact: ContactPayload) -> bool:
    """The contact's email changed since HubSpot took it, and its record id is known."""
    record = contact.external_id
    return contact.previous_email is not None and record is not None and record.isdigit()


def _dicts(value: Any) -> Iterable[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _named(error: dict[str, Any], keys: list[str]) -> list[str]:
    """The keys an error names: in its `context` values (`ids`, ...) or its message text."""
    errors = [error, *_dicts(error.get("errors"))]
    ids: set[str] = set()
    texts: list[str] = []
    for item in errors:
        context = item.get("context")
        if isinstance(context, dict):
            for value in context.values():
                for text in value if isinstance(value, list) else [value]:
                    if isinstance(text, str):
                        ids.add(email_key(text))
        if isinstance(item.get("message"), str):
            texts.append(item["message"])
    message = "\n".join(texts)
    return [key for key in keys if key in ids or _mentions(message, key)]


def _mentions(text: str, email: str) -> bool:
    """Whether `text` contains `email` as a whole address (not inside a longer one)."""
    if not text or email not in text.lower():
        return False
    pattern = r"(?<![\w.%+\-@])" + re.escape(email) + r"(?![\w%+\-@]|\.\w)"
    return re.search(pattern, text, re.IGNORECASE) is not None


def _missing_properties(error: dict[str, Any]) -> list[str] | None:
    """The property names a "property does not exist" error names (maybe none), else None."""
    blob = orjson.dumps(error).decode()
    found = _PROPERTY_MISSING.findall(blob)
    if not found and "PROPERTY_DOESNT_EXIST" not in blob:
        return None
    for item in [error, *_dicts(error.get("errors"))]:
        context = item.get("context")
        names = context.get("propertyName") if isinstance(context, dict) else None
        if isinstance(names, list):
            found.extend(str(name) for name in names)
    return list(dict.fromkeys(found))


__all__ = ["MAX_INPUTS", "HubSpotConnector", "ensure_properties", "property_names"]
