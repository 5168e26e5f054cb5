"""What the benchmarks share: throwaway databases, fast contact loading, crmsync processes.

Everything here drives crmsync the way a user does: the schema comes from the Alembic migrations,
contacts go in through the repository (`insert_new`, the bulk API's own insert), and the service
and workers run as `crmsync serve` / `crmsync worker` subprocesses with settings in their
environment. The benchmark process itself only sends requests and reads the database.

Databases are created per benchmark and dropped afterwards: SQLite files in a temporary
directory, PostgreSQL databases named `crmsync_bench_*` on `--pg-url` (default
postgresql://postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import platform
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from crmsync import auth, db
from crmsync.contacts import repository
from crmsync.migrate import upgrade

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
CRMSYNC = str(Path(sys.executable).with_name("crmsync"))
DEFAULT_PG_URL = os.environ.get("CRMSYNC_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Contacts are created this far apart, so `created_at` (the list order) is distinct per row.
CREATED_STEP = dt.timedelta(milliseconds=1)
CREATED_BASE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
# Rows per loading transaction: big enough to be fast, small enough to keep memory flat.
LOAD_CHUNK = 10_000
DOMAINS = 1_000
PAGES = 50_000
JOBS = 100


# --- contacts ----------------------------------------------------------------------------------


def email_type(i: int) -> str:
    """Half CORPORATE (every even i, so a filter can pick exactly half), then FREE 30%,
    SERVICE 10%, UNKNOWN 10%."""
    if i % 2 == 0:
        return "CORPORATE"
    return {1: "FREE", 3: "FREE", 5: "FREE", 7: "SERVICE", 9: "UNKNOWN"}[i % 10]


def curation_status(i: int) -> str:
    """5% Queued, 5% Complete, the rest New (what a curation queue looks like)."""
    return {0: "Queued", 1: "Complete"}.get(i % 20, "New")


def has_gmail(i: int) -> bool:
    # Two thirds of the FREE contacts use Gmail: 20% of all contacts.
    return email_type(i) == "FREE" and i % 3 != 2


def contact_email(i: int) -> str:
    domain = "gmail.com" if has_gmail(i) else f"example{i % DOMAINS}.com"
    return f"lead{i}@{domain}"


def domain_uuid(n: int) -> uuid.UUID:
    return uuid.UUID(int=n + 1)


def page_uuid(n: int) -> uuid.UUID:
    return uuid.UUID(int=10**9 + n)


def contact_row(i: int) -> dict[str, Any]:
    """Column values of contact number `i` (deterministic: every run loads the same data)."""
    created = CREATED_BASE + i * CREATED_STEP
    return {
        "id": uuid.UUID(int=(7 << 120) + i),
        "email": contact_email(i),
        "name": f"First{i} Last{i}",
        "phone_number": f"+4420{i:08d}",
        "email_type": email_type(i),
        "has_gmail": has_gmail(i),
        "context": f"Found on the team page of example{i % DOMAINS}.com",
        "source_url": f"https://example{i % DOMAINS}.com/team/{i}",
        "domain_id": domain_uuid(i % DOMAINS),
        "page_id": page_uuid(i % PAGES),
        "source_job_id": uuid.UUID(int=2 * 10**9 + i % JOBS),
        "contact_curation_status": curation_status(i),
        "contact_processing_status": None,
        "contact_processing_error": None,
        "created_at": created,
        "updated_at": created,
    }


async def load_contacts(engine: AsyncEngine, count: int, start: int = 0) -> float:
    """Insert contacts start..start+count; return the seconds it took.

    SQLite: through the repository (`insert_new`, what the bulk API uses). PostgreSQL: COPY,
    the same rows ten times faster, so that a million-contact table loads in seconds.
    """
    started = time.perf_counter()
    for first in range(start, start + count, LOAD_CHUNK):
        rows = [contact_row(i) for i in range(first, min(first + LOAD_CHUNK, start + count))]
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                await _copy_rows(conn, rows)
            else:
                inserted = await repository.insert_new(conn, rows)
                if len(inserted) != len(rows):
                    raise RuntimeError(f"loaded {len(inserted)} of {len(rows)} (duplicates?)")
    return time.perf_counter() - started


async def _copy_rows(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    columns = list(rows[0])
    records = [tuple(row[c] for c in columns) for row in rows]
    await driver.copy_records_to_table("contacts", records=records, columns=columns)


# --- databases ---------------------------------------------------------------------------------


@dataclass
class Database:
    """A throwaway crmsync database: `kind` is "sqlite" or "postgresql"."""

    kind: str
    name: str
    url: str  # what DATABASE_URL gets
    path: Path | None = None  # SQLite file
    admin_url: str | None = None  # PostgreSQL maintenance database

    def engine(self, **kwargs: Any) -> AsyncEngine:
        return db.create_engine(self.url, **kwargs)

    @property
    def label(self) -> str:
        return "SQLite" if self.kind == "sqlite" else "PostgreSQL"


class Databases:
    """Creates and drops the benchmark's databases; drops whatever is left on exit."""

    def __init__(self, pg_url: str = DEFAULT_PG_URL) -> None:
        self.pg_url = pg_url.rstrip("/")
        self.tmp = Path(tempfile.mkdtemp(prefix="crmsync-bench-"))
        self._created: list[Database] = []

    def __enter__(self) -> Databases:
        return self

    def __exit__(self, *_exc: object) -> None:
        for database in list(self._created):
            with contextlib.suppress(Exception):
                self.drop(database)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _new_name(self, hint: str) -> str:
        return f"crmsync_bench_{hint}_{secrets.token_hex(3)}"

    def create(self, kind: str, hint: str = "db", template: Database | None = None) -> Database:
        """An empty database (schema not yet created), or a copy of `template`."""
        name = self._new_name(hint)
        if kind == "sqlite":
            path = self.tmp / f"{name}.db"
            if template is not None:
                assert template.path is not None
                _copy_sqlite(template.path, path)
            database = Database(kind, name, f"sqlite+aiosqlite:///{path}", path=path)
        elif kind == "postgresql":
            admin = f"{self.pg_url}/postgres"
            source = f" TEMPLATE {template.name}" if template is not None else ""
            _pg_admin(admin, f"CREATE DATABASE {name}{source}")
            url = f"postgresql+asyncpg://{self.pg_url.split('://', 1)[1]}/{name}"
            database = Database(kind, name, url, admin_url=admin)
        else:
            raise ValueError(f"unknown database kind {kind!r}: use sqlite or postgresql")
        self._created.append(database)
        return database

    def drop(self, database: Database) -> None:
        if database in self._created:
            self._created.remove(database)
        if database.kind == "sqlite":
            assert database.path is not None
            for suffix in ("", "-wal", "-shm"):
                Path(f"{database.path}{suffix}").unlink(missing_ok=True)
        else:
            assert database.admin_url is not None
            _pg_admin(database.admin_url, f"DROP DATABASE IF EXISTS {database.name} WITH (FORCE)")


