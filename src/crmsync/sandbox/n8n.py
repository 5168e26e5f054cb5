"""Fake of an n8n Webhook node (crm-apis.md section 4), at `/n8n/webhook/<path>` and
`/n8n/webhook-test/<path>`.

The registry holds the configured paths (default `crmsync`), each listening for POST. The
"workflow" behind them stores the posted contacts keyed by email, as one writing to a table
would, and remembers every `Idempotency-Key` it saw (n8n itself does not deduplicate).

Order of checks follows n8n: look the webhook up (404 JSON when unknown), then the node's
authentication (plain-text 401/403 with `WWW-Authenticate`), then run the workflow. Answers:
`onReceived` -> 200 `{"message": "Workflow was started"}`; `lastNode` -> 200 `{"executionId"}`,
or 500 `{"message": "Error in workflow"}` when a fault is injected.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from crmsync.sandbox.common import (
    BadRequestBody,
    ContactStore,
    JSONResponse,
    Vendor,
    iso,
    read_json,
)
from crmsync.sandbox.config import N8nOptions, SandboxConfig

# n8n's default N8N_PAYLOAD_SIZE_MAX; the status it answers above it is UNVERIFIED (413 likely).
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]
_PRODUCTION_HINT = (
    "The workflow must be active for a production URL to run successfully. You can activate the "
    "workflow using the toggle in the top-right of the editor. Note that unlike test URL calls, "
    "production URL calls aren't shown on the canvas (only in the executions list)"
)
_TEST_HINT = (
    "Click the 'Execute workflow' button on the canvas, then try again. (In test mode, the "
    "webhook only works for one call after you click this button)"
)
_AUTH_HEADERS = {"WWW-Authenticate": 'Basic realm="Webhook"'}


def _auth_failure(status: int, text: str) -> Response:
    return PlainTextResponse(text, status_code=status, headers=_AUTH_HEADERS)


class N8nFake(Vendor):
    name = "n8n"
    options: N8nOptions

    def __init__(self, config: SandboxConfig) -> None:
        super().__init__(config, ContactStore())
        self.webhooks = frozenset(config.n8n_webhooks)
        self.idempotency_keys: dict[str, int] = {}
        self.test_calls_used: set[str] = set()
        self._next_execution = 1

    def routes(self) -> list[BaseRoute]:
        # The lookup and auth happen in the handler (n8n answers 404 before checking auth).
        # n8n has no rate limit; the limit stage only serves burst_429 (a proxy, or the
        # admission control proposed in n8n-io/n8n#31865).
        return [
            Route(
                "/webhook/{path:path}",
                self.endpoint("webhook", self.production, auth=False),
                methods=_METHODS,
            ),
            Route(
                "/webhook-test/{path:path}",
                self.endpoint("webhook-test", self.test, auth=False),
                methods=_METHODS,
            ),
            self.fallback_route(),
        ]

    # --- pipeline hooks --------------------------------------------------------------------

    def authenticate(self, request: Request) -> Response | None:
        mode = self.config.n8n_auth
        if mode == "none":
            return None
        if mode == "basic":
            scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "basic" or not encoded:
                return _auth_failure(401, "Authorization is required!")
            try:
                user, _, password = base64.b64decode(encoded).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return _auth_failure(403, "Authorization data is wrong!")
            good = user == self.config.n8n_basic_user and password == self.config.n8n_secret
        else:
            value = request.headers.get(self.config.n8n_auth_header_name)
            good = value == self.config.n8n_expected_header
        if self.options.bad_credentials or not good:
            return _auth_failure(403, "Authorization data is wrong!")
        return None

    def error_response(self, status: int) -> Response:
        if self.options.response_mode == "lastNode" and status != 504:
            # The caller waits for the workflow, so an injected failure is the workflow's.
            return JSONResponse({"message": "Error in workflow"}, status_code=500)
        # Otherwise n8n answered before running anything: the error is n8n's or its proxy's.
        text = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
        message = text.get(status, "Gateway Timeout")
        return JSONResponse({"code": status, "message": message}, status_code=status)

    def not_found_response(self, request: Request) -> Response:
        return JSONResponse({"code": 404, "message": "Not Found"}, status_code=404)

    def rate_limited_response(self, now: float) -> Response:
        response = JSONResponse({"code": 429, "message": "Too Many Requests"}, status_code=429)
        response.raw_headers.extend(self.retry_after([], 1))
        return response

    def reset(self, *, faults: bool) -> None:
        super().reset(faults=faults)
        self.idempotency_keys.clear()
        self.test_calls_used.clear()
        self._next_execution = 1

    # --- webhooks --------------------------------------------------------------------------

    async def production(self, request: Request) -> Response:
        return await self._webhook(request, test=False)

    async def test(self, request: Request) -> Response:
        return await self._webhook(request, test=True)

    async def _webhook(self, request: Request, *, test: bool) -> Response:
        path = request.path_params["path"].strip("/")
        method = request.method
        hint = _TEST_HINT if test else _PRODUCTION_HINT
        if path not in self.webhooks or (test and path in self.test_calls_used):
            return self._not_registered(
                f'The requested webhook "{method} {path}" is not registered.', hint
            )
        if method != "POST":
            return self._not_registered(
                f"This webhook is not registered for {method} requests. "
                "Did you mean to make a POST request?",
                hint,
            )
        refused = self.authenticate(request)
        if refused is not None:
            return refused
        if test and self.options.test_url_single_shot:
            self.test_calls_used.add(path)
        if len(await request.body()) > MAX_PAYLOAD_BYTES:
            return JSONResponse({"code": 413, "message": "Payload too large"}, status_code=413)
        try:
            body = await read_json(request)
        except BadRequestBody as exc:
            return JSONResponse({"code": 400, "message": exc.message}, status_code=400)
        contacts = _contacts_in(body)
        self.stats.contacts_received += len(contacts)
        key = request.headers.get("idempotency-key")
        if key:
            self.idempotency_keys[key] = self.idempotency_keys.get(key, 0) + 1
        now = iso(self.clock())
        for contact in contacts:
            email = contact.get("email")
            if isinstance(email, str) and email:
                stored, _ = self.store.upsert(email, contact, now)
                if key:
                    stored.extra["idempotency_key"] = key
        execution_id = str(self._next_execution)
        self._next_execution += 1
        if self.options.response_mode == "lastNode":
            return JSONResponse({"executionId": execution_id})
        return JSONResponse({"message": "Workflow was started"})

    def _not_registered(self, message: str, hint: str) -> Response:
        return JSONResponse({"code": 404, "message": message, "hint": hint}, status_code=404)


def _contacts_in(body: Any) -> list[dict[str, Any]]:
    """`{"contacts": [...]}`, a bare array, or one contact object."""
    if isinstance(body, dict):
        inner = body.get("contacts")
        items = inner if isinstance(inner, list) else [body]
    elif isinstance(body, list):
        items = body
    else:
        items = []
    return [item for item in items if isinstance(item, dict)]
