"""Database engines and sessions for SQLite (embedded default) and PostgreSQL.

SQLite runs in WAL mode with a busy timeout, and every write transaction starts with
`BEGIN IMMEDIATE`: a deferred transaction that reads and then writes can fail at once with
"database is locked" when another process wrote in between, while an immediate one waits its turn.

SQLite has one writer at a time, so the write engine of a process holds a single connection,
used by a single thread: writers of the same process queue for that thread (each starts the
moment the one before commits) instead of in SQLite's busy handler, which sleeps and polls
(measured: half the sync engine's time went there).
Reads go through `read_only(engine)`: for SQLite a sibling engine with its own pool whose
transactions begin deferred and never wait for writers; for PostgreSQL the same engine.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from crmsync.writer_process import WriterDied, WriterProcess

if TYPE_CHECKING:
    from crmsync.settings import Settings

T = TypeVar("T")
log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Page cache of the sync engine's SQLite write connection, in KiB (allocated only as pages are
# read). SQLite's default of 2 MiB is smaller than the queue's indexes from a few tens of
# thousands of contacts on: every status change then rereads index pages from the file and WAL
# (measured: a guarded outcome UPDATE took 160 us per row with 50,000 contacts, 15 us with an
# 8 MiB cache). Not more, and only on that connection: a worker syncing 200,000 contacts peaked
# at 107 MB RSS with the default, 116 MB with 8 MiB, 194-217 MB with 32 MiB on this connection
# and 194-295 MB with 64 MiB on every connection (bench/worker_rss.py).
SQLITE_WRITER_CACHE_KIB = 8 * 1024


def normalise_url(url: str) -> URL:
    """Accept plain `postgresql://` and `sqlite://` URLs and pick our async drivers for them."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    return parsed


def is_sqlite(engine: AsyncEngine | AsyncConnection) -> bool:
    return engine.dialect.name == "sqlite"


def is_sqlite_file(engine: AsyncEngine) -> bool:
    """SQLite on a file (which other processes may open too), not in memory."""
    return engine.dialect.name == "sqlite" and _is_file(engine.url)


def engine_for(settings: Settings, **kwargs: Any) -> AsyncEngine:
    """The engine a crmsync process (API or worker) uses for `settings`.

    On PostgreSQL a transaction left idle for half a lease is ended by the server, which drops
    its row locks: a worker whose host lost the network in the middle of a transaction would
    otherwise keep its rows locked, unreachable by `SKIP LOCKED` claims, until TCP gives up on
    it (hours), long after its lease ran out.
    """
    return create_engine(
        settings.database_url, idle_transaction_seconds=settings.lease_seconds / 2, **kwargs
    )


def create_engine(
    url: str,
    *,
    statement_timeout: float | None = None,
    idle_transaction_seconds: float | None = None,
    **kwargs: Any,
) -> AsyncEngine:
    """An engine for `url`; `statement_timeout` (seconds) bounds every statement run on it.

    PostgreSQL enforces the bound itself (`statement_timeout`); on SQLite a progress handler
    interrupts a statement that runs longer. Either way the statement fails with an error that
    `is_statement_timeout` recognises. The API's engine has one; workers' engines do not.
    `idle_transaction_seconds` ends a PostgreSQL transaction left idle that long (see
    `engine_for`).
    """
    # An SQL error's text never carries its bound parameters: they are contact data (and the
    # errors end in logs). Every engine made here and below says so.
    kwargs.setdefault("hide_parameters", True)
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        if _is_file(parsed):
            kwargs.setdefault("pool_size", 1)
            kwargs.setdefault("max_overflow", 0)
            kwargs.setdefault("pool_timeout", 120)
        engine = create_async_engine(parsed, connect_args={"timeout": 30}, **kwargs)
        _configure_sqlite(engine)
        if statement_timeout:
            _STATEMENT_TIMEOUTS[engine.sync_engine] = statement_timeout
            _limit_sqlite_statements(engine, statement_timeout)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_pre_ping", True)
    server_settings: dict[str, str] = {}
    if statement_timeout:
        server_settings["statement_timeout"] = str(max(1, round(statement_timeout * 1000)))
    if idle_transaction_seconds is not None:
        milliseconds = str(int(idle_transaction_seconds * 1000))
        server_settings["idle_in_transaction_session_timeout"] = milliseconds
    if server_settings:
        connect_args = kwargs.get("connect_args", {})
        kwargs["connect_args"] = {
            **connect_args,
            "server_settings": {**connect_args.get("server_settings", {}), **server_settings},
        }
    return create_async_engine(parsed, **kwargs)


