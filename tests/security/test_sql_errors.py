"""An SQL error's text (and so every log line made from it) never carries its bound parameters.

Parameters are contact data: e-mail addresses, names, the text of a vendor's answer.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import bindparam, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import db, logs
from crmsync import writer_process as writers
from crmsync.api.app import create_app
from crmsync.contacts import repository
from crmsync.settings import Settings
from crmsync.sqlutil import Compiled
from crmsync.tables import contacts
from tests.conftest import SECRET

LEAK = "leaky.person@example.com"
BROKEN = "SELECT no_such_column FROM contacts WHERE email = :email"


def _assert_hidden(exc: BaseException) -> None:
    assert LEAK not in str(exc) and LEAK not in repr(exc)


async def test_the_engine_hides_parameters(engine: AsyncEngine) -> None:
    with pytest.raises(DBAPIError) as caught:
        async with engine.connect() as conn:
            await conn.execute(text(BROKEN), {"email": LEAK})
    _assert_hidden(caught.value)


async def test_the_sqlite_reader_hides_parameters(engine: AsyncEngine) -> None:
    with pytest.raises(DBAPIError) as caught:
        async with db.read_only(engine).connect() as conn:
            await conn.execute(text(BROKEN), {"email": LEAK})
    _assert_hidden(caught.value)


def _broken_write(conn: Connection) -> None:
    conn.execute(text(BROKEN), {"email": LEAK})


def _broken_compiled(conn: Connection) -> None:
    stmt = select(contacts.c.id).where(
        contacts.c.email == bindparam("email"), text("no_such_column = 1"), bindparam("other") == 1
    )
    Compiled(stmt, ("email", "other")).fetchall(conn, (LEAK, 1))


@pytest.mark.parametrize("work", [_broken_write, _broken_compiled])
async def test_the_writers_hide_parameters(engine: AsyncEngine, work: object) -> None:
    with pytest.raises(DBAPIError) as caught:
        await writers.write(engine, functools.partial(work))  # type: ignore[call-overload]
    _assert_hidden(caught.value)


async def test_the_writer_process_hides_parameters(engine: AsyncEngine) -> None:
    if not db.is_sqlite_file(engine):
        pytest.skip("the writer process exists for SQLite files only")
    assert await writers.start(engine)
    try:
        with pytest.raises(Exception) as caught:
            await writers.write(engine, functools.partial(_broken_compiled))
        _assert_hidden(caught.value)
    finally:
        await writers.stop(engine)


@pytest.fixture
def debug_logging() -> Iterator[None]:
    """The service's own logging set-up, at its most talkative level."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "aiosqlite")}
    logs.configure("text", "DEBUG")
    yield
    root.handlers[:], level = saved
    root.setLevel(level)
    for name, value in quiet.items():
        logging.getLogger(name).setLevel(value)


@pytest.mark.usefixtures("debug_logging")
async def test_an_unexpected_sql_error_in_a_request_logs_no_contact_data(
    settings: Settings,
    engine: AsyncEngine,
    auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken_get(conn: object, contact_id: uuid.UUID) -> None:
        await conn.execute(text(BROKEN), {"email": LEAK})  # type: ignore[attr-defined]

    monkeypatch.setattr(repository, "get", broken_get)
    # As a server does: the error is answered (500), and then re-raised to be logged.
    transport = httpx.ASGITransport(
        app=create_app(settings, SECRET, engine=engine), raise_app_exceptions=False
    )
    with caplog.at_level(logging.DEBUG):
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=auth) as c:
            r = await c.get(f"/api/v3/contacts/{uuid.uuid4()}")
    assert r.status_code == 500 and LEAK not in r.text
    logged = "\n".join(
        record.getMessage()
        + (logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
        for record in caplog.records
    )
    assert "no_such_column" in logged  # the error was logged, with its SQL ...
    assert LEAK not in logged  # ... but not its parameters
