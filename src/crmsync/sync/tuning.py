"""Process tuning while workers run in this process: the GIL switch interval and the collector."""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["process_tuning"]


@contextlib.contextmanager
def process_tuning(switch_interval_ms: float) -> Iterator[None]:
    """Tune the interpreter for a sync while workers run in this process; restore it after.

    - GIL switch interval (`switch_interval_ms`; 0 leaves Python's 5 ms): the worker's threads
      (aiosqlite's, and the SQLite writer thread when the writer process is off) take the GIL
      back from a busy event loop sooner, and every write or read waiting on them waits less.
    - Cycle collector: a sync allocates many short-lived objects per contact, and at the default
      thresholds every few hundred batches trigger a full collection that walks the whole heap:
      the app, its modules, SQLAlchemy's caches. The objects alive now are frozen, never
      walked; with the first threshold at 2,000 instead of Python's 700, fewer of a batch's
      objects live long enough to be seen. A higher threshold let cyclic garbage pile up in the
      worker's peak RSS. Reference counting frees everything as before; only cycles wait a
      little longer. No collection first: garbage frozen with the rest waits until the end, and
      a test process need not walk its whole heap per worker.

    Both pay in interleaved A/Bs, the collector most (bench/README.md, "The sync core
    restructured", with the figures).

    Workers side by side in one process (tests) share it: the first one in sets it, the last one
    out restores Python's values, so a process that runs workers again collects what it made.
    """
    if _tuning.workers == 0:
        _tuning.saved = (sys.getswitchinterval(), gc.get_threshold())
        if switch_interval_ms > 0:
            sys.setswitchinterval(switch_interval_ms / 1000)
        gc.freeze()
        gc.set_threshold(2_000, *_tuning.saved[1][1:])
    _tuning.workers += 1
    try:
        yield
    finally:
        _tuning.workers -= 1
        if _tuning.workers == 0:
            interval, thresholds = _tuning.saved
            sys.setswitchinterval(interval)
            gc.set_threshold(*thresholds)
            gc.unfreeze()


@dataclass
class _Tuning:
    """What `process_tuning` changed: how many workers use it, and Python's values before."""

    workers: int = 0
    saved: tuple[float, tuple[int, ...]] = (0.005, (700, 10, 10))


_tuning = _Tuning()