# SQLite engines made with a statement timeout, so that their read-only sibling gets it too.
_STATEMENT_TIMEOUTS: weakref.WeakKeyDictionary[Engine, float] = weakref.WeakKeyDictionary()
# How many SQLite virtual machine instructions run between two looks at the clock (~0.1 ms).
_PROGRESS_STEPS = 10_000


class _StatementClock:
    """A SQLite progress handler: interrupts the running statement once its deadline passed."""

    def __init__(self) -> None:
        self.deadline = math.inf

    def __call__(self) -> int:
        return 1 if time.monotonic() > self.deadline else 0


def _limit_sqlite_statements(engine: AsyncEngine, seconds: float) -> None:
    sync = engine.sync_engine

    @event.listens_for(sync, "connect")
    def _install(dbapi_connection: Any, record: Any) -> None:
        clock = record.info["statement_clock"] = _StatementClock()
        dbapi_connection.run_async(lambda conn: conn.set_progress_handler(clock, _PROGRESS_STEPS))

    def _clock(conn: Connection) -> _StatementClock | None:
        clock: _StatementClock | None = conn.connection.info.get("statement_clock")
        return clock

    @event.listens_for(sync, "before_cursor_execute")
    def _start(conn: Connection, *_: Any) -> None:
        clock = _clock(conn)
        if clock is not None:
            clock.deadline = time.monotonic() + seconds

    @event.listens_for(sync, "after_cursor_execute")
    def _stop(conn: Connection, *_: Any) -> None:
        clock = _clock(conn)
        if clock is not None:
            clock.deadline = math.inf

    @event.listens_for(sync, "handle_error")
    def _failed(context: Any) -> None:
        if context.connection is not None:
            _stop(context.connection)


def is_statement_timeout(exc: BaseException) -> bool:
    """Whether `exc` is a statement stopped by its engine's statement timeout."""
    if not isinstance(exc, DBAPIError):
        return False
    if getattr(exc.orig, "sqlstate", None) == "57014":  # PostgreSQL: query_canceled
        return True
    return isinstance(exc, OperationalError) and "interrupted" in str(exc.orig)


def _is_file(url: URL) -> bool:
    return bool(url.database) and url.database != ":memory:"


_READERS: weakref.WeakKeyDictionary[Engine, AsyncEngine] = weakref.WeakKeyDictionary()


def read_only(engine: AsyncEngine) -> AsyncEngine:
    """An engine for reads: on SQLite a sibling with its own pool and deferred transactions."""
    if not is_sqlite_file(engine):
        return engine
    reader = _READERS.get(engine.sync_engine)
    if reader is None:
        reader = create_async_engine(
            engine.url,
            connect_args={"timeout": 30},
            hide_parameters=True,
            execution_options={"sqlite_begin": "DEFERRED"},
        )
        _configure_sqlite(reader)
        timeout = _STATEMENT_TIMEOUTS.get(engine.sync_engine)
        if timeout is not None:
            _limit_sqlite_statements(reader, timeout)
        _READERS[engine.sync_engine] = reader
        sibling = reader.sync_engine

        # Disposing the write engine disposes its reader too (callers know only the writer).
        @event.listens_for(engine.sync_engine, "engine_disposed")
        def _dispose_reader(_engine: Engine) -> None:
            sibling.dispose()

    return reader


