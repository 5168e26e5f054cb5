"""deploy/compose.yaml runs: images built by deploy/container/build.sh, PostgreSQL, the
migration step, the API and two workers, syncing contacts to the sandbox (run as a service).

Opt-in (`CRMSYNC_TEST_CONTAINERS=1`): it builds images (minutes, and Debian's package mirror
for the base image) and needs podman and podman-compose as root.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from crmsync.auth import mint_token
from crmsync.sandbox import SandboxConfig, SandboxServer
from crmsync.sandbox.server import sandbox_env

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ["podman-compose", "-p", "crmsynctest", "-f", "deploy/compose.yaml",
           "-f", "tests/e2e/containers/sandbox.yaml"]  # fmt: skip
CONTACTS = 300

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def _unavailable() -> str | None:
    if os.environ.get("CRMSYNC_TEST_CONTAINERS") != "1":
        return "container test: set CRMSYNC_TEST_CONTAINERS=1 to build and run the images"
    for tool in ("podman", "podman-compose", "debootstrap"):
        if shutil.which(tool) is None:
            return f"container test: {tool} is not installed"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def stack() -> Iterator[tuple[str, str, str]]:
    """The compose project up; (API URL, sandbox URL, JWT secret). Torn down with its volume."""
    if (reason := _unavailable()) is not None:
        pytest.skip(reason)
    subprocess.run(["deploy/container/build.sh"], cwd=ROOT, check=True, timeout=1500)
    secret = secrets.token_urlsafe(48)
    api_port, sandbox_port = _free_port(), _free_port()
    sandbox = sandbox_env("http://sandbox:8900", SandboxConfig())
    env = {
        **os.environ,
        **sandbox,
        "BREVO_LIST_ID": "7",
        "JWT_SECRET_KEY": secret,
        "CRMSYNC_PORT": str(api_port),
        "CRMSYNC_SANDBOX_PORT": str(sandbox_port),
    }
    up = subprocess.run([*COMPOSE, "up", "-d"], cwd=ROOT, env=env, capture_output=True, text=True)
    try:
        assert up.returncode == 0, up.stderr[-2000:]
        yield f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{sandbox_port}", secret
    finally:
        logs = subprocess.run(
            ["podman", "logs", "crmsynctest_worker1_1"], capture_output=True, text=True
        )
        print(logs.stdout[-3000:], logs.stderr[-3000:])
        subprocess.run([*COMPOSE, "down", "-v"], cwd=ROOT, env=env, capture_output=True)


def _wait(url: str, within: float) -> httpx.Response:
    deadline = time.monotonic() + within
    while True:
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer 200 within {within} s"
        time.sleep(0.5)


def test_the_compose_stack_migrates_serves_and_syncs(stack: tuple[str, str, str]) -> None:
    api, sandbox_url, secret = stack
    assert _wait(f"{api}/readyz", 180).json()["status"] == "ready"
    auth = {"Authorization": f"Bearer {mint_token(secret, 'test', dt.timedelta(hours=1))}"}
    rows = [{"email": f"lead{i}@example.com", "name": f"Lead {i}"} for i in range(CONTACTS)]
    created = httpx.post(f"{api}/api/v3/contacts/bulk", json={"contacts": rows}, headers=auth)
    assert created.status_code == 200 and created.json()["created_count"] == CONTACTS
    selected = httpx.put(
        f"{api}/api/v3/contacts/crm/select/filtered",
        json={"all": True, "crms": ["brevo", "hubspot", "mautic", "n8n"]},
        headers=auth,
    )
    assert selected.status_code == 200 and selected.json()["queued_count"] == 4 * CONTACTS
    control = SandboxServer(
        SandboxConfig(), host="127.0.0.1", port=int(sandbox_url.rsplit(":", 1)[1])
    )
    deadline = time.monotonic() + 180
    while True:
        summary = httpx.get(f"{api}/api/v3/crm/status/summary", headers=auth).json()
        stored = {crm: len(control.contacts(crm)) for crm in ("brevo", "hubspot", "mautic", "n8n")}
        if all(n == CONTACTS for n in stored.values()):
            break
        assert time.monotonic() < deadline, (stored, summary)
        time.sleep(1)
    health = httpx.get(f"{api}/api/v3/crm/health", headers=auth).json()
    assert len(health["workers"]) == 2, health  # the two worker containers, alive
    assert all(crm["enabled"] for crm in health["crms"].values()), health
    assert summary
    control.stop()
