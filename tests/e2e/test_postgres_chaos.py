"""PostgreSQL going away under a running worker (issue 23): its backends terminated mid-run
(`pg_terminate_backend`), then the whole server restarted. The worker reconnects and finishes:
every row Complete, nothing left Processing or leased, exactly one record per email at each fake.

The restart is of a private cluster this test creates (initdb and pg_ctl from
/usr/lib/postgresql/*/bin, in a temporary directory, on a free port, run as the `postgres` user
when the test runs as root), never of the machine's server. Without those binaries, or without a
way to run them as a non-root user, the test is skipped and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from crmsync import db
from crmsync.api.app import create_app
from crmsync.migrate import upgrade
from crmsync.sandbox import SandboxConfig, SandboxServer
from tests.conftest import SECRET
from tests.e2e.support import (
    Processes,
    create_contacts,
    e2e_env,
    errors_sample,
    realistic_contacts,
    select_all,
    settings_from_env,
    state_rows,
    status_counts,
    wait_registered,
    wait_until,
)

COUNT = 3_000
CRMS = ("hubspot", "n8n")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """A throwaway PostgreSQL cluster: initdb, start, restart, stop; as `postgres` under root."""

    def __init__(self, bindir: Path, root: Path, user: str | None) -> None:
        self.bindir = bindir
        self.data = root / "data"
        self.log = root / "server.log"
        self.port = _free_port()
        self.user = user
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, timeout=timeout, capture_output=True)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def _options(self) -> str:
        # Its own port, no Unix socket (nothing else is touched), quick to stop.
        return (
            f"-p {self.port} -c listen_addresses=127.0.0.1"
            " -c unix_socket_directories='' -c fsync=off"
        )

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            self._options(),
            "-w",
            "start",
        )

    def restart(self) -> None:
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self._options(),
            "-m", "fast", "-w", "restart",
        )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    bindir = Path(found[-1]).parent
    user: str | None = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run initdb as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root and runuser is missing")
        user = "postgres"
    root = Path(tempfile.mkdtemp(prefix="crmsync-pgchaos-"))
    if user is not None:
        shutil.chown(root, user)
    made = Cluster(bindir, root, user)
    try:
        made.init()
        made.start()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        made.stop()
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"could not start a private PostgreSQL cluster: {exc}")
    try:
        yield made
    finally:
        made.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_worker_finishes_through_terminated_backends_and_a_server_restart(
    cluster: Cluster,
    auth: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    processes: Processes,
) -> None:
    started = time.monotonic()
    url = db.normalise_url(cluster.url).render_as_string(hide_password=False)
    engine = db.create_engine(url)
    await upgrade(engine)
    config = SandboxConfig(no_rate_limits=True, custom_fields=True, faults={
        crm: {"latency_ms": 20.0} for crm in CRMS  # batches in flight when the server goes
    })  # fmt: skip
    try:
        async with SandboxServer(config, subprocess=True) as sandbox:
            env = e2e_env(
                sandbox.env(),
                url,
                CRMSYNC_LEASE_SECONDS="3",
                HUBSPOT_SYNC_SCHEDULER_BATCH_SIZE="50",
                N8N_SYNC_SCHEDULER_BATCH_SIZE="50",
                HUBSPOT_SYNC_MAX_RETRIES="30",
                N8N_SYNC_MAX_RETRIES="30",
            )
            settings = settings_from_env(env, monkeypatch, tmp_path)
            app = create_app(settings, SECRET, engine=engine)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://e2e", headers=auth
            ) as api:
                await create_contacts(api, realistic_contacts(COUNT))
                worker = processes.worker("worker", env, *CRMS)
                await wait_registered(engine, worker, within=60)
                await select_all(api, CRMS)
            total = COUNT * len(CRMS)

            async def complete_at_least(goal: int) -> bool:
                if worker.proc.poll() is not None:
                    pytest.fail(f"the worker exited:\n{worker.output()[-3000:]}")
                try:
                    counts = await status_counts(engine)
                except Exception:  # the server is restarting: look again
                    return False
                if any(status == "Error" for _, status in counts):
                    pytest.fail(f"rows ended in Error: {await errors_sample(engine)}")
                return sum(n for (_, s), n in counts.items() if s == "Complete") >= goal

            await wait_until(lambda: complete_at_least(total // 5), 120, "a fifth done", 0.1)
            async with engine.connect() as conn:
                terminated = (
                    await conn.execute(
                        text(
                            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))"
                            " FROM pg_stat_activity"
                            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                    )
                ).scalar_one()
            assert terminated > 0
            await wait_until(lambda: complete_at_least(total // 2), 120, "half done", 0.1)
            await engine.dispose()  # the test's own pool would only hold dead connections
            await asyncio.to_thread(cluster.restart)
            restarted_at = time.monotonic()
            await wait_until(lambda: complete_at_least(total), 240, "every row Complete", 0.5)
            recovered = time.monotonic() - restarted_at
            assert worker.proc.poll() is None, "the worker must survive, not be restarted"
            assert worker.terminate(timeout=60) == 0, worker.output()[-3000:]
            rows = await state_rows(engine)
            assert len(rows) == total
            assert all(r.sync_status == "Complete" and r.lease_token is None for r in rows)
            for crm in CRMS:
                stored = sandbox.contacts(crm)
                assert len(stored) == len({c["email"].lower() for c in stored}) == COUNT, crm
            log = worker.output()
            assert "connection" in log.lower(), "the worker says it lost the database"
    finally:
        await engine.dispose()
    elapsed = time.monotonic() - started
    print(
        f"\n{COUNT:,} contacts x {len(CRMS)} CRMs: {terminated} backends terminated, server "
        f"restarted; all Complete {recovered:.1f} s after the restart, {elapsed:.0f} s in all"
    )
