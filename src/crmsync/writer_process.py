"""The one way the sync core writes to a SQLite file: a writer process, or a thread as fallback.

`write(engine, transaction)` runs a `db.Transaction` (a module-level function and its arguments)
in one write transaction on a plain sqlite3 connection of its own (`db.sqlite_write_engine`):

- while a worker runs (`start` .. `stop`, `CRMSYNC_SQLITE_WRITER_PROCESS`, default on), in its
  writer process: a child with its own interpreter, so the worker's event loop and the writes
  use two cores instead of taking turns on one for the GIL (bench/README.md, "Sync throughput");
- otherwise (the API, other event loops, the setting off, a child that could not start), on the
  one writer thread of this process, where writes queue in order;
- on PostgreSQL or an in-memory SQLite, in the async engine, statement by statement.

The parent sends each transaction pickled over a socket pair; the child runs them one at a time,
in order, each in one transaction, and answers each with its result or its exception. Context
variables do not travel.

Lifetimes: the child exits when its socket closes: when the parent stops it or dies, even by
SIGKILL. It ignores SIGINT and SIGTERM, which a terminal or a service manager also sends to the
children, so that the parent's graceful shutdown can still hand its leases back through it; from
its first instruction (it starts with them blocked), so a Ctrl-C while it imports is dropped too.
If the child dies, the writes waiting for it fail with `WriterDied` (each is one transaction:
committed or not; the lease rules cover a commit whose answer was lost) and the next write starts
a new child, unless that one died before its first answer: then writes stay in the thread.

Imports go one way: this module uses `db` (engines, `Transaction`); `db` knows nothing of it.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import logging
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import db

T = TypeVar("T")
log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!Q")
# What a terminal or a service manager sends to every process; see `_serve`.
_IGNORED = {signal.SIGINT, signal.SIGTERM}
# How long a stop waits for the child to finish its current transaction (busy timeout: 30 s).
STOP_WAIT_SECONDS = 40.0


class WriterDied(RuntimeError):
    """The writer process ended before answering this write."""


class WriterProcess:
    """The parent's side: one child process and the writes waiting for its answers, in order."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        # A plain child (`python -m crmsync.writer_process FD`), not multiprocessing: never a
        # fork of a process running threads, no helper processes, a name `ps` shows.
        # The child starts with SIGINT and SIGTERM blocked (a signal mask survives exec) and
        # ignores them before it unblocks them: a Ctrl-C while it still imports is dropped.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _IGNORED)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        theirs.close()
        ours.setblocking(False)
        self._socket = ours
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._out = bytearray()
        self._reader = _Frames()
        self.dead = False
        # Answers received: a child that died before its first never started (say, it could
        # not import crmsync), and starting another would only fail the same way.
        self.answered = 0
        self.loop.add_reader(ours.fileno(), self._readable)
        # First frame: where to import from (as the parent does) and which database to open.
        setup = pickle.dumps((sys.path, url), pickle.HIGHEST_PROTOCOL)
        self._send(_LENGTH.pack(len(setup)) + setup)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def run(self, work: Callable[[Connection], T]) -> T:
        if self.dead:
            raise WriterDied("the SQLite writer process has stopped")
        data = pickle.dumps(work, pickle.HIGHEST_PROTOCOL)
        answer: asyncio.Future[Any] = self.loop.create_future()
        self._waiting.append(answer)
        self._send(_LENGTH.pack(len(data)) + data)
        ok, value = await answer
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    def _send(self, frame: bytes) -> None:
        if self._out:  # earlier frames still wait for room: keep the order
            self._out += frame
            return
        try:
            sent = self._socket.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._died()
            return
        if sent < len(frame):
            self._out += frame[sent:]
            self.loop.add_writer(self._socket.fileno(), self._writable)

    def _writable(self) -> None:
        try:
            sent = self._socket.send(self._out)
        except BlockingIOError:
            return
        except OSError:
            self._died()
            return
        del self._out[:sent]
        if not self._out:
            self.loop.remove_writer(self._socket.fileno())

    def _readable(self) -> None:
        try:
            chunk = self._socket.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._died()
            return
        for frame in self._reader.feed(chunk):
            self.answered += 1
            answer = self._waiting.popleft()
            if answer.done():  # a cancelled caller's write still ran; its answer goes
                continue
            try:
                answer.set_result(pickle.loads(frame))
            except Exception as exc:  # a result this process cannot rebuild: the caller hears
                answer.set_exception(exc)

    def _died(self) -> None:
        if self.dead:
            return
        self.dead = True
        self._close_socket()
        self._reap()
        what = f"the SQLite writer process (pid {self.pid}) stopped"
        if self._waiting:
            log.error("%s", what)
        while self._waiting:
            answer = self._waiting.popleft()
            if not answer.done():
                answer.set_exception(WriterDied(what))

    def _reap(self) -> None:
        # Collect its exit status once it has exited (no zombie), without blocking the loop.
        threading.Thread(
            target=self.process.wait, name="crmsync-writer-reaper", daemon=True
        ).start()

    def _close_socket(self) -> None:
        if self._socket.fileno() >= 0:
            self.loop.remove_reader(self._socket.fileno())
            if self._out:
                self.loop.remove_writer(self._socket.fileno())
            self._socket.close()

    async def stop(self) -> None:
        """Let the writes sent finish, close the socket (the child exits) and wait for it."""
        pending = [answer for answer in self._waiting if not answer.done()]
        if pending and not self.dead:
            await asyncio.wait(pending, timeout=STOP_WAIT_SECONDS)
        self._died()  # whatever is still unanswered fails now, rather than waiting forever
        try:
            await asyncio.to_thread(self.process.wait, STOP_WAIT_SECONDS)
        except subprocess.TimeoutExpired:  # stuck: its transaction rolls back, leases cover it
            self.process.kill()
            await asyncio.to_thread(self.process.wait, STOP_WAIT_SECONDS)

    def stop_now(self) -> None:
        """Close the socket without waiting (from synchronous code, such as a dispose)."""
        self.dead = True
        if self.loop.is_closed():
            self._socket.close()
        else:
            self._close_socket()
        self._reap()


