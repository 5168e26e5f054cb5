"""What every crmsync engine is set up with, beyond the driver's defaults."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from crmsync import db
from crmsync.settings import Settings


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_postgresql_ends_a_transaction_left_idle_for_half_a_lease(settings: Settings) -> None:
    """A worker cut off mid-transaction must not keep its rows locked past its lease."""
    engine = db.engine_for(settings.model_copy(update={"lease_seconds": 30.0}))
    try:
        async with engine.connect() as conn:
            shown = (await conn.execute(text("SHOW idle_in_transaction_session_timeout"))).scalar()
    finally:
        await engine.dispose()
    assert shown == "15s"


def test_an_sqlite_older_than_3_35_is_refused_with_what_to_do() -> None:
    with pytest.raises(db.SQLiteUnsupported, match=r"3\.35 or newer.*SQLite 3\.34\.1.*PostgreSQL"):
        db.check_sqlite((3, 34, 1), has_json=lambda: True)


def test_an_sqlite_without_json_is_refused_with_what_to_do() -> None:
    with pytest.raises(db.SQLiteUnsupported, match="JSON functions"):
        db.check_sqlite((3, 45, 0), has_json=lambda: False)


def test_this_sqlite_is_accepted_and_checked_when_an_engine_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db.check_sqlite()  # the SQLite this Python runs, JSON included
    seen: list[bool] = []
    monkeypatch.setattr(db, "_check_sqlite_once", lambda: seen.append(True))
    db.create_engine("sqlite://")
    assert seen == [True]


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_a_pooled_postgresql_connection_the_server_closed_is_replaced(
    settings: Settings,
) -> None:
    """No pre-ping round trip on checkout (a worker checks out once per batch), yet a connection
    the server ended while it sat in the pool (a restart, a terminated backend) is not handed
    out: the next checkout gets a new one instead of failing its first statement."""
    engine = db.engine_for(settings)
    try:
        async with engine.connect() as conn:
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar()
        other = db.create_engine(settings.database_url)
        try:
            async with other.connect() as admin:
                await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        finally:
            await other.dispose()
        for _ in range(50):  # the pooled connection's event loop reads the server's goodbye
            await asyncio.sleep(0.02)
        async with engine.connect() as conn:
            again = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar()
    finally:
        await engine.dispose()
    assert again != pid
