"""The request body limit (`CRMSYNC_MAX_BODY_BYTES`), enforced before parsing and authentication.

FastAPI reads and parses a request's body before its dependencies run, so without a limit any
client, with or without a token, could make the server buffer a body of any size. This ASGI
middleware sits in front of the app: a declared `Content-Length` above the limit is answered 413
before a byte of the body is read; a body without one (chunked, streamed) is counted as its
chunks arrive, and the request is refused with 413 as soon as the count passes the limit, so at
most one chunk more than the limit is ever held.

A browser posting a dashboard form (one that accepts HTML, outside `/api`) gets the same refusal
as a short HTML page, with the headers the dashboard's pages carry (`page_headers`).

Not FastAPI's own `max_body_size` (recent versions only): it looks at `Content-Length` only once a
route reads the body, and answers a bare "Content Too Large" instead of saying what to change.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crmsync.api.errors import error_body


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a body without a (truthful) length passes the limit.

    An HTTPException, so that FastAPI's body reading passes it through unchanged (it turns any
    other exception there into a 400) and the app's handler renders it like every error.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large_message(limit))


def too_large_message(limit: int) -> str:
    return (
        f"Request body too large: at most {limit:,} bytes (CRMSYNC_MAX_BODY_BYTES); "
        "send fewer contacts per request"
    )


def too_large_for_a_page(limit: int) -> str:
    return (
        f"This file is too large for the dashboard: at most {limit / 1048576:.1f} MiB "
        f"({limit:,} bytes, CRMSYNC_MAX_BODY_BYTES). Nothing was imported. Split the file, "
        "or import it with: crmsync import FILE"
    )


class BodyLimit:
    def __init__(
        self, app: ASGIApp, max_bytes: int, page_headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.page_headers = dict(page_headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            # Read outside FastAPI's body parsing (which renders it itself): answer here.
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        # `Connection: close`: the client may still be sending; the server drops the rest.
        close = {"Connection": "close"}
        response: Response
        if _from_a_page(scope):
            message = escape(too_large_for_a_page(self.max_bytes))
            body = (
                '<!doctype html><html lang="en"><head><meta charset="utf-8">'
                "<title>Too large · crmsync</title></head><body><main><h1>Too large</h1>"
                f'<p role="alert">{message}</p><p><a href="/import">Back to Import</a></p>'
                "</main></body></html>"
            )
            headers = {**self.page_headers, **close}
            response = HTMLResponse(body, status_code=413, headers=headers)
        else:
            message = too_large_message(self.max_bytes)
            response = JSONResponse(error_body(413, message), status_code=413, headers=close)
        await response(scope, receive, send)


def _from_a_page(scope: Scope) -> bool:
    """A browser's form post to the dashboard (not the API, and it accepts HTML)."""
    if str(scope.get("path", "")).startswith("/api/"):
        return False
    accept = next((v for n, v in scope.get("headers", ()) if n == b"accept"), b"")
    return b"text/html" in accept


def _content_length(scope: Scope) -> int | None:
    """The declared length; a value that is no number counts as too large (refused)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 1 << 62
    return None