def _configure_sqlite(engine: AsyncEngine | Engine, cache_kib: int | None = None) -> None:
    sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine

    @event.listens_for(sync, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us emit BEGIN ourselves (pysqlite's implicit BEGIN would be deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        if cache_kib is not None:
            cursor.execute(f"PRAGMA cache_size=-{cache_kib}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(sync, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


@dataclass(frozen=True)
class _ThreadWriter:
    """A SQLite file's write engine (one plain sqlite3 connection) and the one thread using it."""

    engine: Engine
    # One thread for every write transaction: writers queue here instead of as several threads
    # blocked on the single-connection pool, each of which must take the GIL back from the event
    # loop just to wait again (measured: less CPU per contact, see bench/README.md).
    thread: ThreadPoolExecutor


_SYNC_WRITERS: weakref.WeakKeyDictionary[Engine, _ThreadWriter] = weakref.WeakKeyDictionary()


def _thread_writer(engine: AsyncEngine) -> _ThreadWriter | None:
    """For a SQLite file: a plain sqlite3 engine (one connection) and the thread that uses it."""
    if not is_sqlite_file(engine):
        return None
    writer = _SYNC_WRITERS.get(engine.sync_engine)
    if writer is None:
        writer = _ThreadWriter(
            sqlite_write_engine(engine.url, threaded=True),
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="crmsync-sqlite-writer"),
        )
        _SYNC_WRITERS[engine.sync_engine] = writer
        own = writer

        @event.listens_for(engine.sync_engine, "engine_disposed")
        def _dispose_writer(disposed: Engine) -> None:
            # The next write after a dispose builds a new writer (and thread).
            if _SYNC_WRITERS.get(disposed) is own:
                del _SYNC_WRITERS[disposed]
            own.thread.shutdown(wait=False)
            own.engine.dispose()

    return writer


def in_transaction(engine: Engine, work: Callable[[Connection], T]) -> T:
    with engine.begin() as conn:
        return work(conn)


def sqlite_write_engine(url: URL, *, threaded: bool) -> Engine:
    """A plain sqlite3 engine with one connection: `write`'s, in a thread or the writer process."""
    sync = sa_create_engine(
        url.set(drivername="sqlite"),
        # One connection, used by one thread (a dispose may close it from another).
        connect_args={"timeout": 30, "check_same_thread": not threaded},
        pool_size=1,
        max_overflow=0,
        pool_timeout=120,
        hide_parameters=True,
    )
    _configure_sqlite(sync, SQLITE_WRITER_CACHE_KIB)
    return sync


_PROCESS_WRITERS: weakref.WeakKeyDictionary[Engine, WriterProcess] = weakref.WeakKeyDictionary()


async def start_writer(engine: AsyncEngine) -> bool:
    """From now on, run this event loop's `write`s on a SQLite file in a writer process.

    A worker calls this when it starts (`CRMSYNC_SQLITE_WRITER_PROCESS`) and `stop_writer` when
    it stops; other loops, and everything before and after, use the writer thread. Returns
    whether a writer process runs (never for PostgreSQL or an in-memory database).
    """
    if not is_sqlite_file(engine):
        return False
    writer = _PROCESS_WRITERS.get(engine.sync_engine)
    if writer is None:
        writer = _PROCESS_WRITERS[engine.sync_engine] = WriterProcess(_url(engine))

        @event.listens_for(engine.sync_engine, "engine_disposed")
        def _dispose_writer(disposed: Engine) -> None:
            writer = _PROCESS_WRITERS.pop(disposed, None)
            if writer is not None:
                writer.stop_now()

    try:
        await writer.run(_nothing)  # the child is up and has opened the database
    except WriterDied as exc:
        log.error("%s; SQLite writes stay in a thread of this process", exc)
        _PROCESS_WRITERS.pop(engine.sync_engine, None)
        return False
    return True


async def stop_writer(engine: AsyncEngine) -> None:
    writer = _PROCESS_WRITERS.pop(engine.sync_engine, None)
    if writer is not None:
        await writer.stop()


def _nothing(_conn: Connection) -> None:
    return None


def _process_writer(engine: AsyncEngine) -> WriterProcess | None:
    writer = _PROCESS_WRITERS.get(engine.sync_engine)
    if writer is None or writer.loop is not asyncio.get_running_loop():
        return None
    if writer.dead:
        if not writer.answered:  # it never started: writes stay in a thread from now on
            log.error("the SQLite writer process did not start; writes stay in a thread")
            del _PROCESS_WRITERS[engine.sync_engine]
            return None
        # It died after working: a new one for this write and the next.
        writer = _PROCESS_WRITERS[engine.sync_engine] = WriterProcess(_url(engine))
    return writer


def _url(engine: AsyncEngine) -> str:
    return engine.url.render_as_string(hide_password=False)


async def write(engine: AsyncEngine, work: Callable[[Connection], T]) -> T:
    """Run `work(conn)`, synchronous SQLAlchemy code, in one write transaction.

    The sync engine's hot paths use this. On SQLite the whole transaction runs on a plain sqlite3
    connection in one worker thread (or, while a worker runs, in its writer process; `work` must
    then be picklable: module functions bound with `functools.partial`): aiosqlite hops between
    threads several times per statement, and on a busy event loop each hop waits for the GIL
    (measured: most of a claim's time). On PostgreSQL it runs in the async engine's greenlet,
    every statement awaited on asyncpg.
    """
    process = _process_writer(engine)
    if process is not None:
        return await process.run(work)
    threaded = _thread_writer(engine)
    if threaded is not None:
        # As asyncio.to_thread does, on this engine's own thread: the caller's context goes along.
        call = functools.partial(
            contextvars.copy_context().run, in_transaction, threaded.engine, work
        )
        return await asyncio.get_running_loop().run_in_executor(threaded.thread, call)
    async with engine.begin() as conn:
        return await conn.run_sync(work)
