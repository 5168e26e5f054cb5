"""The FastAPI application: routes, error handlers, and the resources they share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crmsync import __version__, auth, db, web
from crmsync.api import contacts, crm, errors, health, openapi
from crmsync.api.access_log import AccessLog
from crmsync.api.limits import BodyLimit
from crmsync.clock import Clock, utcnow
from crmsync.contacts.service import ContactService
from crmsync.settings import Settings

Hook = Callable[[FastAPI], Awaitable[None]]


def create_app(
    settings: Settings,
    jwt_secret: str,
    *,
    engine: AsyncEngine | None = None,
    clock: Clock = utcnow,
) -> FastAPI:
    """Build the app. The engine is created (and disposed) here unless one is passed in.

    `app.state.startup_hooks` / `shutdown_hooks` run in the lifespan (the embedded worker).
    """
    auth.check_secret_length(jwt_secret, "the JWT secret")
    own_engine = engine is None
    engine = engine or db.engine_for(settings, statement_timeout=settings.statement_timeout_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for hook in app.state.startup_hooks:
            await hook(app)
        try:
            yield
        finally:
            for hook in reversed(app.state.shutdown_hooks):
                await hook(app)
            if own_engine:
                await engine.dispose()

    app = FastAPI(
        title="crmsync",
        version=__version__,
        description="Pushes selected contacts to Brevo, HubSpot, Mautic and n8n.",
        lifespan=lifespan,
    )
    app.state.startup_hooks = []
    app.state.shutdown_hooks = []
    app.state.settings = settings
    app.state.engine = engine
    app.state.jwt_secret = jwt_secret
    app.state.contacts = ContactService(engine, settings, clock)
    errors.install(app)
    app.include_router(health.router)
    app.include_router(contacts.router)
    app.include_router(crm.router)
    openapi.add_links(app)
    web.install(app)

    if settings.cors_origins:
        # Bearer tokens, not cookies, authorise API calls from another origin.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Total-Count", "X-Request-ID", "X-Next-Cursor"],
            max_age=600,
        )
    # API answers are live data: never cached by a browser or proxy (as the customer's app).
    app.add_middleware(NoStore)
    # Added late, so it runs early: bodies are limited before anything reads them.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, page_headers=web.HEADERS)
    # Outermost: the access line times and ids everything, refusals included.
    app.add_middleware(AccessLog, enabled=settings.access_log)
    return app


class NoStore:
    """Adds `Cache-Control: no-store` to every answer that does not set its own.

    A plain ASGI middleware: Starlette's `BaseHTTPMiddleware` runs the app in a task group, which
    wraps exceptions raised while reading the body (the body limit's 413) in an ExceptionGroup.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_no_store(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_no_store)
