"""A request whose SQL runs longer than CRMSYNC_STATEMENT_TIMEOUT_SECONDS is stopped: 503."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from crmsync import db
from crmsync.api.app import create_app
from crmsync.contacts import repository
from crmsync.settings import Settings
from tests.conftest import SECRET

LIMIT = 0.3
# Runs for many seconds on either database, unless stopped.
SLOW = {
    "sqlite": "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n LIMIT 500000000) "
    "SELECT count(*) FROM n",
    "postgresql": "SELECT pg_sleep(30)",
}


async def _slow(conn: AsyncConnection) -> Any:
    return (await conn.execute(text(SLOW[conn.dialect.name]))).scalar()


@pytest.fixture
async def limited(db_url: str, engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    limited = db.create_engine(db_url, statement_timeout=LIMIT)
    yield limited
    await limited.dispose()


async def test_a_slow_list_is_answered_503_at_the_limit(
    settings: Settings,
    limited: AsyncEngine,
    auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def slow_list(conn: AsyncConnection, *args: object) -> list[object]:
        await _slow(conn)
        return []

    app = create_app(settings, SECRET, engine=limited)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=auth) as http:
        with monkeypatch.context() as patch:
            patch.setattr(repository, "list_page", slow_list)
            started = time.monotonic()
            r = await http.get("/api/v3/contacts", params={"email_contains": "x"})
            elapsed = time.monotonic() - started
        assert r.status_code == 503, r.text
        assert "CRMSYNC_STATEMENT_TIMEOUT_SECONDS" in r.json()["detail"]
        assert r.headers["Retry-After"]
        assert elapsed < 10  # stopped near the limit, not after the statement's 30 s
        # The connection it ran on is fine afterwards; quick statements are not affected.
        ok = await http.post("/api/v3/contacts", json={"email": "after@example.com"})
        assert ok.status_code == 201
        assert (await http.get("/api/v3/contacts")).status_code == 200


async def test_the_app_applies_the_setting_to_its_own_engine(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"statement_timeout_seconds": LIMIT}), SECRET)
    engine: AsyncEngine = app.state.engine
    try:
        for each in (engine, db.read_only(engine)):
            started = time.monotonic()
            with pytest.raises(Exception) as caught:
                async with each.connect() as conn:
                    await _slow(conn)
            assert db.is_statement_timeout(caught.value), caught.value
            assert time.monotonic() - started < 10
    finally:
        await engine.dispose()


async def test_zero_turns_the_limit_off(db_url: str) -> None:
    engine = db.create_engine(db_url, statement_timeout=0)
    try:
        async with engine.connect() as conn:
            quick = {"sqlite": "SELECT 1", "postgresql": "SHOW statement_timeout"}
            value = (await conn.execute(text(quick[conn.dialect.name]))).scalar()
        assert value in (1, "0")
    finally:
        await engine.dispose()
