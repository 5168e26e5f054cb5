"""`crmsync worker --until-empty` as cron and CI run it: a real process against the sandbox, on
SQLite and PostgreSQL, with its exit codes (0 all Complete, 1 some in Error, 3 not done, 2 bad
use) and what it prints."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.sandbox import SandboxServer
from tests.conftest import SECRET, add_contacts
from tests.e2e.support import process_env
from tests.ops.conftest import add_bad_contacts, select_for, state_rows

CLI = [sys.executable, "-m", "crmsync.cli"]


def _env(sb: SandboxServer, db_url: str, **extra: str) -> dict[str, str]:
    env = {
        **sb.env(),
        "DATABASE_URL": db_url,
        "JWT_SECRET_KEY": SECRET,
        "BREVO_RATE_LIMIT_PER_SECOND": "0",
        "HUBSPOT_RATE_LIMIT_PER_SECOND": "0",
    }
    for crm in ("BREVO", "HUBSPOT", "MAUTIC", "N8N"):
        env[f"{crm}_SYNC_MAX_RETRIES"] = "0"
        env[f"{crm}_SYNC_SCHEDULER_INTERVAL_SECONDS"] = "0.05"
    env.update(extra)
    return process_env(env)


async def crmsync(
    env: dict[str, str], tmp_path: Path, *args: str, within: float = 90
) -> subprocess.CompletedProcess[str]:
    """Run `crmsync ARGS` to its end (the test fails if it does not end within `within` s)."""
    return await asyncio.to_thread(
        subprocess.run,
        [*CLI, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=within,
    )


async def until_empty(
    env: dict[str, str], tmp_path: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = await crmsync(env, tmp_path, "worker", "--until-empty", *args)
    return result, time.monotonic() - started


async def statuses(engine: AsyncEngine, crm: str) -> Counter[str]:
    return Counter(r["sync_status"] for r in await state_rows(engine) if r["crm"] == crm)


async def test_exit_0_when_every_selected_contact_is_complete(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    sb: SandboxServer,
    db_url: str,
    tmp_path: Path,
) -> None:
    ids = await add_contacts(client, 30)
    await select_for(client, "hubspot", ids)
    await select_for(client, "n8n", ids[:10])
    result, _ = await until_empty(_env(sb, db_url), tmp_path, "--timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    assert await statuses(engine, "hubspot") == {"Complete": 30}
    assert await statuses(engine, "n8n") == {"Complete": 10}
    assert len(sb.contacts("hubspot")) == 30 and len(sb.contacts("n8n")) >= 1
    # Plain progress lines (stderr is not a terminal), then the summary on stdout.
    assert "hubspot: 30 done, 0 left" in result.stderr
    assert "hubspot: 30 Complete, 0 in Error, 0 not done" in result.stdout
    assert "every selected contact is Complete" in result.stdout
    assert "mautic" not in result.stdout  # nothing selected there: not shown

    again, _ = await until_empty(_env(sb, db_url), tmp_path)
    assert again.returncode == 0 and "nothing to push" in again.stdout
    assert "Traceback" not in again.stderr


async def test_exit_1_when_some_ended_in_error(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    sb: SandboxServer,
    db_url: str,
    tmp_path: Path,
) -> None:
    good = await add_contacts(client, 8)
    bad = await add_bad_contacts(client, 2)  # the vendor refuses these emails
    await select_for(client, "hubspot", good + bad)
    result, _ = await until_empty(_env(sb, db_url), tmp_path, "--timeout", "60")
    assert result.returncode == 1, result.stdout + result.stderr
    assert await statuses(engine, "hubspot") == {"Complete": 8, "Error": 2}
    assert "hubspot: 8 Complete, 2 in Error, 0 not done" in result.stdout
    assert "`crmsync failed --crm hubspot`" in result.stdout


async def test_exit_3_on_timeout_while_retries_wait(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    sb: SandboxServer,
    db_url: str,
    tmp_path: Path,
) -> None:
    """Rows waiting for a retry backoff are not done: they are waited for until the timeout."""
    ids = await add_contacts(client, 4)
    sb.set_faults("mautic", error_rate=1.0, faults_on="writes")  # the field check still passes
    await select_for(client, "mautic", ids)
    env = _env(sb, db_url, MAUTIC_SYNC_MAX_RETRIES="3", MAUTIC_SYNC_RETRY_DELAY_SECONDS="600")
    result, took = await until_empty(env, tmp_path, "--timeout", "3")
    assert result.returncode == 3, result.stdout + result.stderr
    assert took >= 3  # it waited for the retries until the timeout, not less
    assert "timed out after 3 s: 4 contact(s) not done yet" in result.stdout
    # When they would be tried again: the backoff from their first attempt, about 600 s on.
    waiting = next(line for line in result.stdout.splitlines() if line.startswith("mautic: 4 w"))
    assert waiting.startswith("mautic: 4 waiting for a retry (next at ")
    next_at = dt.datetime.strptime(waiting[-9:-1], "%H:%M:%S").time()
    now = dt.datetime.now().astimezone()
    later = (now + dt.timedelta(seconds=400)).time(), (now + dt.timedelta(seconds=800)).time()
    assert later[0] <= next_at <= later[1] or later[0] > later[1]  # (around midnight: skip)
    assert "4 waiting for a retry" in result.stderr  # the progress said so too
    assert await statuses(engine, "mautic") == {"Queued": 4}  # left for the next run


async def test_exit_3_at_once_for_a_paused_crm_after_the_others_drain(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    sb: SandboxServer,
    db_url: str,
    tmp_path: Path,
) -> None:
    ids = await add_contacts(client, 5)
    env = _env(sb, db_url)
    paused = await crmsync(env, tmp_path, "pause", "--crm", "n8n")
    assert paused.returncode == 0, paused.stderr
    await select_for(client, "n8n", ids)
    await select_for(client, "hubspot", ids)
    result, _ = await until_empty(env, tmp_path)  # no timeout: it must not wait for n8n forever
    assert result.returncode == 3, result.stdout + result.stderr
    assert "n8n: 5 contact(s) wait: paused by an operator" in result.stdout
    assert "crmsync resume --crm n8n" in result.stdout
    assert await statuses(engine, "hubspot") == {"Complete": 5}
    assert await statuses(engine, "n8n") == {"Selected": 5}


async def test_an_unconfigured_crm_is_reported_not_waited_for(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    sb: SandboxServer,
    db_url: str,
    tmp_path: Path,
) -> None:
    ids = await add_contacts(client, 3)
    await select_for(client, "brevo", ids)
    await select_for(client, "n8n", ids)
    env = {k: v for k, v in _env(sb, db_url).items() if not k.startswith("BREVO_API")}
    result, _ = await until_empty(env, tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "brevo: 3 contact(s) wait: not configured (BREVO_API_KEY is not set)" in result.stdout
    assert await statuses(engine, "n8n") == {"Complete": 3}

    explicit, _ = await until_empty(env, tmp_path, "--crm", "brevo")
    assert explicit.returncode == 2
    assert "not configured: brevo: BREVO_API_KEY is not set" in explicit.stderr


async def test_refused_credentials_end_the_run_with_the_reason(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    sb: SandboxServer,
    db_url: str,
    tmp_path: Path,
) -> None:
    ids = await add_contacts(client, 3)
    await select_for(client, "hubspot", ids)
    wrong = "pat-na1-wrong-token-0123456789"
    env = _env(sb, db_url, HUBSPOT_ACCESS_TOKEN=wrong)
    result, took = await until_empty(env, tmp_path, "--timeout", "60")
    assert result.returncode == 3, result.stdout + result.stderr
    assert took < 30  # the auth pause (300 s) is not waited for
    assert "hubspot: 3 contact(s) wait: paused: the vendor refused our credentials" in (
        result.stdout
    )
    assert wrong not in result.stdout + result.stderr
    # Refused at the worker's first vendor call, its field check: nothing was claimed.
    assert await statuses(engine, "hubspot") == {"Selected": 3}


async def test_usage_errors_exit_2(tmp_path: Path) -> None:
    timeout_alone = await crmsync(process_env({}), tmp_path, "worker", "--timeout", "5")
    assert timeout_alone.returncode == 2 and "--timeout needs --until-empty" in (
        timeout_alone.stderr
    )
    zero, _ = await until_empty(process_env({}), tmp_path, "--timeout", "0")
    assert zero.returncode == 2


@pytest.mark.parametrize("option", ["--until-empty", "--timeout"])
def test_worker_help_explains_until_empty(option: str) -> None:
    from typer.testing import CliRunner

    from crmsync import cli

    result = CliRunner().invoke(cli.app, ["worker", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and option in result.stdout
    assert "waiting for a retry" in result.stdout and "crmsync worker --until-empty" in (
        result.stdout
    )


async def test_progress_bars_on_a_terminal(
    client: httpx.AsyncClient, sb: SandboxServer, db_url: str, tmp_path: Path
) -> None:
    ids = await add_contacts(client, 6)
    await select_for(client, "n8n", ids)
    # Rich treats the pipe as an interactive terminal: what a person's terminal would receive.
    env = _env(sb, db_url, TTY_COMPATIBLE="1", TTY_INTERACTIVE="1", COLUMNS="100")
    result, _ = await until_empty(env, tmp_path, "--timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.count("\x1b[2K") >= 2  # the bar line is erased and redrawn
    assert "6/6" in result.stderr and "n8n" in result.stderr
    assert "n8n: 6 done" not in result.stderr  # no plain lines on a terminal


def _interrupt_once(env: dict[str, str], tmp_path: Path, needle: str) -> tuple[int, str, str]:
    """Start `worker --until-empty`, wait for `needle` on stderr, then SIGINT it (Ctrl-C)."""
    proc = subprocess.Popen(
        [*CLI, "worker", "--until-empty"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        seen = ""
        deadline = time.monotonic() + 60
        while needle not in seen and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen += line
        assert needle in seen, seen
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        return proc.returncode, out, seen + err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()  # closes the pipes, whatever happened above


async def test_ctrl_c_exits_130_and_leaves_the_rest_queued(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    sb: SandboxServer,
    db_url: str,
    tmp_path: Path,
) -> None:
    ids = await add_contacts(client, 2)
    sb.set_faults("mautic", error_rate=1.0, faults_on="writes")  # the field check still passes
    await select_for(client, "mautic", ids)
    env = _env(sb, db_url, MAUTIC_SYNC_MAX_RETRIES="3", MAUTIC_SYNC_RETRY_DELAY_SECONDS="600")
    code, out, err = await asyncio.to_thread(
        _interrupt_once, env, tmp_path, "2 waiting for a retry"
    )
    assert code == 130, out + err
    assert "interrupted after" in out and "2 contact(s) stay queued" in out
    assert "Traceback" not in err
    assert await statuses(engine, "mautic") == {"Queued": 2}
