"""What the end-to-end tests share: realistic contacts, the environment that points crmsync at a
sandbox, `crmsync worker` subprocesses, polling, and queries of the queue and its history."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

# The generator lives in the product (the demo seeds with it); re-exported for the tests.
from crmsync.demo.contacts import PLACEHOLDERS as PLACEHOLDERS
from crmsync.demo.contacts import realistic_contacts as realistic_contacts
from crmsync.settings import Settings
from crmsync.tables import contacts, crm_sync_state, sync_events, workers
from tests.conftest import SECRET

CRMS = ("brevo", "hubspot", "mautic", "n8n")
SELECT_ALL = "/api/v3/contacts/crm/select/filtered"
# Environment a test must not inherit: it would point the workers somewhere else.
_FOREIGN_ENV = ("BREVO", "HUBSPOT", "MAUTIC", "N8N", "JWT", "DATABASE", "CRMSYNC_", "SMTP")


async def create_contacts(client: httpx.AsyncClient, rows: list[dict[str, Any]]) -> None:
    """Create the contacts through the bulk API (10,000 per request, its maximum)."""
    for start in range(0, len(rows), 10_000):
        part = rows[start : start + 10_000]
        r = await client.post("/api/v3/contacts/bulk", json={"contacts": part}, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["created_count"] == len(part), r.json()


async def select_all(client: httpx.AsyncClient, crms: Iterable[str]) -> dict[str, Any]:
    names = list(crms)
    r = await client.put(SELECT_ALL, json={"all": True, "crms": names}, timeout=120)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert "not configured" not in body["message"], body
    return body


# --- environment ----------------------------------------------------------------------------


def e2e_env(sandbox_env: dict[str, str], database_url: str, **extra: str) -> dict[str, str]:
    """Settings (as environment variables) for workers against a sandbox without rate limits.

    Pacing off; idle polls every 0.2 s (selections on SQLite reach subprocess workers by polling,
    and retries come due within a fraction of a second); Brevo imports need a list and are
    polled every 0.1 s.
    """
    env = {
        **sandbox_env,
        "DATABASE_URL": database_url,
        "JWT_SECRET_KEY": SECRET,
        "CRMSYNC_LOG_LEVEL": "INFO",
        "BREVO_LIST_ID": "7",
        "BREVO_RATE_LIMIT_PER_SECOND": "0",
        "BREVO_IMPORT_POLL_SECONDS": "0.1",
        "HUBSPOT_RATE_LIMIT_PER_SECOND": "0",
    }
    for crm in CRMS:
        env[f"{crm.upper()}_SYNC_SCHEDULER_INTERVAL_SECONDS"] = "0.2"
    env.update(extra)
    return env


def settings_from_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, cwd: Path) -> Settings:
    """The `Settings` a worker process started with `env` would read (no `.env` file)."""
    with monkeypatch.context() as patch:
        patch.chdir(cwd)  # every settings class also reads ./.env: make sure there is none
        for key in list(os.environ):
            if key.startswith(_FOREIGN_ENV):
                patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        return Settings()


def process_env(env: dict[str, str]) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV)}
    return {**clean, **env}


# --- worker processes -----------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """A `crmsync worker` subprocess; its output goes to a file (a full pipe would block it)."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    worker_id: str | None = None
    exit_seconds: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def terminate(self, timeout: float) -> int:
        """SIGTERM, then wait for the exit; the exit code (the wait is timed)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            pytest.fail(f"{self.name} did not exit within {timeout} s of SIGTERM:\n{self.output()}")
        self.exit_seconds = time.monotonic() - started
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class Processes:
    """Every subprocess a test started; whatever still runs is killed at teardown."""

    tmp_path: Path
    started: list[WorkerProcess] = field(default_factory=list)

    def worker(self, name: str, env: dict[str, str], *crms: str) -> WorkerProcess:
        log = self.tmp_path / f"{name}.log"
        args = [sys.executable, "-m", "crmsync.cli", "worker"]
        for crm in crms:
            args += ["--crm", crm]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args, cwd=self.tmp_path, env=process_env(env), stdout=out, stderr=out
            )
        started = WorkerProcess(name, proc, log)
        self.started.append(started)
        return started

    def kill_all(self) -> None:
        for worker in self.started:
            worker.kill()


async def wait_registered(engine: AsyncEngine, *procs: WorkerProcess, within: float = 30) -> None:
    """Wait until each process registered its worker row; sets `worker_id` (host:pid:suffix)."""

    async def registered() -> bool:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(workers.c.id, workers.c.pid).where(workers.c.stopped_at.is_(None))
                )
            ).all()
        by_pid = {row.pid: row.id for row in rows}
        for proc in procs:
            if proc.proc.poll() is not None:
                pytest.fail(f"{proc.name} exited with {proc.proc.returncode}:\n{proc.output()}")
            proc.worker_id = by_pid.get(proc.pid)
        return all(proc.worker_id for proc in procs)

    await wait_until(registered, within, "the worker processes to start")


# --- polling and queries --------------------------------------------------------------------


async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    within: float,
    what: str,
    interval: float = 0.1,
    describe: Callable[[], Awaitable[str]] | None = None,
) -> float:
    """Poll `condition` until it holds; fail after `within` s. Returns the seconds it took."""
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > within:
            state = f"\n{await describe()}" if describe is not None else ""
            pytest.fail(f"timed out after {within} s waiting for {what}{state}")
        await asyncio.sleep(interval)
    return time.monotonic() - started


async def status_counts(engine: AsyncEngine) -> Counter[tuple[str, str]]:
    """(crm, sync_status) -> number of rows."""
    s = crm_sync_state.c
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(s.crm, s.sync_status, func.count()).group_by(s.crm, s.sync_status)
        )
        return Counter({(crm, status): n for crm, status, n in rows})


async def errors_sample(engine: AsyncEngine, limit: int = 5) -> list[tuple[str, str, str]]:
    """A few rows in Error: (crm, email, message), for failure messages."""
    s = crm_sync_state.c
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(s.crm, contacts.c.email, s.processing_error)
            .join(contacts, contacts.c.id == s.contact_id)
            .where(s.sync_status == "Error")
            .limit(limit)
        )
        return [(r.crm, r.email, r.processing_error) for r in rows]


@dataclass(frozen=True)
class StateRow:
    crm: str
    contact_id: uuid.UUID
    email: str  # lower-cased, as every fake keys its contacts
    sync_status: str
    attempts: int
    external_id: str | None
    lease_owner: str | None
    lease_token: str | None
    lease_expires_at: dt.datetime | None


async def state_rows(engine: AsyncEngine, crm: str | None = None) -> list[StateRow]:
    s = crm_sync_state.c
    query = select(
        s.crm,
        s.contact_id,
        contacts.c.email,
        s.sync_status,
        s.attempts,
        s.external_id,
        s.lease_owner,
        s.lease_token,
        s.lease_expires_at,
    ).join(contacts, contacts.c.id == s.contact_id)
    if crm is not None:
        query = query.where(s.crm == crm)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [
        StateRow(
            r.crm,
            r.contact_id,
            r.email.lower(),
            r.sync_status,
            r.attempts,
            r.external_id,
            r.lease_owner,
            r.lease_token,
            r.lease_expires_at,
        )
        for r in rows
    ]


@dataclass(frozen=True)
class EventRow:
    crm: str
    email: str
    outcome: str
    worker: str | None
    message: str | None
    created_at: dt.datetime


async def event_rows(engine: AsyncEngine) -> list[EventRow]:
    e = sync_events.c
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(e.crm, contacts.c.email, e.outcome, e.worker, e.message, e.created_at)
                .join(contacts, contacts.c.id == e.contact_id)
                .order_by(e.id)
            )
        ).all()
    return [
        EventRow(r.crm, r.email.lower(), r.outcome, r.worker, r.message, r.created_at) for r in rows
    ]
