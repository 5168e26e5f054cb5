"""What the browser tests share: Debian's Chromium (never a downloaded browser), and a real
`crmsync serve` subprocess on a free port, pointed at a sandbox.

Without /usr/bin/chromium the browser tests skip with that reason, unless
`CRMSYNC_REQUIRE_BROWSER=1` (CI sets it), where a missing browser is a failure.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from sqlalchemy import text

from crmsync import db
from crmsync.auth import mint_token
from tests.conftest import SECRET, TABLES
from tests.e2e.support import process_env

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def require_browser() -> None:
    """Skip (or, with CRMSYNC_REQUIRE_BROWSER=1, fail) when Debian's Chromium is missing."""
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is not installed (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "the playwright package is not installed (pip install -e '.[test]')"
    if missing is None:
        return
    if os.environ.get("CRMSYNC_REQUIRE_BROWSER") == "1":
        pytest.fail(f"CRMSYNC_REQUIRE_BROWSER=1 but {missing}")
    pytest.skip(f"browser tests: {missing}")


def launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def empty_database(url: str) -> None:
    """PostgreSQL test databases are shared by a session's tests: empty it first."""

    async def truncate() -> None:
        engine = db.create_engine(url)
        try:
            if engine.dialect.name == "postgresql":
                async with engine.begin() as conn:
                    await conn.execute(
                        text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
                    )
        finally:
            await engine.dispose()

    asyncio.run(truncate())


@dataclass
class Served:
    """A running `crmsync serve`, with a bearer-token API client and a sign-in link."""

    url: str
    api: httpx.Client
    token: str
    log: Path

    @property
    def sign_in_link(self) -> str:
        return f"{self.url}/login#token={self.token}"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextmanager
def serve(env: dict[str, str], workdir: Path, *args: str) -> Iterator[Served]:
    """`crmsync serve` (with its worker) on a free port; stopped with SIGTERM on the way out."""
    port = free_port()
    log = workdir / "serve.log"
    env = {**env, "JWT_SECRET_KEY": SECRET, "CRMSYNC_STATE_DIR": str(workdir / ".crmsync")}
    command = [sys.executable, "-m", "crmsync.cli", "serve", "--port", str(port), *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=workdir, env=process_env(env), stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    token = mint_token(SECRET, "dashboard-e2e", dt.timedelta(hours=1))
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    served = Served(url, api, token, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"crmsync serve exited with {proc.returncode}:\n{served.output()}")
            try:
                if api.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"crmsync serve did not answer within 60 s:\n{served.output()}")
            time.sleep(0.1)
        yield served
    finally:
        api.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
