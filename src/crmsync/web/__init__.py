"""The dashboard: server-rendered pages at `/` beside the API, signed in with a session cookie.

`install(app)` adds its routes, its static files (`/static`), the handlers that send a signed-out
browser to `/login`, and the security headers every response gets.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crmsync.api.errors import error_body
from crmsync.auth import ScopeError
from crmsync.web import actions, imports, login, pages
from crmsync.web.session import CsrfRefused, SignInRequired, read
from crmsync.web.templating import render

__all__ = ["install"]

STATIC = Path(__file__).parent / "static"

# No inline script or style anywhere: scripts and styles come from /static only.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
)
# FastAPI's interactive API docs load their script from a CDN and start it inline: they keep
# every header but the CSP (and work only where that CDN is reachable).
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")


class SecurityHeaders:
    """Adds the security headers, and `Server-Timing` (the time to the response's start)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        docs = scope["path"] in DOCS_PATHS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS:
                    if not (docs and name == "Content-Security-Policy"):
                        headers.setdefault(name, value)
                elapsed = (time.perf_counter() - started) * 1000
                headers.append("Server-Timing", f"app;dur={elapsed:.1f}")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install(app: FastAPI) -> None:
    app.include_router(login.router)
    app.include_router(pages.router)
    app.include_router(actions.router)
    app.include_router(imports.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(SignInRequired)
    async def _sign_in(_: Request, exc: SignInRequired) -> Response:
        if not exc.page:
            body = error_body(401, "Not signed in: open /login")
            return JSONResponse(body, status_code=401)
        target = "/login" if exc.next_path == "/" else f"/login?next={quote(exc.next_path)}"
        return RedirectResponse(target, status_code=303)

    @app.exception_handler(ScopeError)
    async def _scope(request: Request, exc: ScopeError) -> Response:
        context = {"title": "Refused", "message": str(exc)}
        return render(request, "refused.html", context, session=read(request), status_code=403)

    @app.exception_handler(CsrfRefused)
    async def _csrf(request: Request, _: CsrfRefused) -> Response:
        context = {
            "title": "Refused",
            "message": "This form was refused: it did not carry this session's CSRF token. "
            "Reload the page and try again.",
        }
        return render(request, "refused.html", context, session=read(request), status_code=403)
