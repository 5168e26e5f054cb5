"""A SQLite worker's write transactions, run in a process of their own.

Python runs one thread at a time, so the worker's event loop (payloads, HTTP, vendor answers)
and its SQLite writer thread take turns on one core: measured, the writer spent about half its
time waiting for the event loop to let go, and the loop as long waiting for it. In a child
process the two run on two cores: +32% contacts/s (bench/README.md, "Sync throughput").

The parent sends each transaction body (a picklable callable taking a `Connection`: module
functions bound with `functools.partial`) over a socket pair; the child runs them one at a time,
in order, each in one transaction on its own sqlite3 connection, and answers each with its
result or its exception. Context variables do not travel.

Lifetimes: the child exits when its socket closes: when the parent stops it or dies, even by
SIGKILL. It ignores SIGINT and SIGTERM, which a terminal or a service manager also sends to the
children, so that the parent's graceful shutdown can still hand its leases back through it; from
its first instruction (it starts with them blocked), so a Ctrl-C while it imports is dropped too. If
the child dies, the writes waiting for it fail with `WriterDied` (each is one transaction:
committed or not; the lease rules cover a commit whose answer was lost) and the next write
starts a new child, unless that one died before its first answer: then `db` writes from its
thread from then on (see `db.start_writer`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, BinaryIO, TypeVar

from sqlalchemy.engine import Connection, Engine

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

    from crmsync import db

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
    from crmsync import db

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
