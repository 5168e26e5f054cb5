"""`writer_process.write` on a SQLite file: every write transaction runs on one thread of its
own, in order, with the caller's context, rolls back on error, and comes back after the engine
is disposed.
While a worker runs, its loop's writes run in a writer process instead: in order, errors coming
back as themselves, and no process left behind when it dies, is signalled or its parent dies."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError

from crmsync import db
from crmsync import writer_process as writers
from crmsync.writer_process import WriterDied, WriterProcess

_CALLER = contextvars.ContextVar("caller", default="none")


def _insert(value: int) -> Callable[[Connection], tuple[str, str, int]]:
    """A write that inserts `value`; it reports its thread, its context and the rows it saw."""

    def work(conn: Connection) -> tuple[str, str, int]:
        conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": value})
        count = conn.execute(text("SELECT count(*) FROM t")).scalar_one()
        return threading.current_thread().name, _CALLER.get(), int(count)

    return work


async def test_sqlite_writes_share_one_thread_and_survive_a_dispose(tmp_path: Path) -> None:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    try:
        await writers.write(engine, lambda conn: conn.execute(text("CREATE TABLE t (v INTEGER)")))

        async def insert(value: int) -> tuple[str, str, int]:
            _CALLER.set(f"caller-{value}")
            return await writers.write(engine, _insert(value))

        done = await asyncio.gather(*(insert(v) for v in range(20)))
        names = {name for name, _, _ in done}
        assert len(names) == 1 and names.pop().startswith("crmsync-sqlite-writer")
        assert [caller for _, caller, _ in done] == [f"caller-{v}" for v in range(20)]
        # One at a time: each transaction saw all the ones before it, none after.
        assert sorted(count for _, _, count in done) == list(range(1, 21))

        def fail(conn: Connection) -> None:
            conn.execute(text("INSERT INTO t (v) VALUES (99)"))
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            await writers.write(engine, fail)
        rows = await writers.write(
            engine, lambda c: c.execute(text("SELECT v FROM t")).scalars().all()
        )
        assert sorted(rows) == list(range(20))  # the failed transaction left nothing

        old = {t for t in threading.enumerate() if t.name.startswith("crmsync-sqlite-writer")}
        await engine.dispose()
        for thread in old:
            await asyncio.to_thread(thread.join, 10)
            assert not thread.is_alive()
        name, _, count = await writers.write(engine, _insert(20))
        assert count == 21 and name.startswith("crmsync-sqlite-writer")
    finally:
        await engine.dispose()


# -- the writer process ---------------------------------------------------------------------------
# Its writes are module functions bound with functools.partial: they go to the child pickled.


def _create(conn: Connection) -> None:
    conn.execute(text("CREATE TABLE t (v INTEGER UNIQUE)"))


def _insert_in(value: int, conn: Connection) -> tuple[int, int]:
    conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": value})
    return os.getpid(), int(conn.execute(text("SELECT count(*) FROM t")).scalar_one())


def _values(conn: Connection) -> list[int]:
    return list(conn.execute(text("SELECT v FROM t ORDER BY v")).scalars())


def _sleep(seconds: float, conn: Connection, started: str | None = None) -> int:
    """A slow write; it creates the file `started` (if given) once it runs."""
    if started is not None:
        Path(started).touch()
    time.sleep(seconds)
    return os.getpid()


async def _until(condition: Callable[[], bool], what: str, within: float = 15.0) -> None:
    """A bounded poll on the condition itself."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def _where(conn: Connection) -> tuple[int, str]:
    return os.getpid(), threading.current_thread().name


