"""Every route of the app, enumerated from the app itself, refuses a request without a valid token.

The public routes are listed here, explicitly; a new route is protected unless it is added to
`PUBLIC` (and to the README's list of public routes).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.api.app import create_app
from crmsync.auth import mint_token
from crmsync.settings import Settings
from tests.conftest import SECRET

# (method, path) pairs anyone may call: liveness, and the API's own description (no data).
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
}
READ_ONLY = {"GET", "HEAD"}
# The dashboard's sign-in page and form; its other routes need the session cookie (a bearer
# token does not sign in to it) and send a browser to /login without one.
DASHBOARD_PUBLIC = {("GET", "/login"), ("POST", "/login")}


def _flat(app: FastAPI) -> list[Any]:
    """Every route, those of included routers too (which recent FastAPI keeps nested)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before nested routers: `app.routes` is flat already
        return list(app.routes)
    return list(iter_route_contexts(app.routes))


def routes(app: FastAPI, *, dashboard: bool = False) -> list[tuple[str, str]]:
    """Every (method, path) the app answers, with path parameters filled in: the API's, or
    with `dashboard` the dashboard's (`crmsync.web`)."""
    found = []
    for route in _flat(app):
        if route.path is None or not route.methods:
            continue
        module = getattr(getattr(route, "endpoint", None), "__module__", "")
        if module.startswith("crmsync.web") != dashboard:
            continue
        path = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), route.path)
        for method in sorted(route.methods):
            if method != "HEAD":  # answered as GET
                found.append((method, path))
    return found


@pytest.fixture
def app(settings: Settings, engine: AsyncEngine) -> FastAPI:
    return create_app(settings, SECRET, engine=engine)


async def _call(app: FastAPI, method: str, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        body = None if method in READ_ONLY else {}
        return await http.request(method, path, json=body, headers=headers)


def test_the_enumeration_sees_every_kind_of_route(app: FastAPI) -> None:
    found = set(routes(app))
    methods = {method for method, _ in found}
    assert {"GET", "POST", "PUT", "PATCH", "DELETE"} <= methods
    assert PUBLIC <= found
    assert len(found) >= 20
    pages = set(routes(app, dashboard=True))
    assert DASHBOARD_PUBLIC <= pages and ("GET", "/") in pages and len(pages) >= 6


async def test_every_dashboard_route_but_sign_in_needs_a_session(app: FastAPI) -> None:
    """A bearer token, even a valid one, does not sign in to the dashboard: only its cookie."""
    valid = mint_token(SECRET, "api-client", dt.timedelta(minutes=5))
    for method, path in routes(app, dashboard=True):
        if (method, path) in DASHBOARD_PUBLIC:
            continue
        for token in (None, "not-a-jwt", valid):
            r = await _call(app, method, path, token)
            if r.status_code == 303:
                assert r.headers["location"].startswith("/login"), (method, path)
            else:
                # What the pages' own scripts fetch is told to sign in, not redirected.
                assert r.status_code == 401, (method, path, r.text)
                assert "Not signed in" in r.json()["detail"]


async def test_every_route_but_the_public_ones_needs_a_token(app: FastAPI) -> None:
    wrong = mint_token("another-secret-" + "y" * 40, "intruder", dt.timedelta(minutes=5))
    for method, path in routes(app):
        for token in (None, "not-a-jwt", wrong):
            r = await _call(app, method, path, token)
            if (method, path) in PUBLIC:
                assert r.status_code == 200, (method, path)
            else:
                assert r.status_code == 401, (method, path, token, r.text)
                assert r.headers["WWW-Authenticate"] == "Bearer"


async def test_a_read_only_token_may_read_but_never_write(app: FastAPI) -> None:
    reader = mint_token(SECRET, "viewer", dt.timedelta(minutes=5), scope="read")
    for method, path in routes(app):
        r = await _call(app, method, path, reader)
        if method in READ_ONLY:
            # Reads pass authentication: found, not found, or a 422 for a missing parameter.
            assert r.status_code in (200, 404, 422), (method, path, r.text)
        else:
            assert r.status_code == 403, (method, path, r.text)
            assert "read" in r.json()["detail"]
