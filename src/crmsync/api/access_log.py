"""One log line per request (`CRMSYNC_ACCESS_LOG=true`), and a request id on every answer.

The line carries the method, the path, the query with the values of credential-like keys
replaced, the status, the duration and the request id; never a body or a header. In JSON logs
(`CRMSYNC_LOG_FORMAT=json`) those are fields of their own. The request id is the caller's
`X-Request-ID` when it is a plausible id, else a new one; it is sent back in `X-Request-ID`.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("crmsync.access")

HEADER = "X-Request-ID"
_PLAUSIBLE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Query keys whose values are never written: a token in a URL is still a token.
_SECRET_KEY = re.compile(r"token|key|secret|password|passwd|auth|signature|session", re.I)


def redact_query(raw: bytes) -> str:
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    return urlencode([(k, "[redacted]" if _SECRET_KEY.search(k) else v) for k, v in pairs])


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            given: str = value.decode("latin-1")
            if _PLAUSIBLE_ID.fullmatch(given):
                return given
    return uuid.uuid4().hex


class AccessLog:
    """ASGI middleware: request ids always; the access line only when `enabled`."""

    def __init__(self, app: ASGIApp, enabled: bool) -> None:
        self.app = app
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500  # what the client gets when the app fails before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.enabled:
                self._log(scope, status, time.perf_counter() - started, request_id)

    @staticmethod
    def _log(scope: Scope, status: int, seconds: float, request_id: str) -> None:
        query = redact_query(scope.get("query_string", b""))
        path = scope["path"] + (f"?{query}" if query else "")
        duration_ms = round(seconds * 1000, 1)
        log.info(
            "%s %s %d %.1f ms id=%s",
            scope["method"],
            path,
            status,
            duration_ms,
            request_id,
            extra={
                "method": scope["method"],
                "path": path,
                "status": status,
                "duration_ms": duration_ms,
                "request_id": request_id,
            },
        )
