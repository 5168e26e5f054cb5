"""Fake of HubSpot CRM v3 contacts and contact properties (crm-apis.md section 2), at `/hubspot`.

Endpoints: `POST /crm/v3/objects/contacts/batch/upsert` (the hot path: <= 100 inputs, 200 or 207),
`POST /crm/v3/objects/contacts/batch/update` (by record id), `POST /crm/v3/objects/contacts`
(201 / 409), `GET|PATCH /crm/v3/objects/contacts/{id}` (`?idProperty=email` allowed),
`GET|POST /crm/v3/properties/contacts` and `GET /crm/v3/properties/contacts/{name}`.

Ids are numeric strings, property values strings, emails matched case-insensitively (stored
lower-case, as HubSpot shows them). Every property written must exist in the registry, which
starts with HubSpot's defaults, plus our `scrapersky_*` custom properties when
`SandboxConfig.custom_fields` is on; a request naming an unknown property is refused whole
(400 `PROPERTY_DOESNT_EXIST`).

`batch/update` answers 200, or 207 with an `OBJECT_NOT_FOUND` error whose `context.ids` lists the
ids it does not have (the other inputs are applied). A new email that belongs to another record
gives a `CONFLICT` error naming that input's id, "Contact already exists. Existing ID: N" (the
single-contact 409's wording; how batch/update reports it is UNVERIFIED).

Limits: a rolling 10-second window (option `rate_window=fixed`: per clock-aligned window; option
`rate_limit_interval_ms`: another length) and a UTC-day counter, reported in
`X-HubSpot-RateLimit-*` headers; a 429 names the policy (TEN_SECONDLY_ROLLING or DAILY).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from crmsync.sandbox.common import (
    BadRequestBody,
    ContactStore,
    FixedWindow,
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
from crmsync.sandbox.config import HubSpotOptions, SandboxConfig

MAX_BATCH = 100
# Free/Starter requests per 10 s: what a 429 reports when the window limit is switched off.
FREE_TIER_WINDOW = 100
CONTACT_OBJECT_TYPE = "0-1"

# (name, label, type, fieldType) of the default properties a portal starts with (a subset).
_DEFAULT_PROPERTIES = [
    ("email", "Email", "string", "text"),
    ("firstname", "First Name", "string", "text"),
    ("lastname", "Last Name", "string", "text"),
    ("phone", "Phone Number", "string", "phonenumber"),
    ("mobilephone", "Mobile Phone Number", "string", "phonenumber"),
    ("company", "Company Name", "string", "text"),
    ("website", "Website URL", "string", "text"),
    ("jobtitle", "Job Title", "string", "text"),
    ("address", "Street Address", "string", "text"),
    ("city", "City", "string", "text"),
    ("state", "State/Region", "string", "text"),
    ("zip", "Postal Code", "string", "text"),
    ("country", "Country/Region", "string", "text"),
    ("lifecyclestage", "Lifecycle Stage", "enumeration", "radio"),
    ("hs_lead_status", "Lead Status", "enumeration", "radio"),
    ("hubspot_owner_id", "Contact owner", "enumeration", "select"),
    ("message", "Message", "string", "textarea"),
    ("notes_last_contacted", "Last Contacted", "datetime", "date"),
    ("hs_object_id", "Record ID", "number", "number"),
    ("createdate", "Create Date", "datetime", "date"),
    ("lastmodifieddate", "Last Modified Date", "datetime", "date"),
]
_CUSTOM_PROPERTIES = [
    ("scrapersky_domain_id", "ScraperSky domain id", "string", "text"),
    ("scrapersky_page_id", "ScraperSky page id", "string", "text"),
    ("scrapersky_email_type", "ScraperSky email type", "string", "text"),
    ("scrapersky_source_url", "ScraperSky source URL", "string", "text"),
    ("scrapersky_has_gmail", "ScraperSky has Gmail", "bool", "booleancheckbox"),
]
_REQUIRED_PROPERTY_KEYS = ("name", "label", "type", "fieldType", "groupName")


def _as_string(value: Any) -> str:
    """HubSpot stores every property value as a string (JSON true -> "true")."""
    if type(value) is str:
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _not_valid(details: list[dict[str, Any]]) -> str:
    """HubSpot's validation message, which embeds the per-property details as a JSON string."""
    return "Property values were not valid: " + orjson.dumps(details).decode()


def _property(
    name: str, label: str, type_: str, field_type: str, group: str, now: str, defined: bool
) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": type_,
        "fieldType": field_type,
        "groupName": group,
        "description": "",
        "options": [],
        "displayOrder": -1,
        "calculated": False,
        "externalOptions": False,
        "hasUniqueValue": name == "email",
        "hidden": False,
        "hubspotDefined": defined,
        "formField": True,
        "createdAt": now,
        "updatedAt": now,
        "archived": False,
    }


