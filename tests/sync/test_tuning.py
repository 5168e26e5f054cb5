"""The collector tuning a running worker sets is shared by workers side by side in one process
and undone when the last of them stops."""

from __future__ import annotations

import gc

from crmsync.sync.tuning import FIRST_THRESHOLD, process_tuning


def test_workers_side_by_side_share_the_process_tuning_until_the_last_stops() -> None:
    before = gc.get_threshold()
    first, second = process_tuning(), process_tuning()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert gc.get_freeze_count() > 0 and gc.get_threshold() == (FIRST_THRESHOLD, *before[1:])
    second.__exit__(None, None, None)
    assert (gc.get_freeze_count(), gc.get_threshold()) == (0, before)
