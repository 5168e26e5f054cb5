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


def test_token_without_a_secret_says_where_it_looked_and_creates_none(tmp_path: Path) -> None:
    result = run(["token"], tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert "JWT_SECRET_KEY is not set" in result.stderr
    assert str(tmp_path / ".crmsync" / "secret") in result.stderr
    assert "crmsync serve" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / ".crmsync").exists()  # only serve and demo create the secret


def test_token_is_signed_with_the_secret_serve_generated(tmp_path: Path) -> None:
    from crmsync import auth
    from crmsync.settings import Settings

    settings = Settings(state_dir=tmp_path / ".crmsync", _env_file=None)  # type: ignore[call-arg]
    secret, created = auth.ensure_secret(settings)  # what `serve` does on its first start
    assert created is not None
    result = run(["token", "--sub", "alice", "--ttl", "10m"], tmp_path)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout.count("\n") == 1 and " " not in token
    assert stat.S_IMODE(created.stat().st_mode) == 0o600
    claims = jwt.decode(token, secret, algorithms=["HS256"], audience="authenticated")
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 600


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


@pytest.mark.parametrize(
    ("command", "example"),
    [
        (["select"], "crmsync select --crm brevo,hubspot"),
        (["failed"], "| crmsync retry --crm hubspot --ids -"),
        (["worker"], "crmsync worker --until-empty --timeout 600"),
        (["status"], "crmsync status --watch"),
        (["config", "show"], "crmsync config show --only-set"),
        (["db", "current"], "crmsync db current"),
        (["db", "downgrade"], "crmsync db downgrade 0004"),
        (["db", "upgrade"], "crmsync db upgrade"),
        (["token"], "TOKEN=$(crmsync token"),
        (["serve"], "crmsync serve --print-token"),
        (["retry"], "crmsync retry --crm hubspot --all-failed"),
        (["reset"], "crmsync reset --crm hubspot --from Complete --to Selected --yes"),
        (["pause"], "crmsync pause --crm brevo"),
        (["resume"], "crmsync resume --crm brevo"),
    ],
)
def test_help_shows_an_example(command: list[str], example: str) -> None:
    from typer.testing import CliRunner

    from crmsync import cli

    result = CliRunner().invoke(cli.app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert example in result.stdout


def test_help_groups_the_commands() -> None:
    from typer.testing import CliRunner

    from crmsync import cli

    out = CliRunner().invoke(cli.app, ["--help"], env={"COLUMNS": "120"}).stdout
    for panel in ("Run", "Contacts", "Operate", "Set up"):
        assert f"─ {panel} ─" in out
