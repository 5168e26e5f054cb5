"""`crmsync config show`: each setting's value and source (default, environment, .env), with
every secret redacted."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.e2e.support import process_env
from tests.test_cli import CLI

SECRETS = ("xkeysib-brevo-secret", "pat-hubspot-secret", "dbpass-secret", "abc-secret-path")


def _show(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "config", "show", *args],
        cwd=tmp_path,
        env=process_env({"COLUMNS": "200", **env}),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _write_env_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "BREVO_API_KEY=xkeysib-brevo-secret\n"
        "BREVO_LIST_ID=9\n"
        "N8N_WEBHOOK_URL=https://n8n.example.com:5678/webhook/abc-secret-path\n"
        "DATABASE_URL=postgresql://crm:dbpass-secret@db.example.com/crm\n"
    )


def test_sources_and_redaction(tmp_path: Path) -> None:
    _write_env_file(tmp_path)
    result = _show(
        tmp_path,
        "--json",
        HUBSPOT_API_KEY="pat-hubspot-secret",  # the customer's alias of HUBSPOT_ACCESS_TOKEN
        BREVO_LIST_ID="7",  # the environment wins over .env
        CRMSYNC_LOG_LEVEL="DEBUG",
    )
    assert result.returncode == 0, result.stderr
    rows = {row["setting"]: row for row in json.loads(result.stdout)}
    assert rows["BREVO_API_KEY"] == {
        "setting": "BREVO_API_KEY",
        "value": "********",
        "source": ".env",
    }
    assert rows["HUBSPOT_API_KEY"]["value"] == "********"
    assert rows["HUBSPOT_API_KEY"]["source"] == "environment"
    assert (
        rows["BREVO_LIST_ID"]["value"] == "7" and rows["BREVO_LIST_ID"]["source"] == "environment"
    )
    assert rows["DATABASE_URL"]["value"] == "postgresql://crm:***@db.example.com/crm"
    assert rows["DATABASE_URL"]["source"] == ".env"
    assert rows["N8N_WEBHOOK_URL"]["value"] == "https://n8n.example.com:5678/********"
    assert rows["CRMSYNC_LOG_LEVEL"] == {
        "setting": "CRMSYNC_LOG_LEVEL",
        "value": "DEBUG",
        "source": "environment",
    }
    assert rows["CRMSYNC_LEASE_SECONDS"]["source"] == "default"
    assert rows["JWT_SECRET_KEY"]["value"] == "(not set)"
    assert rows["MAUTIC_PASSWORD"]["value"] == "(not set)"
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr


def test_table_and_only_set(tmp_path: Path) -> None:
    _write_env_file(tmp_path)
    table = _show(tmp_path, JWT_SECRET_KEY="jwt-secret-value-123-long-enough-to-sign")
    assert table.returncode == 0, table.stderr
    assert f".env file: {tmp_path / '.env'}" in table.stdout
    assert "token secret: JWT_SECRET_KEY" in table.stdout
    line = next(line for line in table.stdout.splitlines() if "BREVO_LIST_ID" in line)
    assert line.split() == ["BREVO_LIST_ID", "9", ".env"]
    for secret in (*SECRETS, "jwt-secret-value-123-long-enough-to-sign"):
        assert secret not in table.stdout

    only = _show(tmp_path, "--only-set", "--json")
    settings = {row["setting"] for row in json.loads(only.stdout)}
    assert settings == {"BREVO_API_KEY", "BREVO_LIST_ID", "N8N_WEBHOOK_URL", "DATABASE_URL"}


def test_without_env_file_or_secret(tmp_path: Path) -> None:
    result = _show(tmp_path)
    assert result.returncode == 0, result.stderr
    assert f".env file: {tmp_path / '.env'} (none)" in result.stdout
    assert "token secret: none yet (`crmsync serve` generates one in" in result.stdout
    bad = _show(tmp_path, BREVO_LIST_ID="newsletter")
    assert bad.returncode == 2 and "BREVO_LIST_ID must be the numeric id" in bad.stderr
