"""The request body limit (`CRMSYNC_MAX_BODY_BYTES`), enforced before parsing and authentication.

FastAPI reads and parses a request's body before its dependencies run, so without a limit any
client, with or without a token, could make the server buffer a body of any size. This ASGI
middleware sits in front of the app: a declared `Content-Length` above the limit is answered 413
before a byte of the body is read; a body without one (chunked, streamed) is counted as its
chunks arrive, and the request is refused with 413 as soon as the count passes the limit, so at
most one chunk more than the limit is ever held.

Not FastAPI's own `max_body_size` (recent versions only): it looks at `Content-Length` only once a
route reads the body, and answers a bare "Content Too Large" instead of saying what to change.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
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


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

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
        message = too_large_message(self.max_bytes)
        # `Connection: close`: the client may still be sending; the server drops the rest.
        response = JSONResponse(
            error_body(413, message), status_code=413, headers={"Connection": "close"}
        )
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    """The declared length; a value that is no number counts as too large (refused)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 1 << 62
    return None