def _pg_admin(url: str, statement: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def _copy_sqlite(source: Path, target: Path) -> None:
    # Fold the WAL into the main file first, so copying the one file copies everything.
    with contextlib.closing(sqlite3.connect(source)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copyfile(source, target)


# The schema a template database is migrated to: "head", or an older revision when an older
# crmsync is compared against this one (`ab_revisions.py --schema`; `crmsync serve` upgrades
# its copy at start, outside the timed run).
SCHEMA = "head"


async def migrate(database: Database) -> None:
    engine = database.engine()
    try:
        await upgrade(engine, SCHEMA)
    finally:
        await engine.dispose()


async def vacuum_analyze(database: Database) -> None:
    """Fresh planner statistics and visibility map, as autovacuum would leave a settled table."""
    engine = database.engine(isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            if database.kind == "postgresql":
                await conn.execute(text("VACUUM ANALYZE"))
            else:
                await conn.execute(text("ANALYZE"))
    finally:
        await engine.dispose()


def prepared_database(
    databases: Databases, kind: str, contacts: int, hint: str = "tmpl"
) -> tuple[Database, float]:
    """A migrated database holding `contacts` contacts, analysed; and the load time."""
    database = databases.create(kind, hint)

    async def fill() -> float:
        await migrate(database)
        engine = database.engine()
        try:
            seconds = await load_contacts(engine, contacts)
        finally:
            await engine.dispose()
        await vacuum_analyze(database)
        return seconds

    return database, asyncio.run(fill())


# --- crmsync processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """Settings shared by every crmsync process of one benchmark run."""

    database: Database
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def environ(self) -> dict[str, str]:
        # A clean environment: only what the benchmark sets, so a stray variable or a .env in
        # the caller's directory cannot change what is measured (processes run in `workdir`).
        # PYTHONPATH passes through so that a before/after can run another checkout's `src`.
        keep = ("PATH", "HOME", "LANG", "TZ", "PYTHONPATH")
        base = {k: os.environ[k] for k in keep if k in os.environ}
        return {
            **base,
            "DATABASE_URL": self.database.url,
            "JWT_SECRET_KEY": self.secret,
            "CRMSYNC_STATE_DIR": str(self.workdir / ".crmsync"),
            **self.env,
        }

    def token(self) -> str:
        return auth.mint_token(self.secret, "bench", dt.timedelta(hours=6))


class Process:
    """A crmsync subprocess; its output goes to a log file in the work directory."""

    def __init__(self, name: str, args: Sequence[str], service: Service) -> None:
        self.name = name
        self.log_path = service.workdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            [CRMSYNC, *args],
            cwd=service.workdir,
            env=service.environ(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 40.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()


class Api:
    """`crmsync serve` on a free port, with an HTTP client that carries a bearer token."""

    def __init__(self, service: Service, *, worker: bool, crms: Sequence[str] = ()) -> None:
        self.port = free_port()
        args = ["serve", "--port", str(self.port), "--worker" if worker else "--no-worker"]
        for crm in crms:
            args += ["--crm", crm]
        self.process = Process("serve", args, service)
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {service.token()}"},
            timeout=httpx.Timeout(300.0),
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.process.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if self.client.get("/healthz").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"crmsync serve not ready:\n{self.process.log_tail()}")
            time.sleep(0.1)

    def select(self, crms: Sequence[str], **filters: Any) -> tuple[float, dict[str, Any]]:
        """`PUT /crm/select/filtered`; (seconds from send to the full answer, the answer)."""
        body = {"crms": list(crms), "action": "select", **filters}
        started = time.perf_counter()
        response = self.client.put("/api/v3/contacts/crm/select/filtered", json=body)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"select answered {response.status_code}: {response.text[:500]}")
        result: dict[str, Any] = response.json()
        return elapsed, result

    def close(self) -> None:
        self.client.close()
        self.process.stop()


def start_workers(service: Service, count: int, crms: Sequence[str]) -> list[Process]:
    args = ["worker"]
    for crm in crms:
        args += ["--crm", crm]
    return [Process(f"worker{n + 1}", args, service) for n in range(count)]


async def wait_for_workers(database: Database, count: int) -> None:
    """Until `count` workers have registered (each does on start, before its first claim)."""
    engine = database.engine()
    query = text("SELECT count(*) FROM workers WHERE stopped_at IS NULL")
    try:
        async with asyncio.timeout(60):
            while True:
                async with engine.connect() as conn:
                    if (await conn.execute(query)).scalar_one() >= count:
                        return
                await asyncio.sleep(0.1)
    finally:
        await engine.dispose()


# --- measuring ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (a SQLite worker's writer process, say), from /proc."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                found += [int(child), *descendants(int(child))]
    return found


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) of a process, in KiB, from /proc/<pid>/status."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """A Markdown table; columns listed in `right` are right-aligned."""
    align = ["---:" if i in right else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# --- where it ran ------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as f:
        return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    return "unknown"


def postgres_version(pg_url: str = DEFAULT_PG_URL) -> str:
    async def run() -> str:
        conn = await asyncpg.connect(f"{pg_url.rstrip('/')}/postgres")
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    try:
        return asyncio.run(run())
    except (OSError, asyncpg.PostgresError):
        return "unreachable"


def git_revision() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    revision = git("rev-parse", "--short", "HEAD") or "unknown"
    return revision + (" + uncommitted changes" if git("status", "--porcelain", "src") else "")


def environment(pg_url: str = DEFAULT_PG_URL) -> str:
    revision = git_revision()
    # The work tree may change while a long benchmark runs (others commit): say so.
    if revision != START_REVISION:
        revision = f"{START_REVISION} at the start, {revision} at the end"
    return (
        f"nproc={os.cpu_count()}, CPU: {cpu_model()}, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, PostgreSQL {postgres_version(pg_url)}, "
        f"crmsync at {revision}"
    )


START_REVISION = git_revision()


@contextlib.contextmanager
def workdir(root: Path, name: str) -> Iterator[Path]:
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    yield path


def utc_timestamp(value: Any) -> float:
    """A timestamp read back from either database as epoch seconds."""
    if isinstance(value, str):  # SQLite through raw SQL: naive UTC text
        value = dt.datetime.fromisoformat(value)
    assert isinstance(value, dt.datetime)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


# --- a shared machine --------------------------------------------------------------------------
# Other work may run on this machine at the same time (test suites, other benchmarks). Each
# timed run waits for a quiet machine first and records how much CPU others used during it, so a
# figure taken under load is visible as such instead of silently low.


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, in clock ticks, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_share(seconds: float = 1.0) -> float:
    """The share of all CPUs that was busy over the next `seconds`."""
    busy0, total0 = busy_jiffies()
    time.sleep(seconds)
    busy1, total1 = busy_jiffies()
    return (busy1 - busy0) / max(1, total1 - total0)


# On a machine that stays busy (other sessions benchmarking too), waiting and repeating can take
# longer than the runs: `CRMSYNC_BENCH_QUIET` (share, default 0.15), `CRMSYNC_BENCH_PATIENCE`
# (seconds, default 300) and `CRMSYNC_BENCH_MAX_OTHERS` (share, default 0.10) loosen them; the
# tables still show how much other work ran meanwhile.
QUIET = float(os.environ.get("CRMSYNC_BENCH_QUIET", "0.15"))
PATIENCE = float(os.environ.get("CRMSYNC_BENCH_PATIENCE", "300"))


def wait_quiet(threshold: float | None = None, patience: float | None = None) -> float:
    """Wait (up to `patience` s) until under `threshold` of the CPUs are busy; the last share."""
    threshold = QUIET if threshold is None else threshold
    patience = PATIENCE if patience is None else patience
    deadline = time.monotonic() + patience
    share = busy_share()
    while share > threshold and time.monotonic() < deadline:
        print(f"    (machine {share:.0%} busy with other work: waiting)", flush=True)
        share = busy_share(5.0)
    return share


# A run during which other work used more than this share of the CPUs is repeated, up to
# ATTEMPTS times in all; if every attempt was disturbed, the least disturbed one is kept (and
# the tables show the share, so such a figure is visibly marked).
MAX_OTHERS = float(os.environ.get("CRMSYNC_BENCH_MAX_OTHERS", "0.10"))
ATTEMPTS = 4


def least_disturbed(measure: Callable[[], T], others: Callable[[T], float], label: str) -> T:
    """Run `measure` until a run was not disturbed by other work (see MAX_OTHERS)."""
    kept: T | None = None
    for _ in range(ATTEMPTS):
        result = measure()
        share = others(result)
        if share <= MAX_OTHERS:
            return result
        print(f"    ({label}: other work used {share:.0%} of the CPUs meanwhile: again)")
        if kept is None or share < others(kept):
            kept = result
    assert kept is not None
    return kept


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so that `with` blocks drop their databases."""

    def _raise(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


def postgres_backends(database: Database) -> list[int]:
    """Server process ids serving `database` (their CPU is part of what a run costs).

    Parallel query workers live only as long as a query, so their CPU is counted through their
    parent: the list ends with the postmaster's pid negated, which `CpuMeter` reads as "the CPU
    of its reaped children" (other databases' parallel workers would count too; rare here).
    """
    if database.kind != "postgresql":
        return []

    async def run() -> list[int]:
        assert database.admin_url is not None
        conn = await asyncpg.connect(database.admin_url)
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1", database.name
            )
            return [int(row["pid"]) for row in rows]
        finally:
            await conn.close()

    backends = asyncio.run(run())
    parents = {_parent(pid) for pid in backends} - {None}
    return backends + [-pid for pid in parents if pid is not None]


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


class CpuMeter:
    """CPU used during a run: by the given processes, and by the whole machine."""

    def __init__(self) -> None:
        self._start: dict[int, float] = {}
        self._busy = 0

    def start(self, pids: Sequence[int]) -> None:
        """Start counting; a negative pid stands for the reaped children of that process."""
        self._start = {pid: _cpu_or_zero(pid) for pid in pids}
        self._busy = busy_jiffies()[0]

    def stop(self, pids: Sequence[int]) -> tuple[dict[int, float], float]:
        """CPU seconds per live process (pids first seen now count from zero), machine busy."""
        machine = (busy_jiffies()[0] - self._busy) / CLOCK_TICKS
        used = {}
        for pid in pids:
            with contextlib.suppress(OSError):  # a process that is gone is left out
                used[pid] = _process_cpu(pid) - self._start.get(pid, 0.0)
        return used, machine

    def started_cpu(self, pid: int) -> float:
        return self._start.get(pid, 0.0)


def _cpu_or_zero(pid: int) -> float:
    try:
        return _process_cpu(pid)
    except OSError:  # already gone
        return 0.0


def _process_cpu(pid: int) -> float:
    """A process's CPU seconds; for a negative pid, those of the process's reaped children."""
    if pid >= 0:
        return cpu_seconds(pid)
    with open(f"/proc/{-pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / CLOCK_TICKS


def others_share(machine_cpu: float, ours: float, wall: float) -> float:
    """The share of the machine's CPUs that other work used during a run of `wall` seconds."""
    return max(0.0, machine_cpu - ours) / (wall * (os.cpu_count() or 1))


# --- the sync queue ----------------------------------------------------------------------------

POLL_SECONDS = 0.25
ACTIVE = "('Selected', 'Queued', 'Processing')"


async def queue_summary(database: Database, crm: str) -> dict[str, Any]:
    """Status counts of `crm`'s rows, and the run's first claim and last completion."""
    engine = database.engine()
    where = {"crm": crm}
    try:
        async with engine.connect() as conn:
            counts = dict(
                (
                    await conn.execute(
                        text(
                            "SELECT sync_status, count(*) FROM crm_sync_state "
                            "WHERE crm = :crm GROUP BY sync_status"
                        ),
                        where,
                    )
                ).all()
            )
            # A claim stamps last_attempt_at and success leaves it: its minimum is the first
            # claim. synced_at is stamped when a result is recorded: its maximum is the end.
            first, last = (
                await conn.execute(
                    text(
                        "SELECT min(last_attempt_at), max(synced_at) FROM crm_sync_state "
                        "WHERE crm = :crm"
                    ),
                    where,
                )
            ).one()
    finally:
        await engine.dispose()
    return {"counts": counts, "first_claim": first, "last_synced": last}


async def wait_drained(
    database: Database, crm: str, processes: Sequence[Process], limit: float
) -> None:
    """Until no row of `crm` is Selected, Queued or Processing (Error rows end the wait too).

    Polled a few times a second with a cheap count (the queue's partial index); the run's exact
    end comes from `queue_summary`, so the polling interval does not blur the figures.
    """
    engine = database.engine()
    query = text(
        f"SELECT count(*) FROM crm_sync_state WHERE crm = :crm AND sync_status IN {ACTIVE}"
    )
    try:
        async with asyncio.timeout(limit):
            while True:
                async with engine.connect() as conn:
                    if (await conn.execute(query, {"crm": crm})).scalar_one() == 0:
                        return
                for process in processes:
                    process.check_alive()
                await asyncio.sleep(POLL_SECONDS)
    finally:
        await engine.dispose()


def check_run(
    sb: Any, crm: str, summary: dict[str, Any], contacts: int, *, limited: bool = False
) -> dict[str, Any]:
    """Every row Complete and exactly `contacts` contacts at the fake; its statistics.

    Without rate limits (`limited` False) a 429 is a failure too; any 5xx always is.
    """
    stats: dict[str, Any] = sb.stats()[crm]
    complete = summary["counts"].get("Complete", 0)
    problems = []
    if complete != contacts:
        problems.append(f"{complete} of {contacts} rows Complete: {summary['counts']}")
    if stats["contacts_stored"] != contacts:
        problems.append(f"sandbox holds {stats['contacts_stored']} contacts, not {contacts}")
    if (stats["429"] and not limited) or stats["5xx"]:
        problems.append(f"sandbox answered 429 x{stats['429']}, 5xx x{stats['5xx']}")
    if problems:
        raise RuntimeError(f"{crm} run failed its checks: " + "; ".join(problems))
    return stats


# --- profiles ----------------------------------------------------------------------------------
# `--py-spy PATH` on a benchmark samples the measured crmsync processes during each timed run
# (py-spy from its own venv, never a project dependency) and writes collapsed stacks, one file
# per process, plus a summary of where the samples fell. For diagnosis only: sampling costs CPU,
# so figures from a profiled run are not the ones to quote.


class Profiler:
    """py-spy `record` attached to some processes for the duration of a `with` block."""

    def __init__(self, py_spy: str | None, directory: Path, label: str, pids: dict[str, int]):
        self.py_spy = py_spy
        self.directory = directory
        self.label = label
        self.pids = pids
        self._recorders: list[tuple[subprocess.Popen[bytes], Path]] = []
        self._threads: dict[str, dict[str, float]] = {}

    def __enter__(self) -> Profiler:
        if not self.py_spy:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        self._threads = {name: thread_cpu(pid) for name, pid in self.pids.items()}
        for name, pid in self.pids.items():
            path = self.directory / f"{self.label}-{name}.collapsed.txt"
            command = [self.py_spy, "record", "--pid", str(pid), "--format", "raw"]
            command += ["--rate", "250", "--nonblocking", "--threads", "--output", str(path)]
            recorder = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            self._recorders.append((recorder, path))
        time.sleep(0.5)  # let py-spy attach before the timed work starts
        return self

    def __exit__(self, *_exc: object) -> None:
        for name, pid in self.pids.items() if self.py_spy else ():
            # Exact CPU per thread (from /proc): which thread is the bottleneck, if any.
            before = self._threads.get(name, {})
            used = {t: cpu - before.get(t, 0.0) for t, cpu in thread_cpu(pid).items()}
            busy = ", ".join(f"{t} {cpu:.2f} s" for t, cpu in sorted(used.items()) if cpu > 0.05)
            print(f"    {self.label} {name} CPU by thread: {busy}", flush=True)
        for recorder, path in self._recorders:
            recorder.send_signal(signal.SIGINT)
            try:
                recorder.wait(30)
            except subprocess.TimeoutExpired:
                recorder.kill()
            if path.exists():
                summary = summarize_collapsed(path)
                path.with_suffix("").with_suffix(".summary.txt").write_text(summary)
                print(f"    profile {path.name}:\n{summary}", flush=True)


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of a process, keyed "name/tid", from /proc/<pid>/task."""
    found: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                found[f"{name}/{task.name}"] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return found


def summarize_collapsed(path: Path, top: int = 20) -> str:
    """Where py-spy's samples fell, per thread group: functions by inclusive and self share.

    Lines are merged per function (line numbers dropped). Thread groups: the main thread (the
    event loop), executor threads (asyncio.to_thread; uvloop names them uvloop_N) and others.
    Samples of a thread blocked in Python-level waiting (e.g. an idle executor thread in
    `queue.get`) may still be counted; the per-thread CPU line printed beside is exact.
    """
    groups: dict[str, dict[str, dict[str, int]]] = {}
    totals: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        if not frames:
            continue
        group = _thread_group(thread)
        stats = groups.setdefault(group, {"inclusive": {}, "self": {}})
        totals[group] = totals.get(group, 0) + count
        names = [_short_frame(f) for f in frames]
        for name in set(names):
            stats["inclusive"][name] = stats["inclusive"].get(name, 0) + count
        stats["self"][names[-1]] = stats["self"].get(names[-1], 0) + count
    out = []
    for group, stats in sorted(groups.items(), key=lambda kv: -totals[kv[0]]):
        total = totals[group]
        out.append(f"      [{group}] {total} samples")
        for kind in ("inclusive", "self"):
            ranked = sorted(stats[kind].items(), key=lambda kv: -kv[1])
            shown = [(n, c) for n, c in ranked if kind == "self" or "crmsync/" in n][:top]
            out.append(f"        {kind}:")
            out += [f"        {100 * c / total:5.1f}%  {n}" for n, c in shown]
    return "\n".join(out) if out else "      (no samples)"


def _thread_group(thread: str) -> str:
    if "MainThread" in thread:
        return "main thread (event loop)"
    if "uvloop_" in thread or "asyncio_" in thread:
        return "executor threads (to_thread)"
    return thread.split(": ", 1)[-1]


def _short_frame(frame: str) -> str:
    """`func (path/to/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py)`."""
    head, _, tail = frame.partition(" (")
    where = tail.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/src/", "/lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{head} ({where})" if where else head