class _Frames:
    """Length-prefixed frames out of a byte stream."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        frames: list[bytes] = []
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            end = _LENGTH.size + length
            if len(self._buffer) < end:
                break
            frames.append(bytes(self._buffer[_LENGTH.size : end]))
            del self._buffer[:end]
        return frames


# -- which writer runs a write -----------------------------------------------------------------


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
    if not db.is_sqlite_file(engine):
        return None
    writer = _SYNC_WRITERS.get(engine.sync_engine)
    if writer is None:
        writer = _ThreadWriter(
            db.sqlite_write_engine(engine.url, threaded=True),
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


_PROCESS_WRITERS: weakref.WeakKeyDictionary[Engine, WriterProcess] = weakref.WeakKeyDictionary()


async def start(engine: AsyncEngine) -> bool:
    """From now on, run this event loop's `write`s on a SQLite file in a writer process.

    A worker calls this when it starts (`CRMSYNC_SQLITE_WRITER_PROCESS`) and `stop` when
    it stops; other loops, and everything before and after, use the writer thread. Returns
    whether a writer process runs (never for PostgreSQL or an in-memory database).
    """
    if not db.is_sqlite_file(engine):
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
        await writer.run(db.Transaction(_nothing))  # the child is up and has opened the database
    except WriterDied as exc:
        log.error("%s; SQLite writes stay in a thread of this process", exc)
        _PROCESS_WRITERS.pop(engine.sync_engine, None)
        return False
    return True


async def stop(engine: AsyncEngine) -> None:
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


async def write(engine: AsyncEngine, work: db.Transaction[T]) -> T:
    """Run `work(conn)`, synchronous SQLAlchemy code, in one write transaction.

    The sync core's writes go through here. On a SQLite file the whole transaction runs on a
    plain sqlite3 connection: in the worker's writer process while one runs for this event loop,
    else (its fallback) on the one writer thread of this process; aiosqlite would hop between
    threads several times per statement, each hop waiting for the GIL on a busy event loop.
    On PostgreSQL (and in-memory SQLite) it runs in the async engine's greenlet, every statement
    awaited on the driver.
    """
    process = _process_writer(engine)
    if process is not None:
        return await _said_while_waiting(process.run(work))
    threaded = _thread_writer(engine)
    if threaded is not None:
        # As asyncio.to_thread does, on this engine's own thread: the caller's context goes along.
        call = functools.partial(
            contextvars.copy_context().run, db.in_transaction, threaded.engine, work
        )
        loop = asyncio.get_running_loop()
        return await _said_while_waiting(loop.run_in_executor(threaded.thread, call))
    async with engine.begin() as conn:
        return await conn.run_sync(work)


# A SQLite write that has not finished after this long says so (and again as long as it waits).
SQLITE_WAIT_LOG_SECONDS = 2.0


async def _said_while_waiting(write: Awaitable[T]) -> T:
    """Await a SQLite write transaction; while it takes longer than `SQLITE_WAIT_LOG_SECONDS`,
    log what it is most likely waiting for: the write lock, held by another connection or process
    (a backup, a `sqlite3` shell left in a transaction, another crmsync process). It waits for it
    up to the busy timeout and then fails; the worker's outcomes are kept meanwhile."""
    task = asyncio.ensure_future(write)
    waited = 0.0
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=SQLITE_WAIT_LOG_SECONDS)
            if done:
                return task.result()
            waited += SQLITE_WAIT_LOG_SECONDS
            log.warning(
                "a SQLite write transaction has waited %.0f s: another connection or process "
                "holds the database's write lock (waiting for it up to %d s)",
                waited,
                db.SQLITE_BUSY_TIMEOUT_MS // 1000,
            )
    except asyncio.CancelledError:
        task.cancel()
        raise


# -- the child --------------------------------------------------------------------------------


def _serve(sock: socket.socket) -> None:
    """The child's loop: read a write, run it in one transaction, answer; until EOF."""
    for sig in _IGNORED:
        signal.signal(sig, signal.SIG_IGN)  # a signal that came while blocked is dropped now
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _IGNORED)
    stream = sock.makefile("rb")
    setup = _read_frame(stream)
    if setup is None:
        return
    path, url = pickle.loads(setup)
    sys.path[:] = path
    from sqlalchemy.engine import make_url

    engine = db.sqlite_write_engine(make_url(url), threaded=False)
    try:
        while (data := _read_frame(stream)) is not None:
            sock.sendall(_answer(engine, data))
    finally:  # the parent closed the socket or died
        engine.dispose()


def _read_frame(stream: BinaryIO) -> bytes | None:
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(header)
    data = stream.read(length)
    return data if len(data) == length else None


def _answer(engine: Engine, data: bytes) -> bytes:
    try:
        work = pickle.loads(data)
        answer: tuple[bool, Any] = (True, db.in_transaction(engine, work))
    except Exception as exc:  # every failure goes back to the caller, as it would in a thread
        answer = (False, exc)
    try:
        frame = pickle.dumps(answer, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # an exception that cannot be pickled: its text, at least
        error = answer[1] if not answer[0] else exc
        frame = pickle.dumps((False, RuntimeError(f"{type(error).__name__}: {error}")))
    return _LENGTH.pack(len(frame)) + frame


if __name__ == "__main__":
    _serve(socket.socket(fileno=int(sys.argv[1])))
