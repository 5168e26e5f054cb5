"""Database engines for SQLite (embedded default) and PostgreSQL.

SQLite runs in WAL mode with a busy timeout, and every write transaction starts with
`BEGIN IMMEDIATE`: a deferred transaction that reads and then writes can fail at once with
"database is locked" when another process wrote in between, while an immediate one waits its turn.
SQLite has one writer at a time, so an async engine on a SQLite file holds one connection.
The sync core's write transactions (`Transaction`) take another way to the same file:
`writer_process.write` runs them on one plain sqlite3 connection of its own (`sqlite_write_engine`),
in the worker's writer process or, as its fallback, one thread of this process.
Reads go through `read_only(engine)`: for SQLite a sibling engine with its own pool whose
transactions begin deferred and never wait for writers; for PostgreSQL the same engine.

The SQLite linked into Python must be 3.35 or newer (`RETURNING`, `DROP COLUMN`) with the JSON
functions (`json_each`, on which every batch write relies): `check_sqlite` says so, once, when
the first SQLite engine is made.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import sqlite3
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

if TYPE_CHECKING:
    from crmsync.settings import Settings

T = TypeVar("T")
log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_MIN_VERSION = (3, 35, 0)
# Page cache of the sync engine's SQLite write connection, in KiB (allocated only as pages are
# read). SQLite's default of 2 MiB is smaller than the queue's indexes from a few tens of
# thousands of contacts on: every status change then rereads index pages from the file and WAL.
# Not more, and only on that connection: the worker's peak RSS grows with it (bench/README.md,
# "SQLite page cache", bench/worker_rss.py).
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
        _check_sqlite_once()
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
    # No pre-ping (SQLAlchemy's costs three round trips per checkout: BEGIN, a query, ROLLBACK;
    # a worker checks a connection out for every batch). `_drop_closed_on_checkout` makes the
    # check that matters without a round trip, and a statement that fails on a lost connection
    # invalidates the pool's older connections too.
    ping = kwargs.setdefault("pool_pre_ping", False)
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
    engine = create_async_engine(parsed, **kwargs)
    if not ping:
        event.listen(engine.sync_engine.pool, "checkout", _drop_closed_on_checkout)
    return engine


def _drop_closed_on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A pooled PostgreSQL connection the server closed is replaced, with no round trip.

    asyncpg marks a connection closed as soon as the event loop reads its end (a server
    restart, a terminated backend, an idle timeout), which is what a pre-ping mostly finds.
    """
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("the server closed this connection")


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


class Transaction(functools.partial[T], Generic[T]):
    """A write transaction's body: a module-level function and its leading arguments.

    Called with the transaction's `Connection` as its last argument: `Transaction(f, a, b)(conn)`
    is `f(a, b, conn)`. A value, never a closure: on SQLite `write` may run it in the writer
    process, which receives it pickled; a lambda or a nested function is refused here, when it
    is built, instead of when the pickling fails.
    """

    __slots__ = ()

    def __new__(cls, func: Callable[..., T], /, *args: Any) -> Self:
        if "<" in getattr(func, "__qualname__", "<unknown>"):
            raise TypeError(f"a transaction body must be a module-level function, not {func!r}")
        return super().__new__(cls, func, *args)


def in_transaction(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run `work(conn)` in one transaction of `engine`: committed, or rolled back if it raises."""
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


class SQLiteUnsupported(RuntimeError):
    """The SQLite linked into this Python cannot run crmsync."""


def check_sqlite(
    version: tuple[int, int, int] = sqlite3.sqlite_version_info,
    has_json: Callable[[], bool] | None = None,
) -> None:
    """Refuse an SQLite older than 3.35 or without the JSON functions, saying what to do."""
    found = ".".join(map(str, version))
    if version < SQLITE_MIN_VERSION:
        raise SQLiteUnsupported(
            f"crmsync needs SQLite 3.35 or newer (RETURNING, DROP COLUMN); this Python's sqlite3 "
            f"module uses SQLite {found}. Use a Python built against a newer SQLite, or "
            "PostgreSQL (CRMSYNC_DATABASE_URL=postgresql://...)."
        )
    if not (has_json or _has_json)():
        raise SQLiteUnsupported(
            f"crmsync needs SQLite's JSON functions (json_each, json_group_array); SQLite {found} "
            "in this Python was built without them. Use a Python built against an SQLite with "
            "JSON (the default since 3.38), or PostgreSQL."
        )


def _has_json() -> bool:
    try:
        with contextlib.closing(sqlite3.connect(":memory:")) as conn:
            conn.execute("SELECT value FROM json_each(json_array(1))")
    except sqlite3.Error:
        return False
    return True


@functools.cache
def _check_sqlite_once() -> None:
    check_sqlite()
