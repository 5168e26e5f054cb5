"""The deployment files in deploy/ stay true: systemd accepts the units, their commands parse,
and the environment file names only real settings."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from crmsync.cli import app
from crmsync.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
ENV_FILE = DEPLOY / "crmsync.env.example"
INSTALLED = "/opt/crmsync/.venv/bin/crmsync"


def _exec_start(unit: Path) -> list[str]:
    line = next(ln for ln in unit.read_text().splitlines() if ln.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart=").replace("%i", "1"))


def _setting_names() -> set[str]:
    """Every environment variable name Settings reads (top level and per CRM)."""
    names: set[str] = set()

    def collect(model: type, prefix: str) -> None:
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, Settings.__mro__[1]):
                collect(annotation, annotation.model_config.get("env_prefix", ""))
                continue
            alias = field.validation_alias
            choices = getattr(alias, "choices", None) or ([alias] if alias else [])
            names.update(str(choice).upper() for choice in choices)
            if not choices:
                names.add((prefix + name).upper())

    collect(Settings, "")
    return names


def test_there_is_a_unit_for_migrations_the_api_and_workers() -> None:
    assert {u.name for u in UNITS} == {
        "crmsync-migrate.service",
        "crmsync-api.service",
        "crmsync-worker@.service",
    }


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_each_unit_runs_a_crmsync_command_that_parses(unit: Path) -> None:
    argv = _exec_start(unit)
    assert argv[0] == INSTALLED
    command = typer.main.get_command(app)
    args = argv[1:]
    while hasattr(command, "commands"):  # `db upgrade` is a command of a group
        name, *args = args
        assert name in command.commands, f"{unit.name}: no command {name!r}"
        command = command.commands[name]
    command.make_context(command.name or "", list(args))  # raises on an unknown option


def test_the_environment_file_names_only_real_settings() -> None:
    known = _setting_names()
    used = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_FILE.read_text(), re.MULTILINE))
    assert {"DATABASE_URL", "JWT_SECRET_KEY", "BREVO_API_KEY"} <= used
    assert used <= known, f"not settings: {sorted(used - known)}"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_accepts_every_unit(tmp_path: Path) -> None:
    """`systemd-analyze verify` on copies pointing at this checkout's crmsync and env file."""
    crmsync = Path(sys.executable).with_name("crmsync")
    names = []
    for unit in UNITS:
        text = unit.read_text().replace(INSTALLED, str(crmsync))
        text = text.replace("/etc/crmsync/crmsync.env", str(ENV_FILE))
        name = unit.name.replace("@.", "@1.")
        (tmp_path / name).write_text(text)
        names.append(f"./{name}")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *names],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
