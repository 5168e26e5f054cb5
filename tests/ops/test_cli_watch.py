"""`crmsync status --watch`: refreshes until Ctrl-C, which exits 0; in place on a terminal."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import add_contacts
from tests.e2e.support import process_env
from tests.test_cli_runtime import _read_until

CLI = [sys.executable, "-m", "crmsync.cli"]
HEADER = "refreshed every 0.2 s; Ctrl-C stops"


@pytest.fixture
def watch(db_url: str, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [*CLI, "status", "--watch", "--interval", "0.2"],
        cwd=tmp_path,
        env=process_env({"DATABASE_URL": db_url, "COLUMNS": "120"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.communicate(timeout=30)


async def test_watch_refreshes_until_ctrl_c(
    client: httpx.AsyncClient, watch: subprocess.Popen[str]
) -> None:
    assert watch.stdout is not None
    first = await asyncio.to_thread(_read_until, watch.stdout, "(0 contacts)", 60)
    assert HEADER in first and "Sync health" in first
    await add_contacts(client, 3)
    # Not a terminal: each refresh is printed below the last, with the new counts.
    later = await asyncio.to_thread(_read_until, watch.stdout, "(3 contacts)", 60)
    assert HEADER in later
    watch.send_signal(signal.SIGINT)
    _, err = await asyncio.to_thread(watch.communicate, timeout=30)
    assert watch.returncode == 0, err
    assert "Traceback" not in err


def test_watch_redraws_in_place_on_a_terminal(db_url: str, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*CLI, "status", "--watch", "--interval", "0.2"],
        cwd=tmp_path,
        # Rich treats the pipe as a terminal: what a person's terminal would receive.
        env=process_env(
            {
                "DATABASE_URL": db_url,
                "TTY_COMPATIBLE": "1",
                "TTY_INTERACTIVE": "1",
                "COLUMNS": "120",
            }
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = _read_until(proc.stdout, HEADER, 60)
        seen += _read_until(proc.stdout, HEADER, 60)  # a second frame
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    # The second frame moves the cursor up over the first and overwrites it.
    assert "\x1b[1A" in seen + rest and "\x1b[2K" in seen + rest


def test_watch_and_json_do_not_mix(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CLI, "status", "--watch", "--json"],
        cwd=tmp_path,
        env=process_env({}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "--watch" in result.stderr
