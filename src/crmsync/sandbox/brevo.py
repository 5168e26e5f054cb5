"""Fake of Brevo API v3 contacts (crm-apis.md section 1), mounted at `/brevo/v3`.

Endpoints: `POST /contacts` (create or, with `updateEnabled`, update), `GET|PUT
/contacts/{identifier}`, `POST /contacts/import` (asynchronous: a process goes queued ->
in_process -> completed and only then are the rows stored), `GET /processes/{id}`,
`GET /contacts/attributes` and `POST /contacts/attributes/{category}/{name}`.

Attributes: only those that exist in the account are kept. Like Brevo, a write with an unknown
attribute, or a value of the wrong type for its attribute (a string for a boolean), succeeds and
silently drops it (`createContact.attributes`, `requestContactImport` in the swagger). The account
starts with Brevo's own FIRSTNAME, LASTNAME and SMS, plus crmsync's custom attributes when
`SandboxConfig.custom_fields` is on. The answer to creating an attribute that exists is
UNVERIFIED (the swagger declares only 201 and 400): a 400 `invalid_parameter` here.

`PUT /contacts/{identifier}` takes an id (digits) or an email, or what `identifierType`
(`contact_id`, `email_id`, `ext_id`, `phone_id`) says; it changes only the attributes sent, and an
`EMAIL` attribute changes the contact's email (400 `duplicate_parameter` when another contact
has it). An unknown identifier is 404 `document_not_found` "Contact does not exist".

Auth is the `api-key` header. `/contacts*` carries `x-sib-ratelimit-*` headers on every answer and
is limited per second and per hour, counted per clock-aligned window or, with the option
`rate_window=rolling`, over a rolling one; `x-sib-ratelimit-reset` is in whole seconds (the
"granularity unit"), rounded up. `/processes` is not in Brevo's limits table, so it gets the
General tier's 100 requests per hour, with the same headers. 429 bodies are UNVERIFIED, so we
send a small errorModel-like body that a client should not rely on.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

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
from crmsync.sandbox.config import BrevoOptions, SandboxConfig

# Documented import body limit (crm-apis.md 1.2.A).
MAX_IMPORT_BYTES = 10 * 1024 * 1024
# Keys of a createContact body that are request switches, not contact data.
_CONTROL_KEYS = frozenset({"updateEnabled", "smtpBlacklistSender"})
# Attribute categories `POST /contacts/attributes/{category}/{name}` takes (swagger enum).
_CATEGORIES = frozenset({"normal", "transactional", "category", "calculated", "global"})
_ATTRIBUTE_TYPES = frozenset({"text", "date", "float", "boolean", "id", "category"})
# (name, type) of the normal attributes a new account has, and those crmsync creates.
_DEFAULT_ATTRIBUTES = (("FIRSTNAME", "text"), ("LASTNAME", "text"), ("SMS", "text"))
_CUSTOM_ATTRIBUTES = (
    ("DOMAIN_ID", "text"),
    ("PAGE_ID", "text"),
    ("EMAIL_TYPE", "text"),
    ("SOURCE_URL", "text"),
    ("HAS_GMAIL", "boolean"),
)
_IDENTIFIER_TYPES = frozenset({"email_id", "contact_id", "ext_id", "phone_id"})


def error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    """Brevo's errorModel: `{"code", "message"}` (+ `metadata` on duplicates)."""
    return JSONResponse({"code": code, "message": message, **extra}, status_code=status)


def normalise_sms(value: Any) -> str | None:
    """E.164-ish form used for SMS uniqueness; None when the number has no country code."""
    text = str(value).strip().replace(" ", "")
    if text.startswith("00"):
        text = "+" + text[2:]
    if not text.startswith("+") or not text[1:].isdigit() or len(text) < 8:
        return None
    return text


