from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.alerts.receiver import Receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()
