"""`crmsync worker`, `serve --no-worker`, `sandbox` and `hubspot ensure-properties` as processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

import httpx

from crmsync.sandbox import SandboxConfig, SandboxServer
from tests.test_cli import CLI, run


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BREVO", "HUBSPOT", "MAUTIC", "N8N", "JWT", "DATABASE"))
    }
    return {**clean, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'c.db'}", **extra}


def _read_until(stream: IO[str], needle: str, timeout: float) -> str:
    """Read a child's output until `needle` appears (it is then ready for signals)."""
    deadline = time.monotonic() + timeout
    seen = ""
    while needle not in seen:
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not seen within {timeout}s:\n{seen}")
        line = stream.readline()
        if not line:
            raise AssertionError(f"process ended before {needle!r}:\n{seen}")
        seen += line
    return seen


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_worker_refuses_an_outdated_schema(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CLI, "worker"], env=_env(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "crmsync db upgrade" in result.stderr and "Traceback" not in result.stderr


def test_worker_runs_and_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    env = _env(tmp_path, HUBSPOT_ACCESS_TOKEN="t", HUBSPOT_API_BASE_URL="http://127.0.0.1:9")
    assert (
        run(["db", "upgrade"], tmp_path, **{k: env[k] for k in ("DATABASE_URL",)}).returncode == 0
    )
    proc = subprocess.Popen(
        [*CLI, "worker", "--crm", "hubspot"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        seen = _read_until(proc.stderr, "started for hubspot", timeout=60)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, seen + err
    assert "stopped" in err


def test_worker_rejects_an_unknown_crm(tmp_path: Path) -> None:
    result = run(["worker", "--crm", "zoho"], tmp_path)
    assert result.returncode == 2 and "zoho" in result.stderr


def test_serve_without_worker_answers_health(tmp_path: Path) -> None:
    port = _free_port()
    env = _env(tmp_path)
    proc = subprocess.Popen(
        [*CLI, "serve", "--port", str(port), "--no-worker"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(100):
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError("serve did not come up")
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert "generated a random secret" in err
    assert "started for" not in err  # --no-worker: no sync worker in this process


def test_sandbox_rejects_bad_fault_specs(tmp_path: Path) -> None:
    result = run(["sandbox", "--faults", "hubspot:nonsense=1"], tmp_path)
    assert result.returncode == 2 and "nonsense" in result.stderr


def test_hubspot_ensure_properties_against_the_sandbox(tmp_path: Path) -> None:
    with SandboxServer(SandboxConfig()) as sandbox:
        env = {
            "HUBSPOT_ACCESS_TOKEN": SandboxConfig().hubspot_access_token,
            "HUBSPOT_API_BASE_URL": sandbox.hubspot_url,
        }
        first = run(["hubspot", "ensure-properties"], tmp_path, **env)
        assert first.returncode == 0, first.stderr
        assert first.stdout.count("created") == 5 and "scrapersky_domain_id" in first.stdout
        second = run(["hubspot", "ensure-properties"], tmp_path, **env)
        assert "created" not in second.stdout and second.stdout.count("exists") == 5
        wrong = run(
            ["hubspot", "ensure-properties"], tmp_path, **{**env, "HUBSPOT_ACCESS_TOKEN": "nope"}
        )
        assert wrong.returncode == 1 and "refused" in wrong.stderr and "nope" not in wrong.stderr
    missing = run(["hubspot", "ensure-properties"], tmp_path)
    assert missing.returncode == 2 and "HUBSPOT_ACCESS_TOKEN" in missing.stderr


def test_serve_no_migrate_refuses_an_outdated_schema(tmp_path: Path) -> None:
    result = run(["serve", "--no-migrate", "--port", str(_free_port())], tmp_path)
    assert result.returncode == 2
    assert "the database schema is at nothing" in result.stderr
    assert "run `crmsync db upgrade` first" in result.stderr and "Traceback" not in result.stderr
