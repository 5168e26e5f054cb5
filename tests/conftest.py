"""Shared fixtures: every database test runs on SQLite and, when configured, on PostgreSQL.

PostgreSQL tests need `CRMSYNC_TEST_POSTGRES_URL` (CI sets it). Without it they are skipped with
that reason; with it, an unreachable server is a failure, never a silent skip. Each test session
gets its own PostgreSQL database (migrated once, emptied before every test), so subprocess workers
can reach it by a plain URL.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import db
from crmsync.api.app import create_app
from crmsync.auth import mint_token
from crmsync.migrate import upgrade
from crmsync.settings import Settings

PG_ENV = "CRMSYNC_TEST_POSTGRES_URL"
SECRET = "test-secret-" + "x" * 60
TABLES = ("sync_events", "crm_sync_state", "contacts", "crm_control", "workers")


def _async_url(url: str) -> str:
    return db.normalise_url(url).render_as_string(hide_password=False)


async def _create_pg_database(admin_url: str, name: str) -> None:
    engine = db.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await engine.dispose()


async def _drop_pg_database(admin_url: str, name: str) -> None:
    engine = db.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await engine.dispose()


async def _migrate(url: str) -> None:
    engine = db.create_engine(url)
    await upgrade(engine)
    await engine.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    raw = os.environ.get(PG_ENV)
    if not raw:
        if os.environ.get("CRMSYNC_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"CRMSYNC_REQUIRE_POSTGRES=1 but {PG_ENV} is not set")
        pytest.skip(f"PostgreSQL variant: set {PG_ENV} to run it")
    admin = _async_url(raw)
    name = f"crmsync_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    asyncio.run(_create_pg_database(admin, name))
    url = make_url(admin).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_migrate(url))
    yield url
    asyncio.run(_drop_pg_database(admin, name))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "crmsync.db"
    asyncio.run(_migrate(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "crmsync.db"
        shutil.copy(template, target)
        return f"sqlite+aiosqlite:///{target}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(db_url)
    if engine.dialect.name == "postgresql":
        async with engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    yield engine
    await engine.dispose()


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=db_url,
        jwt_secret_key=SECRET,
        state_dir=tmp_path / ".crmsync",
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
def token() -> str:
    return mint_token(SECRET, "tester", dt.timedelta(hours=1))


@pytest.fixture
def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def client(
    settings: Settings, engine: AsyncEngine, auth: dict[str, str]
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, SECRET, engine=engine)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=auth) as http:
        yield http


async def add_contacts(client: httpx.AsyncClient, count: int, **fields: object) -> list[str]:
    """Create `count` contacts through the bulk API; returns their ids in creation order."""
    prefix = uuid.uuid4().hex[:8]
    rows = [{"email": f"user{i}-{prefix}@example.com", **fields} for i in range(count)]
    response = await client.post("/api/v3/contacts/bulk", json={"contacts": rows})
    assert response.status_code == 200, response.text
    assert response.json()["created_count"] == count
    listed = await client.get("/api/v3/contacts", params={"email_contains": prefix, "limit": 1000})
    ids = [c["id"] for c in listed.json()]
    assert len(ids) == count
    return ids
