"""What every crmsync engine is set up with, beyond the driver's defaults."""

from __future__ import annotations

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