class HubSpotFake(Vendor):
    name = "hubspot"
    options: HubSpotOptions

    def __init__(self, config: SandboxConfig) -> None:
        super().__init__(config, ContactStore(string_ids=True, first_id=1001))
        self.windows = Windows()
        self.daily = FixedWindow(86_400.0)  # epoch-aligned: resets at UTC midnight
        self.properties: dict[str, dict[str, Any]] = {}
        self._load_properties()

    def routes(self) -> list[BaseRoute]:
        e = self.endpoint
        objects = "/crm/v3/objects/contacts"
        props = "/crm/v3/properties/contacts"
        return [
            Route(
                f"{objects}/batch/upsert",
                e(f"POST {objects}/batch/upsert", self.batch_upsert),
                methods=["POST"],
            ),
            Route(
                f"{objects}/batch/update",
                e(f"POST {objects}/batch/update", self.batch_update),
                methods=["POST"],
            ),
            Route(objects, e(f"POST {objects}", self.create_contact), methods=["POST"]),
            Route(
                objects + "/{contact_id}",
                e(f"GET {objects}/{{id}}", self.get_contact),
                methods=["GET"],
            ),
            Route(
                objects + "/{contact_id}",
                e(f"PATCH {objects}/{{id}}", self.update_contact),
                methods=["PATCH"],
            ),
            Route(props, e(f"GET {props}", self.list_properties), methods=["GET"]),
            Route(props, e(f"POST {props}", self.create_property), methods=["POST"]),
            Route(
                props + "/{name}", e(f"GET {props}/{{name}}", self.get_property), methods=["GET"]
            ),
            self.fallback_route(),
        ]

    # --- pipeline hooks --------------------------------------------------------------------

    def error(self, status: int, category: str, message: str, **extra: Any) -> JSONResponse:
        """HubSpot's error envelope (every field optional per its docs)."""
        body = {
            "status": "error",
            "message": message,
            "correlationId": self.correlation_id(),
            "category": category,
            **extra,
        }
        return JSONResponse(body, status_code=status)

    def authenticate(self, request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if (
            self.options.bad_credentials
            or scheme.lower() != "bearer"
            or token != self.config.hubspot_access_token
        ):
            return self.error(
                401,
                "INVALID_AUTHENTICATION",
                "Authentication credentials not found. This API supports OAuth 2.0 "
                "authentication and you can find more details at "
                "https://developers.hubspot.com/docs/methods/auth/oauth-overview",
            )
        return None

    def error_response(self, status: int) -> Response:
        return self.error(status, "INTERNAL_ERROR", "internal error (sandbox fault)")

    def not_found_response(self, request: Request) -> Response:
        return self.error(404, "OBJECT_NOT_FOUND", f"No route {request.method} {request.url.path}")

    @property
    def ten_seconds(self) -> Window:
        """The short window (ten seconds unless `rate_limit_interval_ms` says otherwise)."""
        options = self.options
        return self.windows.get(
            "interval", options.rate_window, options.rate_limit_interval_ms / 1000
        )

    def check_limits(self, now: float, *, burst: bool) -> tuple[Response | None, RawHeaders]:
        window, daily = self.options.rate_limit_per_10s, self.options.daily_limit
        if daily > 0 and not self.daily.allows(now, daily):
            return self._too_many(now, "DAILY"), []
        if burst or (window > 0 and not self.ten_seconds.allows(now, window)):
            return self._too_many(now, "TEN_SECONDLY_ROLLING"), []
        if window > 0:
            self.ten_seconds.take(now)
        if daily > 0:
            self.daily.take(now)
        return None, self.limit_headers(now)

    def limit_headers(self, now: float, *, exhausted: str | None = None) -> RawHeaders:
        """The `X-HubSpot-RateLimit-*` headers; `exhausted` names the policy that just refused."""
        window, daily = self.options.rate_limit_per_10s, self.options.daily_limit
        headers: RawHeaders = []
        if daily > 0:
            left = 0 if exhausted == "DAILY" else self.daily.remaining(now, daily)
            headers.append((b"x-hubspot-ratelimit-daily", str(daily).encode()))
            headers.append((b"x-hubspot-ratelimit-daily-remaining", str(left).encode()))
        if window > 0 or exhausted == "TEN_SECONDLY_ROLLING":
            if exhausted == "TEN_SECONDLY_ROLLING":
                left = 0
            else:
                left = self.ten_seconds.remaining(now, window)
            # With the window off, burst_429 reports the default Free-tier window.
            shown = window if window > 0 else FREE_TIER_WINDOW
            interval = str(self.options.rate_limit_interval_ms).encode()
            headers.append((b"x-hubspot-ratelimit-interval-milliseconds", interval))
            headers.append((b"x-hubspot-ratelimit-max", str(shown).encode()))
            headers.append((b"x-hubspot-ratelimit-remaining", str(left).encode()))
        return headers

    def rate_limited_response(self, now: float) -> Response:
        return self._too_many(now, "TEN_SECONDLY_ROLLING")

    def _too_many(self, now: float, policy: str) -> Response:
        which = "daily" if policy == "DAILY" else "ten_secondly_rolling"
        body = {
            "status": "error",
            "message": f"You have reached your {which} limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": self.correlation_id(),
            "policyName": policy,
            "requestId": self.correlation_id(),
        }
        response = JSONResponse(body, status_code=429)
        if policy == "DAILY":
            wait = seconds_until(self.daily.reset_at(now), now)
        else:
            wait = seconds_until(self.ten_seconds.reset_at(now), now)
        headers = self.limit_headers(now, exhausted=policy)
        response.raw_headers.extend(self.retry_after(headers, wait))
        return response

    def reset(self, *, faults: bool) -> None:
        super().reset(faults=faults)
        self.windows.clear()
        self.daily.clear()
        self._load_properties()

    def _load_properties(self) -> None:
        now = iso(self.clock())
        self.properties = {
            name: _property(name, label, t, ft, "contactinformation", now, True)
            for name, label, t, ft in _DEFAULT_PROPERTIES
        }
        if self.config.custom_fields:
            for name, label, t, ft in _CUSTOM_PROPERTIES:
                self.properties[name] = _property(name, label, t, ft, "scrapersky", now, False)

    # --- contacts --------------------------------------------------------------------------

    async def _batch_inputs(self, request: Request) -> list[Any] | Response:
        """A batch call's `inputs`, or the 400 HubSpot answers for a body it cannot take."""
        try:
            body = await read_json(request)
        except BadRequestBody as exc:
            return self._validation_error(f"Invalid input JSON: {exc.message}")
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list):
            return self._validation_error("Invalid input JSON: 'inputs' must be an array")
        self.stats.contacts_received += len(inputs)
        if len(inputs) > MAX_BATCH:
            return self._validation_error(
                f"The maximum number of inputs supported in a batch is {MAX_BATCH}. "
                "Please reduce the number of items and try again"
            )
        return inputs

    def _validation_error(self, message: str) -> JSONResponse:
        return self.error(400, "VALIDATION_ERROR", message)

    def _unknown_properties(self, names: list[str]) -> JSONResponse:
        details = [
            {
                "isValid": False,
                "message": f'Property "{name}" does not exist',
                "error": "PROPERTY_DOESNT_EXIST",
                "name": name,
                "localizedErrorMessage": f'Property "{name}" does not exist',
                "portalId": self.config.hubspot_portal_id,
            }
            for name in names
        ]
        return self._validation_error(_not_valid(details))

    def _invalid_email_detail(self, email: Any) -> str:
        """The INVALID_EMAIL detail; without an email (None), one that names no input."""
        text = "Email address is invalid" if email is None else f"Email address {email} is invalid"
        return _not_valid(
            [
                {
                    "isValid": False,
                    "message": text,
                    "error": "INVALID_EMAIL",
                    "name": "email",
                }
            ]
        )

    def _object(self, contact: StoredContact, new: bool | None = None) -> dict[str, Any]:
        """SimplePublicObject (with `new` for upsert results)."""
        properties = {
            **contact.fields,
            "hs_object_id": contact.id,
            "createdate": contact.created_at,
            "lastmodifieddate": contact.updated_at,
        }
        result: dict[str, Any] = {
            "id": contact.id,
            "properties": properties,
            "createdAt": contact.created_at,
            "updatedAt": contact.updated_at,
            "archived": False,
        }
        if new is not None:
            result["new"] = new
        return result

    async def batch_upsert(self, request: Request) -> Response:
        started = iso(self.clock())
        inputs = await self._batch_inputs(request)
        if isinstance(inputs, Response):
            return inputs

        # Batch-wide checks first: HubSpot rejects the whole call for these.
        registry = self.properties
        unknown: list[str] = []
        keys: list[str] = []
        seen: set[str] = set()
        duplicates: list[str] = []
        for position, item in enumerate(inputs):
            if not isinstance(item, dict):
                return self._validation_error(f"Invalid input JSON: inputs[{position}] not object")
            properties = item.get("properties")
            ident = item.get("id")
            if not isinstance(properties, dict) or not isinstance(ident, str):
                return self._validation_error(
                    f"Invalid input JSON: inputs[{position}] needs 'id' (string) and "
                    "'properties' (object)"
                )
            id_property = item.get("idProperty")
            if id_property != "email":
                return self._bad_id_property(id_property)
            for name in properties:
                if name not in registry and name not in unknown:
                    unknown.append(name)
            key = ident.lower()
            if key in seen and ident not in duplicates:
                duplicates.append(ident)
            seen.add(key)
            keys.append(key)
        if unknown:
            return self._unknown_properties(unknown)
        if duplicates:
            return self._validation_error(
                f"Duplicate IDs found in batch input: {duplicates}. IDs must be unique"
            )

        invalid = [i for i, key in enumerate(keys) if not is_valid_email(key)]
        if invalid and self.options.invalid_email_mode == "batch_400":
            return self._validation_error(self._invalid_email_detail(inputs[invalid[0]]["id"]))

        now = iso(self.clock())
        results: list[dict[str, Any]] = []
        bad = set(invalid)
        upsert, as_string = self.store.upsert, _as_string
        for position, item in enumerate(inputs):
            if position in bad:
                continue
            key = keys[position]
            fields = {name: as_string(value) for name, value in item["properties"].items()}
            fields["email"] = key
            contact, created = upsert(key, fields, now)
            results.append(self._object(contact, created))
        if self.options.shuffle_results:
            self.rng.shuffle(results)
        payload: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": iso(self.clock()),
        }
        if not invalid:
            return JSONResponse(payload)
        payload["numErrors"] = len(invalid)
        named = self.options.error_identity == "context"
        payload["errors"] = [
            {
                "status": "error",
                "category": "VALIDATION_ERROR",
                "message": self._invalid_email_detail(inputs[i]["id"] if named else None),
                "context": {"ids": [inputs[i]["id"]]} if named else {},
                "errors": [],
                "links": {},
            }
            for i in invalid
        ]
        return JSONResponse(payload, status_code=207)

    async def batch_update(self, request: Request) -> Response:
        started = iso(self.clock())
        inputs = await self._batch_inputs(request)
        if isinstance(inputs, Response):
            return inputs
        unknown: list[str] = []
        for position, item in enumerate(inputs):
            properties = item.get("properties") if isinstance(item, dict) else None
            if not isinstance(properties, dict) or not isinstance(item.get("id"), str):
                return self._validation_error(
                    f"Invalid input JSON: inputs[{position}] needs 'id' (string) and "
                    "'properties' (object)"
                )
            if item.get("idProperty") not in (None, "hs_object_id"):
                return self._bad_id_property(item["idProperty"])
            unknown += [name for name in properties if name not in self.properties]
        if unknown:
            return self._unknown_properties(list(dict.fromkeys(unknown)))
        for item in inputs:
            email = item["properties"].get("email")
            if email is not None and not is_valid_email(email):
                return self._validation_error(self._invalid_email_detail(email))
        now = iso(self.clock())
        results: list[dict[str, Any]] = []
        missing: list[str] = []
        errors: list[dict[str, Any]] = []
        for item in inputs:
            contact = self.store.by_id.get(item["id"])
            if contact is None:
                missing.append(item["id"])
                continue
            properties = {name: _as_string(v) for name, v in item["properties"].items()}
            email = properties.pop("email", contact.email).lower()
            owner = self.store.get(email)
            if owner is not None and owner is not contact:
                errors.append(
                    {
                        "status": "error",
                        "category": "CONFLICT",
                        "message": f"Contact already exists. Existing ID: {owner.id}",
                        "context": {"ids": [item["id"]]},
                        "errors": [],
                        "links": {},
                    }
                )
                continue
            if email != contact.email:
                self.store.change_email(contact, email)
            # Like PATCH, only the properties sent change.
            fields = {**contact.fields, **properties, "email": contact.email}
            self.store.upsert(contact.email, fields, now)
            results.append(self._object(contact))
        if missing:
            errors.append(
                {
                    "status": "error",
                    "category": "OBJECT_NOT_FOUND",
                    "message": "Could not get some CONTACT objects, they may be deleted or not "
                    "exist. Check that ids are valid.",
                    "context": {"ids": missing},
                    "errors": [],
                    "links": {},
                }
            )
        payload: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": iso(self.clock()),
        }
        if not errors:
            return JSONResponse(payload)
        payload["numErrors"] = len(errors)
        payload["errors"] = errors
        return JSONResponse(payload, status_code=207)

    def _bad_id_property(self, id_property: Any) -> JSONResponse:
        if id_property is None:
            # The upsert contract requires idProperty (it names the unique property in `id`).
            return self._validation_error("Invalid input JSON: idProperty is required for upsert")
        return self._validation_error(
            f"Unable to perform update/upsert by non-unique {CONTACT_OBJECT_TYPE} property "
            f"{id_property} in portal ID {self.config.hubspot_portal_id}"
        )

    def _checked_properties(self, body: Any) -> dict[str, str] | JSONResponse:
        properties = body.get("properties") if isinstance(body, dict) else None
        if not isinstance(properties, dict):
            return self._validation_error("Invalid input JSON: 'properties' must be an object")
        unknown = [name for name in properties if name not in self.properties]
        if unknown:
            return self._unknown_properties(unknown)
        return {name: _as_string(value) for name, value in properties.items()}

    async def create_contact(self, request: Request) -> Response:
        try:
            body = await read_json(request)
        except BadRequestBody as exc:
            return self._validation_error(f"Invalid input JSON: {exc.message}")
        properties = self._checked_properties(body)
        if isinstance(properties, JSONResponse):
            return properties
        self.stats.contacts_received += 1
        email = properties.get("email")
        if email is None:
            # HubSpot allows contacts without email; the sandbox keys every contact by email.
            return self._validation_error("email is required (sandbox)")
        if not is_valid_email(email):
            return self._validation_error(self._invalid_email_detail(email))
        existing = self.store.get(email)
        if existing is not None:
            return self.error(
                409, "CONFLICT", f"Contact already exists. Existing ID: {existing.id}"
            )
        properties["email"] = email.lower()
        contact, _ = self.store.upsert(email, properties, iso(self.clock()))
        return JSONResponse(self._object(contact), status_code=201)

    def _lookup(self, request: Request) -> StoredContact | None:
        ident = request.path_params["contact_id"]
        if request.query_params.get("idProperty") == "email":
            return self.store.get(ident)
        return self.store.by_id.get(ident)

    def _not_found(self) -> JSONResponse:
        return self.error(404, "OBJECT_NOT_FOUND", "resource not found")

    async def get_contact(self, request: Request) -> Response:
        contact = self._lookup(request)
        return self._not_found() if contact is None else JSONResponse(self._object(contact))

    async def update_contact(self, request: Request) -> Response:
        contact = self._lookup(request)
        if contact is None:
            return self._not_found()
        try:
            body = await read_json(request)
        except BadRequestBody as exc:
            return self._validation_error(f"Invalid input JSON: {exc.message}")
        properties = self._checked_properties(body)
        if isinstance(properties, JSONResponse):
            return properties
        self.stats.contacts_received += 1
        # PATCH changes only the properties sent; the stored fields keep the others.
        fields = {**contact.fields, **properties, "email": contact.email}
        self.store.upsert(contact.email, fields, iso(self.clock()))
        return JSONResponse(self._object(contact))

    # --- properties ------------------------------------------------------------------------

    async def list_properties(self, request: Request) -> Response:
        return JSONResponse({"results": list(self.properties.values())})

    async def get_property(self, request: Request) -> Response:
        prop = self.properties.get(request.path_params["name"])
        if prop is None:
            return self.error(
                404,
                "OBJECT_NOT_FOUND",
                f"Unable to find property {request.path_params['name']} for object type "
                f"{CONTACT_OBJECT_TYPE}",
            )
        return JSONResponse(prop)

    async def create_property(self, request: Request) -> Response:
        try:
            body = await read_json(request)
        except BadRequestBody as exc:
            return self._validation_error(f"Invalid input JSON: {exc.message}")
        if not isinstance(body, dict):
            return self._validation_error("Invalid input JSON: expected an object")
        missing = [k for k in _REQUIRED_PROPERTY_KEYS if not isinstance(body.get(k), str)]
        if missing:
            return self._validation_error(f"Missing required field(s): {', '.join(missing)}")
        name = body["name"]
        if name in self.properties:
            # HubSpot's exact 409 wording for an existing property is not in our sources.
            return self.error(409, "CONFLICT", f"Property named '{name}' already exists.")
        now = iso(self.clock())
        prop = _property(
            name, body["label"], body["type"], body["fieldType"], body["groupName"], now, False
        )
        for key in ("description", "options", "displayOrder", "hasUniqueValue", "hidden"):
            if key in body:
                prop[key] = body[key]
        self.properties[name] = prop
        return JSONResponse(prop, status_code=201)
