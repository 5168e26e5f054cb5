"""Fake of Mautic's classic REST API for contacts (crm-apis.md section 3), at `/mautic`.

Endpoints: `POST /api/contacts/batch/new` (always HTTP 201 with per-item `statusCodes`),
`POST /api/contacts/new` (201 new / 200 matched by email), `GET /api/contacts?search=`,
`GET /api/contacts/{id}`, `PATCH /api/contacts/{id}/edit` (404 when the id is unknown),
`GET /api/fields/contact`, `POST /api/fields/contact/new` and the OAuth2 client-credentials
token endpoint `POST /oauth/v2/token`.

Contact fields: a contact keeps only values of fields that exist; others are dropped silently,
as Mautic's contact form ignores what it has no field for. The account starts with Mautic's core
fields, plus crmsync's `scrapersky_*` fields when `SandboxConfig.custom_fields` is on. The field
list is paged like every Mautic list (`start`, `limit`, default 30: more fields exist than one
default page holds). A created field's alias is cleaned and cut to 25 characters, and a taken
alias gets a number appended (`FieldModel::saveEntity`), so creating a field twice makes two.

An edit whose new email belongs to another contact merges that contact into the edited one
(`LeadApiController::preSaveEntity` runs the duplicate check on edits): one contact remains,
with the edited contact's id.

Auth: HTTP Basic with the Mautic user, or a bearer token from the token endpoint. Errors use the
`{"errors": [{"code", "message", "details"|"type"}]}` envelope; every answer (errors included)
carries `Mautic-Version`. The rate limiter is off by default, as Mautic ships.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import secrets
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crmsync.sandbox.common import (
    BadRequestBody,
    ContactStore,
    JSONResponse,
    RawHeaders,
    StoredContact,
    Vendor,
    Window,
    Windows,
    is_valid_email,
    iso,
    read_json,
    seconds_until,
)
from crmsync.sandbox.config import MauticOptions, SandboxConfig

TOKEN_SECONDS = 3600
# What a 429 names when burst_429 fires with the limiter switched off.
NOMINAL_HOURLY_LIMIT = 1000
# Request keys that steer the write rather than name contact fields (crm-apis.md 3.2).
_NON_FIELD_KEYS = frozenset(
    {
        "ipAddress",
        "lastActive",
        "owner",
        "overwriteWithBlank",
        "tags",
        "stage",
        "companies",
        "doNotContact",
        "frequencyRules",
    }
)


# (alias, label, type, group) of the contact fields a new Mautic install has.
_CORE_FIELDS = (
    ("title", "Title", "lookup", "core"),
    ("firstname", "First Name", "text", "core"),
    ("lastname", "Last Name", "text", "core"),
    ("company", "Primary company", "text", "core"),
    ("position", "Position", "text", "core"),
    ("email", "Email", "email", "core"),
    ("mobile", "Mobile", "tel", "core"),
    ("phone", "Phone", "tel", "core"),
    ("points", "Points", "number", "core"),
    ("fax", "Fax", "tel", "core"),
    ("address1", "Address Line 1", "text", "core"),
    ("address2", "Address Line 2", "text", "core"),
    ("city", "City", "text", "core"),
    ("state", "State", "region", "core"),
    ("zipcode", "Zip Code", "text", "core"),
    ("country", "Country", "country", "core"),
    ("preferred_locale", "Preferred Locale", "locale", "core"),
    ("timezone", "Preferred Timezone", "timezone", "core"),
    ("last_active", "Date Last Active", "datetime", "core"),
    ("attribution_date", "Attribution Date", "datetime", "core"),
    ("attribution", "Attribution", "number", "core"),
    ("website", "Website", "url", "core"),
    ("facebook", "Facebook", "text", "social"),
    ("foursquare", "Foursquare", "text", "social"),
    ("instagram", "Instagram", "text", "social"),
    ("linkedin", "LinkedIn", "text", "social"),
    ("skype", "Skype", "text", "social"),
    ("twitter", "Twitter", "text", "social"),
)
_CUSTOM_FIELDS = (
    ("scrapersky_domain_id", "ScraperSky domain ID", "text", "core"),
    ("scrapersky_page_id", "ScraperSky page ID", "text", "core"),
    ("scrapersky_email_type", "ScraperSky email type", "text", "core"),
    ("scrapersky_source_url", "ScraperSky source URL", "text", "core"),
    ("scrapersky_has_gmail", "ScraperSky has Gmail", "boolean", "core"),
)
_FIELD_TYPES = frozenset(
    {"text", "textarea", "boolean", "number", "email", "tel", "url", "select", "multiselect",
     "lookup", "date", "datetime", "time", "country", "region", "locale", "timezone", "html"}
)  # fmt: skip
ALIAS_MAX = 25
DEFAULT_PAGE = 30


def clean_alias(text: str) -> str:
    """Mautic's `cleanAlias(alias, 'f_', 25)`: lower-case, [a-z0-9_], a digit start prefixed."""
    alias = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    if alias[:1].isdigit():
        alias = "f_" + alias
    return alias[:ALIAS_MAX]


