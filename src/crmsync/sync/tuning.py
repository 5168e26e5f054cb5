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

    - GIL switch interval (`switch_interval_ms`; 0 leaves Python's 5 ms): on SQLite without the
      writer process, the outcome writes and claims run in a thread, on the only write
      connection, and take the GIL back after every statement while the event loop builds and
      parses vendor requests. At 5 ms such a thread can wait milliseconds each time, holding
      that connection, and every lane's next write waits behind it. Measured at 0.2 ms, SQLite,
      one worker: see bench/README.md ("GIL switch interval").
    - Cycle collector: a sync allocates many short-lived objects per contact, and at the default
      thresholds every few hundred batches trigger a full collection that walks the whole heap:
      the app, its modules, SQLAlchemy's caches (measured, SQLite, 50,000 contacts: 0.26 s of
      the event loop's 2.1 CPU-s, 78 ms per full one). The objects alive now are frozen, never
      walked; with the first threshold at 2,000 instead of Python's 700, fewer of a batch's
      objects live long enough to be seen: 0.03 s in the same run. 10,000 saved 0.01 s more but
      let cyclic garbage pile up: +17 MB of peak RSS over 200,000 contacts (2,000: +2 MB).
      Reference counting frees everything as before; only cycles wait a little longer. No
      collection first: garbage frozen with the rest waits until the end, and a test process
      need not walk its whole heap per worker.

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
