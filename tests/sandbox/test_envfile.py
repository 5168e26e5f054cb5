"""`crmsync sandbox --write-env FILE`: the printed settings, merged into a .env file safely."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from dotenv import dotenv_values
from tests.test_cli import run

from crmsync.sandbox import SandboxConfig, sandbox_env
from crmsync.sandbox.envfile import EnvConflict, write_env
from crmsync.sandbox.server import describe
from crmsync.settings import Settings

BASE = "http://127.0.0.1:8900"


def _values() -> dict[str, str]:
    return sandbox_env(BASE, SandboxConfig())


def test_a_new_file_holds_exactly_the_printed_lines(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    written = write_env(path, _values())
    assert written.added == list(_values()) and not written.replaced
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    printed = describe(BASE, SandboxConfig()).splitlines()
    assert lines == [line for line in printed if line.split("=")[0] in _values()]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_crmsync_reads_the_file_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_env(tmp_path / ".env", _values())
    monkeypatch.chdir(tmp_path)
    for key in _values():
        monkeypatch.delenv(key, raising=False)
    settings = Settings()
    assert settings.brevo.api_base_url == f"{BASE}/brevo/v3"
    assert settings.hubspot.missing() is None and settings.mautic.missing() is None
    assert settings.n8n.webhook_url == f"{BASE}/n8n/webhook/crmsync"


def test_an_existing_file_keeps_its_other_lines(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text(
        "# mine\nDATABASE_URL=sqlite+aiosqlite:///./prod.db\nBREVO_API_KEY=sandbox-brevo-key"
    )
    path.chmod(0o640)
    written = write_env(path, _values())
    assert written.unchanged == ["BREVO_API_KEY"] and not written.replaced
    text = path.read_text()
    assert text.startswith("# mine\nDATABASE_URL=sqlite+aiosqlite:///./prod.db\n")
    assert dotenv_values(path) == {"DATABASE_URL": "sqlite+aiosqlite:///./prod.db", **_values()}
    assert text.count("BREVO_API_KEY") == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    # Written again: nothing to do.
    assert write_env(path, _values()).unchanged == list(_values())
    assert path.read_text() == text


def test_a_setting_with_another_value_is_replaced_only_with_force(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    before = "BREVO_API_KEY=xkeysib-real\nHUBSPOT_ACCESS_TOKEN=pat-real\nOTHER=1\n"
    path.write_text(before)
    with pytest.raises(EnvConflict) as refused:
        write_env(path, _values())
    assert refused.value.keys == ["BREVO_API_KEY", "HUBSPOT_ACCESS_TOKEN"]
    assert "xkeysib-real" not in str(refused.value)  # names, never the values
    assert path.read_text() == before  # nothing was written
    assert [p.name for p in tmp_path.iterdir()] == [".env"]  # and no draft left behind
    written = write_env(path, _values(), force=True)
    assert written.replaced == ["BREVO_API_KEY", "HUBSPOT_ACCESS_TOKEN"]
    assert dotenv_values(path) == {"OTHER": "1", **_values()}


def test_values_that_need_quotes_are_quoted(tmp_path: Path) -> None:
    values = {"N8N_AUTH_HEADER_VALUE": "Bearer it's #1", "N8N_AUTH_HEADER_NAME": "X-Key"}
    write_env(tmp_path / ".env", values)
    assert dotenv_values(tmp_path / ".env") == values


def test_the_command_writes_the_file_and_refuses_a_conflict(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("BREVO_API_KEY=xkeysib-real\n")
    result = run(["sandbox", "--port", "1", "--write-env", ".env"], tmp_path)
    assert result.returncode == 1
    assert "BREVO_API_KEY" in result.stderr and "--force" in result.stderr
    assert "xkeysib-real" not in result.stderr + result.stdout
    assert (tmp_path / ".env").read_text() == "BREVO_API_KEY=xkeysib-real\n"
