"""Process tuning while workers run in this process: Python's cycle collector.

A sync allocates many short-lived objects per contact, and at Python's default thresholds every
few hundred batches trigger a full collection that walks the whole heap: the app, its modules,
SQLAlchemy's caches. While a worker runs, the objects alive when it started are frozen
(`gc.freeze`), never walked, and the first threshold is 2,000 instead of 700, so fewer of a
batch's objects live long enough to be seen. Reference counting frees everything as before;
only cyclic garbage waits a little longer. A higher threshold let cyclic garbage pile up in the
worker's peak RSS. No collection first: garbage frozen with the rest waits until the end, and a
test process need not walk its whole heap per worker. It pays in an interleaved A/B, and what
it costs in memory is measured (bench/README.md, "The sync core restructured").

Workers side by side in one process (tests) share it: the first one in sets it, the last one
out restores Python's values, so a process that runs workers again collects what it made.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["process_tuning"]

FIRST_THRESHOLD = 2_000


@contextlib.contextmanager
def process_tuning() -> Iterator[None]:
    """Tune the collector while workers run in this process; restore it after the last."""
    if _tuning.workers == 0:
        _tuning.saved = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(FIRST_THRESHOLD, *_tuning.saved[1:])
    _tuning.workers += 1
    try:
        yield
    finally:
        _tuning.workers -= 1
        if _tuning.workers == 0:
            gc.set_threshold(*_tuning.saved)
            gc.unfreeze()


@dataclass
class _Tuning:
    """What `process_tuning` changed: how many workers use it, and Python's values before."""

    workers: int = 0
    saved: tuple[int, ...] = (700, 10, 10)


_tuning = _Tuning()
