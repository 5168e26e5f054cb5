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