def errors(status: int, message: str, **extra: Any) -> JSONResponse:
    entry: dict[str, Any] = {"code": status, "message": message, **extra}
    entry.setdefault("details", [])
    return JSONResponse({"errors": [entry]}, status_code=status)


def _denied() -> JSONResponse:
    return JSONResponse(
        {
            "errors": [
                {"message": "API authorization denied.", "code": 401, "type": "access_denied"}
            ]
        },
        status_code=401,
    )


class MauticVersionHeader:
    """ASGI wrapper adding `Mautic-Version` to every answer under /mautic (404s included)."""

    def __init__(self, app: ASGIApp, version: str) -> None:
        self.app = app
        self.header = (b"mautic-version", version.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), self.header]
            await send(message)

        await self.app(scope, receive, send_with_version)


class MauticFake(Vendor):
    name = "mautic"
    options: MauticOptions

    def __init__(self, config: SandboxConfig) -> None:
        super().__init__(config, ContactStore())
        # noxlogic's hour starts at the first call's whole second (PHP's time()).
        self.windows = Windows(from_first_hit=True)
        # OAuth2 access token -> expiry. Kept across resets: a client's token stays valid.
        self.tokens: dict[str, float] = {}
        self.fields: dict[str, dict[str, Any]] = {}
        self._load_fields()

    def routes(self) -> list[BaseRoute]:
        e = self.endpoint
        return [
            Route(
                "/api/contacts/batch/new",
                e("POST /api/contacts/batch/new", self.batch_new),
                methods=["POST"],
            ),
            Route("/api/contacts/new", e("POST /api/contacts/new", self.new), methods=["POST"]),
            Route("/api/contacts", e("GET /api/contacts", self.search), methods=["GET"]),
            Route(
                "/api/contacts/{contact_id:int}",
                e("GET /api/contacts/{id}", self.get),
                methods=["GET"],
            ),
            Route(
                "/api/contacts/{contact_id:int}/edit",
                e("PATCH /api/contacts/{id}/edit", self.edit),
                methods=["PATCH"],
            ),
            Route(
                "/api/fields/contact",
                e("GET /api/fields/contact", self.list_fields),
                methods=["GET"],
            ),
            Route(
                "/api/fields/contact/new",
                e("POST /api/fields/contact/new", self.new_field),
                methods=["POST"],
            ),
            Route(
                "/oauth/v2/token",
                e("POST /oauth/v2/token", self.token, auth=False, limited=False),
                methods=["POST"],
            ),
            self.fallback_route(),
        ]

    # --- pipeline hooks --------------------------------------------------------------------

    def authenticate(self, request: Request) -> Response | None:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        scheme = scheme.lower()
        if self.options.api_disabled:
            if scheme == "basic":
                return errors(403, "API authorization denied.", type="access_denied")
            return errors(
                403,
                "API disabled. You need to enable the API in the API settings of Mautic's "
                "Configuration.",
                type="api_disabled",
            )
        if self.options.bad_credentials:
            return _denied()
        if scheme == "basic" and self.options.basic_auth_enabled:
            try:
                user, _, password = base64.b64decode(credentials).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return _denied()
            if user == self.config.mautic_username and password == self.config.mautic_password:
                return None
        elif scheme == "bearer":
            expiry = self.tokens.get(credentials)
            if expiry is not None and expiry > self.clock():
                return None
        return _denied()

    def error_response(self, status: int) -> Response:
        return errors(
            status,
            f"Looks like I encountered an error (error #{status}). If I do it again, please "
            "report me to the system administrator!",
        )

    def not_found_response(self, request: Request) -> Response:
        return errors(404, f"Requested URL not found: {request.url.path}")

    @property
    def per_hour(self) -> Window:
        return self.windows.get("hour", self.options.rate_window, 3600.0)

    def check_limits(self, now: float, *, burst: bool) -> tuple[Response | None, RawHeaders]:
        limit = self.options.rate_limit_per_hour
        if burst or (limit > 0 and not self.per_hour.allows(now, limit)):
            return self.rate_limited_response(now), []
        if limit <= 0:
            return None, []
        self.per_hour.take(now)
        return None, self.limit_headers(now)

    def limit_headers(self, now: float) -> RawHeaders:
        limit = self.options.rate_limit_per_hour
        if limit <= 0:
            return []
        return [
            (b"x-ratelimit-limit", str(limit).encode()),
            (b"x-ratelimit-remaining", str(self.per_hour.remaining(now, limit)).encode()),
            # noxlogic reports the reset as a unix timestamp (whole seconds).
            (b"x-ratelimit-reset", str(math.ceil(self.per_hour.reset_at(now))).encode()),
        ]

    def rate_limited_response(self, now: float) -> Response:
        limit = self.options.rate_limit_per_hour or NOMINAL_HOURLY_LIMIT
        reset_at = self.per_hour.reset_at(now)
        headers = [
            (b"x-ratelimit-limit", str(limit).encode()),
            (b"x-ratelimit-remaining", b"0"),
            (b"x-ratelimit-reset", str(math.ceil(reset_at)).encode()),
        ]
        response = errors(429, f"You exceeded the rate limit of {limit} API calls per hour.")
        response.raw_headers.extend(self.retry_after(headers, seconds_until(reset_at, now)))
        return response

    def reset(self, *, faults: bool) -> None:
        super().reset(faults=faults)
        self.windows.clear()
        self._load_fields()

    def _load_fields(self) -> None:
        defined = _CORE_FIELDS + (_CUSTOM_FIELDS if self.config.custom_fields else ())
        self.fields = {}
        for alias, label, kind, group in defined:
            self._add_field(alias, label, kind, group, {})

    def _add_field(
        self, alias: str, label: str, kind: str, group: str, properties: Any
    ) -> dict[str, Any]:
        field = {
            "isPublished": True,
            "dateAdded": iso(self.clock()),
            "createdBy": 1,
            "createdByUser": self.config.mautic_username,
            "id": len(self.fields) + 1,
            "label": label,
            "alias": alias,
            "type": kind,
            "group": group,
            "order": len(self.fields) + 1,
            "object": "lead",
            "defaultValue": None,
            "isRequired": False,
            "isPubliclyUpdatable": False,
            "isUniqueIdentifier": alias == "email",
            "properties": properties if isinstance(properties, dict) else [],
        }
        self.fields[alias] = field
        return field

    # --- fields ----------------------------------------------------------------------------

    async def list_fields(self, request: Request) -> Response:
        try:
            start = int(request.query_params.get("start", "0"))
            limit = int(request.query_params.get("limit", str(DEFAULT_PAGE)))
        except ValueError:
            return errors(400, "start and limit must be numbers")
        every = list(self.fields.values())
        page = every[start : start + limit] if limit > 0 else every[start:]
        return JSONResponse({"total": len(every), "fields": page})

    async def new_field(self, request: Request) -> Response:
        try:
            body = await read_json(request)
        except BadRequestBody as exc:
            return errors(400, exc.message)
        if not isinstance(body, dict):
            return errors(400, "Request body must be a JSON object")
        label = body.get("label")
        if not isinstance(label, str) or not label.strip():
            text = "A value is required."
            return errors(400, f"label: {text}", details={"label": [text]})
        kind = body.get("type", "text")
        if kind not in _FIELD_TYPES:
            text = "The value you selected is not a valid choice."
            return errors(400, f"type: {text}", details={"type": [text]})
        alias = clean_alias(str(body.get("alias") or label)) or "f_field"
        unique, number = alias, 1
        while unique in self.fields:
            unique = f"{alias}{number}"
            number += 1
        group = body.get("group")
        group = group if isinstance(group, str) else "core"
        field = self._add_field(unique, label, kind, group, body.get("properties"))
        return JSONResponse({"field": field}, status_code=201)

    # --- OAuth2 ----------------------------------------------------------------------------

    async def token(self, request: Request) -> Response:
        raw = await request.body()
        params: dict[str, Any]
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                params = orjson.loads(raw)
            except orjson.JSONDecodeError:
                params = {}
            params = params if isinstance(params, dict) else {}
        else:
            params = dict(parse_qsl(raw.decode("latin-1")))
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":  # client_secret_basic is allowed by OAuth2 as well
            try:
                client_id, _, secret = base64.b64decode(encoded).decode().partition(":")
                params.setdefault("client_id", client_id)
                params.setdefault("client_secret", secret)
            except (binascii.Error, UnicodeDecodeError):
                pass
        if params.get("grant_type") != "client_credentials":
            return JSONResponse(
                {
                    "error": "unsupported_grant_type",
                    "error_description": "Invalid grant_type parameter or parameter missing",
                },
                status_code=400,
            )
        if (
            self.options.bad_credentials
            or params.get("client_id") != self.config.mautic_client_id
            or params.get("client_secret") != self.config.mautic_client_secret
        ):
            return JSONResponse(
                {
                    "error": "invalid_client",
                    "error_description": "The client credentials are invalid",
                },
                status_code=400,
            )
        access_token = secrets.token_hex(20)
        self.tokens[access_token] = self.clock() + TOKEN_SECONDS
        return JSONResponse(
            {
                "access_token": access_token,
                "expires_in": TOKEN_SECONDS,
                "token_type": "bearer",
                "scope": None,
            }
        )

    # --- contacts --------------------------------------------------------------------------

    def _entity(self, contact: StoredContact) -> dict[str, Any]:
        fields = contact.fields
        tags = fields.get("tags")
        return {
            "id": contact.id,
            "isPublished": True,
            "dateAdded": contact.created_at,
            "dateModified": None if contact.push_count == 1 else contact.last_pushed_at,
            "createdBy": 1,
            "createdByUser": self.config.mautic_username,
            "points": 0,
            "color": None,
            "owner": None,
            "ipAddresses": [],
            "tags": [{"tag": t} for t in tags] if isinstance(tags, list) else [],
            "utmtags": [],
            "doNotContact": [],
            "stage": None,
            # The real answer groups fields (core, social, ...); `all` is the flat view.
            "fields": {
                "all": {
                    "id": contact.id,
                    **{k: v for k, v in fields.items() if k not in _NON_FIELD_KEYS},
                }
            },
        }

    def _save(self, item: Any, now: str) -> tuple[StoredContact | None, int, dict[str, Any]]:
        """Upsert one posted contact: (contact, 201|200, {}) or (None, 400, error entry)."""
        if not isinstance(item, dict):
            return None, 400, {"code": 400, "message": "Contact must be an object", "details": []}
        email = item.get("email")
        if not is_valid_email(email):
            # Exact validation text is UNVERIFIED; the shape follows mautic/mautic#10982.
            text = "A value is required." if email in (None, "") else "A valid email is required."
            return (
                None,
                400,
                {
                    "code": 400,
                    "message": f"email: {text}",
                    "details": {"email": [text]},
                    "type": None,
                },
            )
        assert isinstance(email, str)
        contact, created = self.store.upsert(email, self._known(item), now)
        return contact, 201 if created else 200, {}

    def _known(self, item: dict[str, Any]) -> dict[str, Any]:
        """The posted values Mautic keeps: fields that exist, and the request's own keys."""
        return {k: v for k, v in item.items() if k in self.fields or k in _NON_FIELD_KEYS}

    async def edit(self, request: Request) -> Response:
        contact = self.store.by_id.get(request.path_params["contact_id"])
        if contact is None:
            return errors(404, "Item was not found.")
        try:
            item = await read_json(request)
        except BadRequestBody as exc:
            return errors(400, exc.message)
        if not isinstance(item, dict):
            return errors(400, "Request body must be a JSON object")
        self.stats.contacts_received += 1
        email = item.get("email", contact.email)
        if not is_valid_email(email):
            text = "A valid email is required."
            return errors(400, f"email: {text}", details={"email": [text]})
        assert isinstance(email, str)
        duplicate = self.store.get(email)
        if duplicate is not None and duplicate is not contact:
            # Mautic merges the duplicate into the edited contact; the edit's values win.
            self.store.delete(duplicate)
            contact.fields = {**duplicate.fields, **contact.fields}
        if email.lower() != contact.email:
            self.store.change_email(contact, email)
        # PATCH changes only the fields sent.
        fields = {**contact.fields, **self._known(item), "email": contact.email}
        self.store.upsert(contact.email, fields, iso(self.clock()))
        return JSONResponse({"contact": self._entity(contact)})

    async def batch_new(self, request: Request) -> Response:
        try:
            items = await read_json(request)
        except BadRequestBody as exc:
            return errors(400, exc.message)
        if not isinstance(items, list):
            return errors(400, "Request body must be a JSON array of contacts")
        self.stats.contacts_received += len(items)
        limit = self.options.batch_limit
        if len(items) > limit:
            return errors(
                self.options.over_limit_status,
                f"A max of {limit} entities are supported at a time.",
            )
        now = iso(self.clock())
        contacts: dict[int, dict[str, Any]] = {}
        status_codes: list[int] = []
        failures: dict[int, dict[str, Any]] = {}
        for index, item in enumerate(items):
            contact, status, failure = self._save(item, now)
            status_codes.append(status)
            if contact is None:
                failures[index] = failure
            else:
                contacts[index] = self._entity(contact)
        body: dict[str, Any] = {"statusCodes": status_codes}
        if failures and self.options.contacts_format == "object_on_gaps":
            # PHP's json_encode turns an array with gaps into an object keyed by index.
            body["contacts"] = {str(i): c for i, c in contacts.items()}
        else:
            body["contacts"] = list(contacts.values())
        if failures:
            if self.options.errors_format == "object":
                body["errors"] = {str(i): f for i, f in failures.items()}
            else:
                body["errors"] = list(failures.values())
        return JSONResponse(body, status_code=201)

    async def new(self, request: Request) -> Response:
        try:
            item = await read_json(request)
        except BadRequestBody as exc:
            return errors(400, exc.message)
        self.stats.contacts_received += 1
        contact, status, failure = self._save(item, iso(self.clock()))
        if contact is None:
            return JSONResponse({"errors": [failure]}, status_code=status)
        headers = {"Location": f"/api/contacts/{contact.id}"} if status == 201 else None
        return JSONResponse({"contact": self._entity(contact)}, status_code=status, headers=headers)

    async def get(self, request: Request) -> Response:
        contact = self.store.by_id.get(request.path_params["contact_id"])
        if contact is None:
            return errors(404, "Item was not found.")
        return JSONResponse({"contact": self._entity(contact)})

    async def search(self, request: Request) -> Response:
        """`search=email:x` matches one email exactly; other text matches emails containing it."""
        query = request.query_params.get("search", "").strip().lower()
        try:
            limit = int(request.query_params.get("limit", "30"))
        except ValueError:
            return errors(400, "limit must be a number")
        if query.startswith("email:"):
            found = self.store.get(query[len("email:") :])
            matches = [found] if found is not None else []
        else:
            matches = [c for key, c in self.store.by_email.items() if query in key]
        # Mautic returns the list as an object keyed by contact id.
        contacts = {str(c.id): self._entity(c) for c in matches[:limit]}
        return JSONResponse({"total": len(matches), "contacts": contacts})
