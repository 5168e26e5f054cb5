"""Dashboard tests over HTTP (in-process), on SQLite and PostgreSQL: a signed-out client, a way
to sign it in through `/login`, and helpers that read the CSRF token from a page."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.api.app import create_app
from crmsync.auth import mint_token
from crmsync.settings import Settings
from crmsync.tables import crm_sync_state
from tests.conftest import SECRET

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')
NONCE = re.compile(r'name="login_csrf" value="([^"]+)"')


@pytest.fixture
def app(settings: Settings, engine: AsyncEngine) -> FastAPI:
    return create_app(settings, SECRET, engine=engine)


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client with no bearer token, keeping cookies like a browser."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dash") as http:
        yield http


@pytest.fixture
async def api(app: FastAPI, auth: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dash", headers=auth) as h:
        yield h


async def sign_in(
    browser: httpx.AsyncClient, token: str | None = None, next_path: str = "/"
) -> httpx.Response:
    page = await browser.get("/login")
    nonce = NONCE.search(page.text)
    assert nonce, page.text
    token = token or mint_token(SECRET, "dash-user", dt.timedelta(hours=1))
    return await browser.post(
        "/login", data={"token": token, "login_csrf": nonce.group(1), "next": next_path}
    )


@pytest.fixture
async def signed_in(browser: httpx.AsyncClient) -> httpx.AsyncClient:
    response = await sign_in(browser)
    assert response.status_code == 303, response.text
    return browser


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF token on the page"
    return found.group(1)


async def post_form(
    browser: httpx.AsyncClient, page: str, action: str, data: dict[str, Any]
) -> httpx.Response:
    """Post `data` from `page` with that page's CSRF token, as its form would."""
    token = csrf_of((await browser.get(page)).text)
    return await browser.post(action, data={"csrf_token": token, **data})


async def fail_rows(
    engine: AsyncEngine, crm: str, ids: list[str], message: str, now: dt.datetime | None = None
) -> None:
    """Put these contacts' rows of `crm` in Error with `message` (as the engine would)."""
    s = crm_sync_state.c
    async with engine.begin() as conn:
        await conn.execute(
            update(crm_sync_state)
            .where(s.crm == crm, s.contact_id.in_([uuid.UUID(i) for i in ids]))
            .values(
                sync_status="Error",
                processing_status="Error",
                processing_error=message,
                attempts=3,
                next_attempt_at=None,
                last_attempt_at=now or dt.datetime.now(dt.UTC),
            )
        )