def _gone(pid: int, within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True  # exited, not yet reaped by its parent
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


async def test_a_writer_process_runs_writes_in_order_and_errors_come_back(tmp_path: Path) -> None:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        await writers.write(engine, _create)
        assert await writers.start(engine)
        done = await asyncio.gather(
            *(writers.write(engine, functools.partial(_insert_in, v)) for v in range(20))
        )
        pids = {pid for pid, _ in done}
        assert len(pids) == 1 and os.getpid() not in pids
        # Sent in order, run one at a time: each saw exactly the ones before it.
        assert [count for _, count in done] == list(range(1, 21))

        # A failure comes back as itself, and its transaction left nothing behind.
        with pytest.raises(IntegrityError, match="UNIQUE"):
            await writers.write(engine, functools.partial(_insert_in, 5))
        assert await writers.write(engine, _values) == list(range(20))

        # A write that cannot be pickled (a closure) fails clearly instead of silently.
        with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
            await writers.write(engine, lambda conn: None)

        # SIGTERM and SIGINT (a terminal's or a service manager's, sent to every process) leave
        # the writer serving: the worker's graceful shutdown still writes through it.
        (pid,) = pids
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
        assert (await writers.write(engine, _where))[0] == pid

        # Stopped: the child exits, and writes go to the writer thread again.
        await writers.stop(engine)
        assert _gone(pid)
        where_pid, thread = await writers.write(engine, _where)
        assert where_pid == os.getpid() and thread.startswith("crmsync-sqlite-writer")
    finally:
        await writers.stop(engine)
        await engine.dispose()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_a_ctrl_c_while_the_writer_process_starts_does_not_kill_it(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """A Ctrl-C reaches the whole process group, the child too, maybe while it still imports:
    it must ignore the signal from its first instruction, not only once it can say so."""
    engine = db.create_engine(f"sqlite:///{tmp_path / 's.db'}")
    try:
        await writers.write(engine, _create)
        writer = WriterProcess(f"sqlite:///{tmp_path / 's.db'}")
        try:
            os.kill(writer.pid, sig)  # at once: the child is still starting its interpreter
            pid, _ = await asyncio.wait_for(writer.run(_where), 30)
            assert pid == writer.pid
        finally:
            await writer.stop()
    finally:
        await engine.dispose()


async def test_a_writer_process_that_dies_fails_its_writes_and_is_replaced(
    tmp_path: Path,
) -> None:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'd.db'}")
    try:
        await writers.write(engine, _create)
        await writers.start(engine)
        first = await writers.write(engine, functools.partial(_sleep, 0))
        started = tmp_path / "slow-started"
        slow = asyncio.ensure_future(
            writers.write(engine, functools.partial(_sleep, 30, started=str(started)))
        )
        queued = asyncio.ensure_future(writers.write(engine, functools.partial(_insert_in, 1)))
        await _until(started.exists, "the slow write to run in the writer process")
        os.kill(first, signal.SIGKILL)
        for pending in (slow, queued):
            with pytest.raises(WriterDied):
                await asyncio.wait_for(pending, 10)
        # The next write starts a new writer process; the write queued behind the dead one never
        # ran (it was never committed), so nothing half-done is left.
        second, count = await writers.write(engine, functools.partial(_insert_in, 2))
        assert second not in (first, os.getpid()) and count == 1
    finally:
        await writers.stop(engine)
        await engine.dispose()


async def test_a_writer_process_that_cannot_start_leaves_the_writes_in_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    engine = db.create_engine(f"sqlite:///{tmp_path / 's.db'}")
    try:
        await writers.write(engine, _create)
        # A child that exits at once, as one that cannot import crmsync would.
        with monkeypatch.context() as patch:
            patch.setattr(sys, "executable", "/bin/false")
            assert not await writers.start(engine)  # the worker still starts
        assert "writes stay in a thread" in caplog.text
        pid, thread = await writers.write(engine, _where)
        assert pid == os.getpid() and thread.startswith("crmsync-sqlite-writer")

        # One that worked and died is replaced; if its replacement cannot start, the writes
        # after that go to the thread instead of starting child after child.
        assert await writers.start(engine)
        first, _ = await writers.write(engine, _where)
        assert first != os.getpid()
        with monkeypatch.context() as patch:
            patch.setattr(sys, "executable", "/bin/false")
            writer = writers._PROCESS_WRITERS[engine.sync_engine]
            os.kill(first, signal.SIGKILL)
            assert _gone(first)
            await _until(lambda: writer.dead, "the event loop to see the socket close")
            with pytest.raises(WriterDied):
                await writers.write(engine, _where)
            caplog.clear()
            pid, thread = await writers.write(engine, _where)
        assert pid == os.getpid() and thread.startswith("crmsync-sqlite-writer")
        assert "did not start" in caplog.text
        assert (await writers.write(engine, functools.partial(_insert_in, 7)))[1] == 1
    finally:
        await writers.stop(engine)
        await engine.dispose()


async def test_stopping_the_writer_process_lets_the_writes_sent_finish(tmp_path: Path) -> None:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'f.db'}")
    try:
        await writers.write(engine, _create)
        await writers.start(engine)
        started = tmp_path / "slow-started"
        slow = asyncio.ensure_future(
            writers.write(engine, functools.partial(_sleep, 0.5, started=str(started)))
        )
        queued = asyncio.ensure_future(writers.write(engine, functools.partial(_insert_in, 3)))
        await _until(started.exists, "the slow write to run in the writer process")
        await writers.stop(engine)
        child = await slow
        assert child != os.getpid() and (await queued) == (child, 1)
        assert _gone(child)
    finally:
        await engine.dispose()


async def test_writes_from_another_event_loop_use_the_writer_thread(tmp_path: Path) -> None:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'l.db'}")
    try:
        await writers.start(engine)
        child, _ = await writers.write(engine, _where)

        def elsewhere() -> tuple[int, str]:
            return asyncio.run(writers.write(engine, _where))

        pid, thread = await asyncio.to_thread(elsewhere)
        assert child != os.getpid() and pid == os.getpid()
        assert thread.startswith("crmsync-sqlite-writer")
    finally:
        await writers.stop(engine)
        await engine.dispose()


def test_the_writer_process_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, os, sys, time
        from crmsync import db
        from crmsync import writer_process as writers
        from tests.test_db_writer import _where

        async def main():
            engine = db.create_engine("sqlite:///{tmp_path / "k.db"}")
            await writers.start(engine)
            pid, _ = await writers.write(engine, _where)
            print(pid, flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        assert command[1:3] == [b"-m", b"crmsync.writer_process"]  # what `ps` shows
        parent.kill()
        parent.wait(10)
        assert _gone(child), "the writer process outlived its SIGKILLed parent"
    finally:
        parent.kill()
        parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
