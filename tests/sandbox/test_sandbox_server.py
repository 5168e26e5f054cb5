"""Running the sandbox: subprocess and async SandboxServer, the CLI entry point and banner."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from crmsync.sandbox import SandboxConfig, SandboxServer, sandbox_env
from crmsync.sandbox.__main__ import main
from crmsync.sandbox.server import describe


def test_subprocess_variant_serves_and_stops() -> None:
    config = SandboxConfig(no_rate_limits=True, faults={"hubspot": {"latency_ms": 1}})
    with SandboxServer(config, subprocess=True) as sb:
        assert sb.pid != os.getpid()
        r = httpx.post(
            f"{sb.hubspot_url}/crm/v3/objects/contacts/batch/upsert",
            json={"inputs": [{"id": "a@example.com", "idProperty": "email", "properties": {}}]},
            headers=sb.auth_headers("hubspot"),
        )
        assert r.status_code == 200
        assert sb.faults("hubspot")["latency_ms"] == 1.0  # the config reached the child
        assert sb.faults("hubspot")["rate_limit_per_10s"] == 0
        assert [c["email"] for c in sb.contacts("hubspot")] == ["a@example.com"]
        process = sb._process
        assert process is not None
    assert process.poll() is not None
    with pytest.raises(RuntimeError, match="only available"):
        _ = sb.sandbox


async def test_async_context_manager() -> None:
    async with SandboxServer() as sb, httpx.AsyncClient() as client:
        r = await client.get(f"{sb.control_url}/health")
        assert r.json() == {"status": "ok"}
        assert sb.sandbox.hubspot.options.rate_limit_per_10s == 100


def test_env_points_at_every_fake() -> None:
    env = sandbox_env("http://127.0.0.1:8900", SandboxConfig())
    assert env == {
        "BREVO_API_BASE_URL": "http://127.0.0.1:8900/brevo/v3",
        "BREVO_API_KEY": "sandbox-brevo-key",
        "HUBSPOT_API_BASE_URL": "http://127.0.0.1:8900/hubspot",
        "HUBSPOT_ACCESS_TOKEN": "pat-na1-sandbox-token",
        "MAUTIC_BASE_URL": "http://127.0.0.1:8900/mautic",
        "MAUTIC_USERNAME": "sandbox",
        "MAUTIC_PASSWORD": "sandbox-pass",
        "N8N_WEBHOOK_URL": "http://127.0.0.1:8900/n8n/webhook/crmsync",
        "N8N_WEBHOOK_SECRET": "sandbox-n8n-secret",
    }
    banner = describe("http://127.0.0.1:8900", SandboxConfig(faults={"brevo": {"burst_429": 2}}))
    assert "BREVO_API_KEY=sandbox-brevo-key" in banner
    assert "brevo: burst_429=2" in banner


def test_cli_rejects_bad_fault_spec(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--faults", "hubspot:error_rate=9"])
    assert info.value.code == 2
    assert "hubspot option 'error_rate' must be <= 1.0" in capsys.readouterr().err


def test_python_m_sandbox_prints_banner_and_serves() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "crmsync.sandbox",
        "--port",
        str(port),
        "--faults",
        "n8n:response_mode=lastNode",
        "--no-rate-limits",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line.rstrip())
            if line.startswith("N8N_WEBHOOK_SECRET="):
                break
        assert f"BREVO_API_BASE_URL=http://127.0.0.1:{port}/brevo/v3" in lines
        assert "  n8n: response_mode=lastNode" in lines
        deadline = time.monotonic() + 15
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/_sandbox/n8n/faults", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "sandbox did not come up"
                time.sleep(0.05)
        assert r.json()["response_mode"] == "lastNode"
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught.
    assert process.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in stderr