@dataclass(slots=True)
class ImportProcess:
    id: int
    rows: list[dict[str, Any]]
    list_ids: list[int]
    update_existing: bool
    started: float
    done: bool = False
    imported: int = 0
    skipped: int = 0
    timer: asyncio.TimerHandle | None = None


class BrevoFake(Vendor):
    name = "brevo"
    limit_headers_on_rejections = True
    options: BrevoOptions

    def __init__(self, config: SandboxConfig) -> None:
        super().__init__(config, ContactStore())
        self.windows = Windows()
        self.processes: dict[int, ImportProcess] = {}
        self.sms_owner: dict[str, str] = {}
        self.ext_id_owner: dict[str, str] = {}
        self._next_process = 1
        self._next_list = 100
        self.attributes: dict[str, dict[str, str]] = {}
        self._load_attributes()

    def routes(self) -> list[BaseRoute]:
        e = self.endpoint
        return [
            Route("/contacts", e("POST /contacts", self.create_contact), methods=["POST"]),
            Route(
                "/contacts/attributes",
                e("GET /contacts/attributes", self.list_attributes),
                methods=["GET"],
            ),
            Route(
                "/contacts/attributes/{category}/{name}",
                e("POST /contacts/attributes/{category}/{name}", self.create_attribute),
                methods=["POST"],
            ),
            Route(
                "/contacts/import",
                e("POST /contacts/import", self.import_contacts),
                methods=["POST"],
            ),
            Route(
                "/contacts/{identifier}",
                e("GET /contacts/{identifier}", self.get_contact),
                methods=["GET"],
            ),
            Route(
                "/contacts/{identifier}",
                e("PUT /contacts/{identifier}", self.update_contact),
                methods=["PUT"],
            ),
            # Not a /contacts* endpoint: its own (much smaller) hourly limit.
            Route(
                "/processes/{process_id}",
                e("GET /processes/{id}", self.get_process, limited=False),
                methods=["GET"],
            ),
            self.fallback_route(),
        ]

    # --- pipeline hooks --------------------------------------------------------------------

    def authenticate(self, request: Request) -> Response | None:
        key = request.headers.get("api-key")
        if key is None:
            return error(401, "unauthorized", "authentication not found in headers")
        if self.options.bad_credentials or key != self.config.brevo_api_key:
            return error(401, "unauthorized", "Key not found")
        return None

    def error_response(self, status: int) -> Response:
        # Brevo documents no 5xx body; this mirrors its errorModel so clients can log it.
        return error(status, "internal_error", "Internal server error (sandbox fault)")

    def not_found_response(self, request: Request) -> Response:
        return error(404, "document_not_found", f"No route {request.method} {request.url.path}")

    def _window(self, name: str, seconds: float) -> Window:
        return self.windows.get(name, self.options.rate_window, seconds)

    def _limits(self) -> list[tuple[int, Window]]:
        """(limit, window) of each limit switched on, the per-second one first."""
        second, hour = self.options.rate_limit_per_second, self.options.rate_limit_per_hour
        limits = []
        if second > 0:
            limits.append((second, self._window("second", 1.0)))
        if hour > 0:
            limits.append((hour, self._window("hour", 3600.0)))
        return limits

    def check_limits(self, now: float, *, burst: bool) -> tuple[Response | None, RawHeaders]:
        limits = self._limits()
        if burst or any(not window.allows(now, limit) for limit, window in limits):
            return self.rate_limited_response(now), []
        for _, window in limits:
            window.take(now)
        return None, self.limit_headers(now)

    def limit_headers(self, now: float) -> RawHeaders:
        """Report the binding window: the hourly one once it is used up, else the per-second."""
        return _headers(now, self._limits())

    def rate_limited_response(self, now: float) -> Response:
        return _too_many(now, self.limit_headers(now), self.retry_after)

    def reset(self, *, faults: bool) -> None:
        super().reset(faults=faults)
        for process in self.processes.values():
            if process.timer is not None:
                process.timer.cancel()
        self.processes.clear()
        self.sms_owner.clear()
        self.ext_id_owner.clear()
        self.windows.clear()
        self._next_process = 1
        self._load_attributes()

    def _load_attributes(self) -> None:
        attributes = _DEFAULT_ATTRIBUTES + (_CUSTOM_ATTRIBUTES if self.config.custom_fields else ())
        self.attributes = {
            name: {"name": name, "category": "normal", "type": kind} for name, kind in attributes
        }

    def known_attributes(self, attributes: Any) -> dict[str, Any]:
        """The attributes Brevo keeps: existing ones with a value of their type (others dropped)."""
        if not isinstance(attributes, dict):
            return {}
        kept: dict[str, Any] = {}
        for name, value in attributes.items():
            spec = self.attributes.get(str(name).upper())
            if spec is None or not _fits(spec["type"], value):
                continue
            kept[spec["name"]] = value
        return kept

    # --- attributes ------------------------------------------------------------------------

    async def list_attributes(self, request: Request) -> Response:
        return JSONResponse({"attributes": list(self.attributes.values())})

    async def create_attribute(self, request: Request) -> Response:
        category = request.path_params["category"]
        name = request.path_params["name"].upper()
        if category not in _CATEGORIES:
            return error(400, "invalid_parameter", f"Invalid attribute category: {category}")
        try:
            body = await read_json(request)
        except BadRequestBody as exc:
            return error(400, "bad_request", exc.message)
        kind = body.get("type", "text") if isinstance(body, dict) else None
        if kind not in _ATTRIBUTE_TYPES:
            return error(400, "invalid_parameter", f"Invalid attribute type: {kind!r}")
        if not name.replace("_", "").isalnum():
            return error(400, "invalid_parameter", f"Invalid attribute name: {name}")
        if name in self.attributes or name == "EMAIL":
            return error(400, "invalid_parameter", f"Attribute {name} already exists")
        self.attributes[name] = {"name": name, "category": category, "type": kind}
        return Response(status_code=201)

    # --- contacts --------------------------------------------------------------------------

    async def create_contact(self, request: Request) -> Response:
        try:
            body = await read_json(request)
        except BadRequestBody as exc:
            return error(400, "bad_request", exc.message)
        if not isinstance(body, dict):
            return error(400, "bad_request", "Input must be a JSON object")
        self.stats.contacts_received += 1
        email = body.get("email")
        if email is None:
            # Brevo also creates contacts identified only by SMS or ext_id; the sandbox keys every
            # contact by email, so it refuses them rather than invent another identity.
            return error(400, "missing_parameter", "email is required (sandbox)")
        if not is_valid_email(email):
            return error(400, "invalid_parameter", "Invalid email address")
        existing = self.store.get(email)
        if existing is not None and body.get("updateEnabled") is not True:
            return error(
                400,
                "duplicate_parameter",
                "Unable to create contact, email is already associated with another Contact",
                metadata={"duplicate_identifiers": ["email"]},
            )
        fields = {k: v for k, v in body.items() if k not in _CONTROL_KEYS}
        fields["attributes"] = self.known_attributes(body.get("attributes"))
        refused = self._check_identifiers(email, fields, updating=existing is not None)
        if refused is not None:
            return refused
        contact, created = self._store(email, fields)
        if created:
            return JSONResponse({"id": contact.id}, status_code=201)
        return Response(status_code=204)

    async def update_contact(self, request: Request) -> Response:
        contact = self._find(request)
        if isinstance(contact, Response):
            return contact
        try:
            body = await read_json(request)
        except BadRequestBody as exc:
            return error(400, "bad_request", exc.message)
        if not isinstance(body, dict):
            return error(400, "bad_request", "Input must be a JSON object")
        self.stats.contacts_received += 1
        sent = body.get("attributes")
        sent = sent if isinstance(sent, dict) else {}
        new_email = next((v for k, v in sent.items() if str(k).upper() == "EMAIL"), None)
        if new_email is not None:
            if not is_valid_email(new_email):
                return error(400, "invalid_parameter", "Invalid email address")
            owner = self.store.get(new_email)
            if owner is not None and owner is not contact:
                return error(
                    400,
                    "duplicate_parameter",
                    "Unable to update contact, email is already associated with another Contact",
                    metadata={"duplicate_identifiers": ["email"]},
                )
        # Only the attributes sent change; the others keep their values.
        attributes = {**contact.fields.get("attributes", {}), **self.known_attributes(sent)}
        fields = {**contact.fields, **body, "email": contact.email, "attributes": attributes}
        refused = self._check_identifiers(contact.email, fields, updating=True)
        if refused is not None:
            return refused
        if new_email is not None and new_email.lower() != contact.email:
            self._rename(contact, new_email)
            fields["email"] = contact.email
        self._store(contact.email, fields)
        return Response(status_code=204)

    def _rename(self, contact: StoredContact, email: str) -> None:
        old = contact.email
        self.store.change_email(contact, email)
        for owners in (self.sms_owner, self.ext_id_owner):
            for key, owner in owners.items():
                if owner == old:
                    owners[key] = contact.email

    async def get_contact(self, request: Request) -> Response:
        contact = self._find(request)
        if isinstance(contact, Response):
            return contact
        fields = contact.fields
        return JSONResponse(
            {
                "email": contact.email,
                "id": contact.id,
                "emailBlacklisted": bool(fields.get("emailBlacklisted", False)),
                "smsBlacklisted": bool(fields.get("smsBlacklisted", False)),
                "createdAt": contact.created_at,
                "modifiedAt": contact.updated_at,
                "attributes": fields.get("attributes") or {},
                "listIds": contact.extra.get("listIds", []),
                "statistics": {},
            }
        )

    def _find(self, request: Request) -> StoredContact | Response:
        """The contact `{identifier}` names, or Brevo's 400 / 404 answer."""
        identifier = request.path_params["identifier"]
        kind = request.query_params.get("identifierType")
        if kind is not None and kind not in _IDENTIFIER_TYPES:
            return error(400, "invalid_parameter", f"Invalid identifierType: {kind}")
        if kind is None:
            kind = "contact_id" if identifier.isdigit() else "email_id"
        found: StoredContact | None = None
        if kind == "contact_id":
            found = self.store.by_id.get(int(identifier)) if identifier.isdigit() else None
        elif kind == "email_id":
            found = self.store.get(identifier)
        else:
            owners = self.ext_id_owner if kind == "ext_id" else self.sms_owner
            key = identifier if kind == "ext_id" else normalise_sms(identifier)
            owner = owners.get(key) if key is not None else None
            found = self.store.get(owner) if owner is not None else None
        if found is None:
            return error(404, "document_not_found", "Contact does not exist")
        return found

    def _check_identifiers(
        self, email: str, fields: dict[str, Any], *, updating: bool
    ) -> Response | None:
        """SMS needs a country code; SMS and ext_id must not belong to another contact."""
        key = email.lower()
        verb = "update" if updating else "create"
        attributes = fields.get("attributes")
        sms = attributes.get("SMS") if isinstance(attributes, dict) else None
        clashes = []
        if sms not in (None, ""):
            number = normalise_sms(sms)
            if number is None:
                return error(400, "invalid_parameter", "Invalid phone number")
            if self.sms_owner.get(number, key) != key:
                clashes.append("SMS")
        ext_id = fields.get("ext_id")
        if ext_id not in (None, "") and self.ext_id_owner.get(str(ext_id), key) != key:
            clashes.append("EXT_ID")
        if clashes:
            return error(
                400,
                "duplicate_parameter",
                f"Unable to {verb} contact, {' and '.join(clashes)} "
                f"{'is' if len(clashes) == 1 else 'are'} already associated with another Contact",
                metadata={"duplicate_identifiers": clashes},
            )
        return None

    def _store(self, email: str, fields: dict[str, Any]) -> tuple[StoredContact, bool]:
        now = iso(self.clock())
        contact, created = self.store.upsert(email, fields, now)
        attributes = fields.get("attributes")
        if isinstance(attributes, dict) and attributes.get("SMS") not in (None, ""):
            number = normalise_sms(attributes["SMS"])
            if number is not None:
                self.sms_owner[number] = contact.email
        if fields.get("ext_id") not in (None, ""):
            self.ext_id_owner[str(fields["ext_id"])] = contact.email
        list_ids = fields.get("listIds")
        if isinstance(list_ids, list) and list_ids:
            known = contact.extra.setdefault("listIds", [])
            known.extend(i for i in list_ids if i not in known)
        return contact, created

    # --- import ----------------------------------------------------------------------------

    async def import_contacts(self, request: Request) -> Response:
        raw = await request.body()
        if len(raw) > MAX_IMPORT_BYTES:
            # Status and text for an oversized import are not documented; 400 is Brevo's usual.
            return error(400, "invalid_parameter", "Request body exceeds the 10 MB limit")
        try:
            body = await read_json(request)
        except BadRequestBody as exc:
            return error(400, "bad_request", exc.message)
        if not isinstance(body, dict):
            return error(400, "bad_request", "Input must be a JSON object")
        list_ids = body.get("listIds")
        new_list = body.get("newList")
        if not list_ids and not new_list:
            return error(400, "missing_parameter", "listIds or newList is required")
        if list_ids is not None and (
            not isinstance(list_ids, list) or not all(type(i) is int for i in list_ids)
        ):
            return error(400, "invalid_parameter", "listIds must be an array of list ids")
        rows = self._import_rows(body)
        if isinstance(rows, Response):
            return rows
        self.stats.contacts_received += len(rows)
        valid = [r for r in rows if is_valid_email(r.get("email"))]
        if not valid:
            return error(
                400,
                "invalid_parameter",
                "We could not find any valid email or SMS or Contact ID in the file you "
                "uploaded. Please check your file and try again.",
            )
        targets = list(list_ids or [])
        if new_list:
            targets.append(self._next_list)
            self._next_list += 1
        process = ImportProcess(
            id=self._next_process,
            rows=valid,
            list_ids=targets,
            update_existing=body.get("updateExistingContacts", True) is not False,
            started=self.clock(),
            skipped=len(rows) - len(valid),
        )
        self._next_process += 1
        self.processes[process.id] = process
        delay = (self.options.import_queued_ms + self.options.import_processing_ms) / 1000
        process.timer = asyncio.get_running_loop().call_later(delay, self._finish, process)
        return JSONResponse({"processId": process.id}, status_code=202)

    def _import_rows(self, body: dict[str, Any]) -> list[dict[str, Any]] | Response:
        if "jsonBody" in body:
            rows = body["jsonBody"]
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                return error(400, "invalid_parameter", "jsonBody must be an array of objects")
            return rows
        if "fileBody" in body:
            if not isinstance(body["fileBody"], str):
                return error(400, "invalid_parameter", "fileBody must be a string")
            return _csv_rows(body["fileBody"])
        if "fileUrl" in body:
            return error(400, "invalid_parameter", "fileUrl imports are not supported (sandbox)")
        return error(400, "missing_parameter", "jsonBody, fileBody or fileUrl is required")

    def _finish(self, process: ImportProcess) -> None:
        """Apply the import's rows: what Brevo does when the process completes."""
        if process.done:
            return
        process.done = True
        process.timer = None
        for row in process.rows:
            email = row["email"]
            existing = self.store.get(email)
            if existing is not None and not process.update_existing:
                process.skipped += 1
                continue
            # Clashing SMS/ext_id rows are skipped, as an import reports them in its log.
            if self._check_identifiers(email, row, updating=existing is not None) is not None:
                process.skipped += 1
                continue
            fields = {**row, "attributes": self.known_attributes(row.get("attributes"))}
            if process.list_ids:
                fields["listIds"] = process.list_ids
            self._store(email, fields)
            process.imported += 1

    async def get_process(self, request: Request) -> Response:
        now = self.clock()
        limit = self.options.processes_limit_per_hour
        limits = [(limit, self._window("processes", 3600.0))] if limit > 0 else []
        if any(not window.allows(now, limit) for limit, window in limits):
            return _too_many(now, _headers(now, limits), self.retry_after)
        for _, window in limits:
            window.take(now)
        response = self._process_status(request)
        response.raw_headers.extend(_headers(now, limits))
        return response

    def _process_status(self, request: Request) -> Response:
        raw_id = request.path_params["process_id"]
        process = self.processes.get(int(raw_id)) if raw_id.isdigit() else None
        if process is None:
            return error(404, "invalid_parameter", "processId is invalid")
        elapsed_ms = (self.clock() - process.started) * 1000
        total_ms = self.options.import_queued_ms + self.options.import_processing_ms
        if not process.done and elapsed_ms >= total_ms:
            self._finish(process)  # the timer is late (busy loop): don't report stale status
        if process.done:
            status = "completed"
        elif elapsed_ms >= self.options.import_queued_ms:
            status = "in_process"
        else:
            status = "queued"
        return JSONResponse({"id": process.id, "status": status, "name": "IMPORTUSER"})

    def inspect_processes(self) -> list[dict[str, Any]]:
        return [
            {
                "id": p.id,
                "done": p.done,
                "rows": len(p.rows),
                "imported": p.imported,
                "skipped": p.skipped,
                "list_ids": p.list_ids,
            }
            for p in self.processes.values()
        ]


