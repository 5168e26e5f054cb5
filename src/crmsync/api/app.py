"""The FastAPI application: routes, error handlers, and the resources they share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import __version__, db, web
from crmsync.api import contacts, crm, errors, health
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
    own_engine = engine is None
    engine = engine or db.create_engine(settings.database_url)

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
    web.install(app)

    @app.middleware("http")
    async def _no_store(
        request: Request, call_next: Callable[[Request], Awaitable[Any]]
    ) -> Response:
        # API answers are live data: never cached by a browser or proxy (as the customer's app).
        response: Response = await call_next(request)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    return app
