from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.support import Processes


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Start `crmsync worker` subprocesses; any still running is killed when the test ends."""
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.kill_all()
