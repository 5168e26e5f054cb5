"""The API's SQLite write transactions, each run whole in one thread of their own.

An async SQLite engine runs every statement through aiosqlite: the statement goes to the
connection's thread, and its result comes back through the event loop. Under load the loop is
busy with other requests, so each of the five or six statements of an edit waited for its turn
there, and the process's one write connection stayed held (and the database's write lock with
it) for tens of milliseconds per transaction that SQLite ran in one or two: the API could not
make more than a few dozen writes a second (bench/README.md, "The API under load").

A `WriteLane` is one thread with its own event loop and its own engine on the same file, whose
connection runs each statement at once in that thread (aiosqlite's queue replaced by a direct
call: `_InlineConnection`). A write transaction, the same async code as on PostgreSQL, is handed
to the lane whole (`run`) and never yields inside: the event loop of the requests hops there and
back once per transaction, not once per statement, and the lane's thread may block in SQLite's
busy handler while another process holds the write lock without stopping anything else. The
lane takes transactions in the order they come, one at a time, as the one write connection did.

Only for SQLite files (`lane_for` answers None otherwise: PostgreSQL's driver is async, and an
in-memory database exists only on its engine's connection). The lane starts with the first
write and stops when its engine is disposed.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import aiosqlite
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import greenlet_spawn

from crmsync import db

T = TypeVar("T")


class _Inline:
    """aiosqlite's queue to its connection thread, served at once in the caller's thread."""

    def put_nowait(self, item: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except BaseException as exc:  # handed to the awaiting caller, as aiosqlite's thread does
            if future is not None and not future.done():
                future.set_exception(exc)
            return
        if future is not None and not future.done():
            future.set_result(result)


class _NoThread:
    daemon = True

    def start(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass


class _InlineConnection(aiosqlite.Connection):
    """An aiosqlite connection without its thread: each call runs in the calling thread, and the
    future it returns is already done, so awaiting it does not yield to the event loop."""

    def __init__(self, connector: Callable[[], sqlite3.Connection]) -> None:
        super().__init__(connector, iter_chunk_size=64)
        self._tx = _Inline()  # type: ignore[assignment]
        self._thread = _NoThread()  # type: ignore[assignment]


class WriteLane:
    """A thread running an event loop that runs write transactions on its own engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        path = engine.url.database
        assert path
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="crmsync-sqlite-writes", daemon=True
        )

        async def connect() -> aiosqlite.Connection:
            return await _InlineConnection(lambda: sqlite3.connect(path, timeout=30))

        self.engine = create_async_engine(
            engine.url,
            async_creator=connect,
            pool_size=1,
            max_overflow=0,
            pool_timeout=120,
            hide_parameters=True,
        )
        # The lane's engine behaves as `engine`: the listeners of its pool (WAL, the busy
        # timeout and the statement clock on connect) are copied, as `Pool.recreate` does, and
        # those of the engine (BEGIN IMMEDIATE, the statement timeout, any a caller adds, even
        # later) are shared, as an engine's `execution_options()` copy shares them.
        sync = self.engine.sync_engine
        sync.pool.dispatch._update(engine.sync_engine.pool.dispatch, only_propagate=False)
        sync.dispatch = sync.dispatch._join(engine.sync_engine.dispatch)
        sync._has_events = True
        self._thread.start()
        self._closed = False

    async def run(self, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
        """`await work(engine)` in the lane, on the lane's engine; its result or its error."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(_call(work, self.engine), self._loop)
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # The pool closes its connection in the lane; `dispose()` would also announce the
        # disposal to `engine`'s listeners, which stop this lane.
        pool = self.engine.sync_engine.pool
        asyncio.run_coroutine_threadsafe(greenlet_spawn(pool.dispose), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()


async def _call(work: Callable[[AsyncEngine], Awaitable[T]], engine: AsyncEngine) -> T:
    return await work(engine)


_LANES: weakref.WeakKeyDictionary[Engine, WriteLane] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


# Whether SQLite files get a lane (`CRMSYNC_SQLITE_WRITE_LANE`, applied by `crmsync serve`).
enabled = True


def lane_for(engine: AsyncEngine) -> WriteLane | None:
    """The write lane of `engine` (made on first use), or None when writes stay on `engine`."""
    if not enabled or not db.is_sqlite_file(engine):
        return None
    with _LOCK:
        lane = _LANES.get(engine.sync_engine)
        if lane is None:
            lane = _LANES[engine.sync_engine] = WriteLane(engine)
            closing = lane

            # Disposing the engine stops its lane (callers know only the engine).
            @event.listens_for(engine.sync_engine, "engine_disposed")
            def _stop_lane(sync: Engine) -> None:
                with _LOCK:
                    if _LANES.get(sync) is not closing:
                        return
                    del _LANES[sync]
                closing.close()

    return lane


async def run_write(engine: AsyncEngine, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """`await work(e)` with `e` the engine to write on: `engine` itself, or on a SQLite file
    the engine of its write lane, in the lane's thread."""
    lane = lane_for(engine)
    if lane is None:
        return await work(engine)
    return await lane.run(work)
