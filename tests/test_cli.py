"""The `crmsync` command line: token, db upgrade, help and configuration errors."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

CLI = [sys.executable, "-m", "crmsync.cli"]


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BREVO", "JWT", "DATABASE"))}
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


def test_token_prints_only_a_token_signed_with_the_generated_secret(tmp_path: Path) -> None:
    result = run(["token", "--sub", "alice", "--ttl", "10m"], tmp_path)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout.count("\n") == 1 and " " not in token
    secret_file = tmp_path / ".crmsync" / "secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert "generated a JWT secret" in result.stderr
    claims = jwt.decode(
        token, secret_file.read_text().strip(), algorithms=["HS256"], audience="authenticated"
    )
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 600
    again = run(["token"], tmp_path)
    assert "generated" not in again.stderr  # the same secret is reused


def test_token_uses_jwt_secret_key_when_set(tmp_path: Path) -> None:
    secret = "s" * 64
    result = run(["token"], tmp_path, JWT_SECRET_KEY=secret)
    jwt.decode(result.stdout.strip(), secret, algorithms=["HS256"], audience="authenticated")
    assert not (tmp_path / ".crmsync").exists()


def test_bad_ttl_and_bad_settings_are_clear_errors(tmp_path: Path) -> None:
    result = run(["token", "--ttl", "soon"], tmp_path)
    assert result.returncode == 2 and "TTL" in result.stderr
    result = run(["db", "upgrade"], tmp_path, BREVO_LIST_ID="newsletter")
    assert result.returncode == 2
    assert "BREVO_LIST_ID must be the numeric id" in result.stderr
    assert "Traceback" not in result.stderr


def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    result = run(["db", "upgrade"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "crmsync.db").exists()
    import sqlite3

    with sqlite3.connect(tmp_path / "crmsync.db") as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"contacts", "crm_sync_state", "sync_events", "alembic_version"} <= tables


@pytest.mark.parametrize("command", [[], ["serve"], ["token"], ["db", "upgrade"]])
def test_help(tmp_path: Path, command: list[str]) -> None:
    result = run([*command, "--help"], tmp_path)
    assert result.returncode == 0 and "Usage" in result.stdout
