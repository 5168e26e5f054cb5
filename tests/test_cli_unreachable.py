"""A database that cannot be used: `serve`, `worker` and `db upgrade` (and the commands that read
it) print one line naming it, password redacted, and exit 1 with no traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.test_cli import run

PASSWORD = "s3cr3t-pw-do-not-print"


def _closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


COMMANDS = [
    ["serve", "--port", "1"],  # the port is never opened: the database check comes first
    ["worker"],
    ["worker", "--until-empty"],
    ["db", "upgrade"],
    ["db", "current"],
    ["status"],
    ["status", "--watch"],
    ["failed"],
    ["select", "--crm", "n8n", "--all"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_unreachable_postgresql(tmp_path: Path, command: list[str]) -> None:
    port = _closed_port()
    url = f"postgresql://crmsync:{PASSWORD}@127.0.0.1:{port}/crmsync"
    result = run(command, tmp_path, DATABASE_URL=url)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"the database postgresql://crmsync:***@127.0.0.1:{port}/crmsync could not" in lines[0]
    assert PASSWORD not in result.stderr + result.stdout
    assert not (tmp_path / ".crmsync").exists()  # serve failed before making a secret


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_unwritable_sqlite_path(tmp_path: Path, command: list[str]) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    path = blocker / "crmsync.db"  # under a regular file: nobody can create it, root neither
    result = run(command, tmp_path, DATABASE_URL=f"sqlite+aiosqlite:///{path}")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"the database sqlite+aiosqlite:///{path} could not be used" in lines[0]
    assert "unable to open database file" in lines[0]


def test_a_url_that_is_not_one_is_a_usage_error_without_echoing_it(tmp_path: Path) -> None:
    result = run(["db", "upgrade"], tmp_path, DATABASE_URL=f"postgres//u:{PASSWORD}@host/db")
    assert result.returncode == 2
    assert "DATABASE_URL is not a database URL" in result.stderr
    assert PASSWORD not in result.stderr and "Traceback" not in result.stderr
