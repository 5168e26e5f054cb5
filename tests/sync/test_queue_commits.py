"""PostgreSQL: the sync queue's transactions commit without waiting for the disk, unless told.

`CRMSYNC_QUEUE_SYNCHRONOUS_COMMIT` (default false) decides for `db.write`, the queue's claims,
outcomes and lease renewals; every other transaction keeps the server's setting.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.engine import Connection

from crmsync import db
from crmsync.settings import Settings


def _synchronous_commit(conn: Connection) -> Any:
    return conn.exec_driver_sql("SHOW synchronous_commit").scalar()


@pytest.mark.parametrize("waits", [False, True])
async def test_queue_transactions_follow_the_setting(settings: Settings, waits: bool) -> None:
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only: SQLite has no synchronous_commit")
    engine = db.engine_for(settings.model_copy(update={"queue_synchronous_commit": waits}))
    try:
        assert await db.write(engine, _synchronous_commit) == ("on" if waits else "off")
        # Only that transaction: the next one on the same connection has the server's value.
        async with engine.begin() as conn:
            assert await conn.run_sync(_synchronous_commit) == "on"
    finally:
        await engine.dispose()