def _fits(kind: str, value: Any) -> bool:
    """Whether Brevo keeps `value` for an attribute of type `kind` (else it ignores it)."""
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return value is None or isinstance(value, str | int | float)


def _headers(now: float, limits: list[tuple[int, Window]]) -> RawHeaders:
    """`x-sib-ratelimit-*` for the binding window: the first used up, else the first one."""
    if not limits:
        return []
    limit, window = next(
        ((limit, window) for limit, window in limits if window.remaining(now, limit) == 0),
        limits[0],
    )
    reset = seconds_until(window.reset_at(now), now)
    return [
        (b"x-sib-ratelimit-limit", str(limit).encode()),
        (b"x-sib-ratelimit-remaining", str(window.remaining(now, limit)).encode()),
        (b"x-sib-ratelimit-reset", str(reset).encode()),
    ]


def _too_many(
    now: float, headers: RawHeaders, retry_after: Callable[[RawHeaders, int], RawHeaders]
) -> Response:
    if not headers:  # burst_429 with limits off: still look like a used-up second
        headers = [
            (b"x-sib-ratelimit-limit", b"10"),
            (b"x-sib-ratelimit-remaining", b"0"),
            (b"x-sib-ratelimit-reset", b"1"),
        ]
    else:
        headers[1] = (b"x-sib-ratelimit-remaining", b"0")
    response = error(429, "too_many_requests", "Too many requests (sandbox rate limit)")
    response.raw_headers.extend(retry_after(headers, int(headers[2][1])))
    return response


def _csv_rows(text: str) -> list[dict[str, Any]]:
    """A `;`-separated fileBody with a header row (EMAIL;FIRSTNAME;...) as jsonBody-like rows."""
    reader = csv.DictReader(io.StringIO(text), delimiter=";")
    rows: list[dict[str, Any]] = []
    for record in reader:
        attributes = {k.upper(): v for k, v in record.items() if k and k.upper() != "EMAIL" and v}
        email = next((v for k, v in record.items() if k and k.upper() == "EMAIL"), None)
        rows.append({"email": email, "attributes": attributes})
    return rows
