"""`crmsync import` and `crmsync export`: output, files written, exit codes (0 read, 1 a file
or database problem, 2 usage), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner, Result

from crmsync import cli
from crmsync.settings import Settings
from crmsync.tables import contacts, crm_sync_state

FILES = Path(__file__).parent / "files"
RunCli = Callable[..., Awaitable[Result]]


@pytest.fixture
def run_cli(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> RunCli:
    """`crmsync ...` in a thread (its commands call asyncio.run), with the test's settings."""
    monkeypatch.setattr(cli.common, "load_settings", lambda: settings)

    async def invoke(*args: str, input: bytes | str | None = None) -> Result:
        return await asyncio.to_thread(CliRunner().invoke, cli.app, list(args), input=input)

    return invoke


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "files"
    shutil.copytree(FILES, work)
    return work


def figures(stdout: str) -> dict[str, int]:
    """The summary's counts: {"created": 3, ...} from its "  created   3" lines."""
    found = {}
    for line in stdout.splitlines()[1:]:
        label, value = line.split()[:2]
        found[label] = int(value.replace(",", ""))
    return found


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def leftovers(directory: Path, pattern: str) -> list[Path]:
    return list(directory.glob(pattern))


async def contact_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(contacts))).scalar_one())


async def test_import_prints_a_summary_and_writes_rejects_next_to_the_file(
    run_cli: RunCli, workdir: Path, engine: AsyncEngine
) -> None:
    source = workdir / "bad_rows.csv"
    result = await run_cli("import", str(source))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"{source}: 10 rows read (UTF-8, comma-separated)"
    assert figures(result.stdout) == {
        "created": 3,
        "updated": 0,
        "unchanged": 0,
        "duplicates": 0,
        "rejected": 7,
    }
    rejects = Path(f"{source}.rejected.csv")
    assert lines[5].endswith(f"-> {rejects}")
    assert read(rejects).startswith("rejected_line,rejected_reason,email,name")
    assert len(read(rejects).splitlines()) == 8
    assert await contact_count(engine) == 3


async def test_a_clean_import_leaves_no_rejects_file_and_reports_columns(
    run_cli: RunCli, workdir: Path
) -> None:
    source = workdir / "utf8_bom_semicolon.csv"
    result = await run_cli("import", str(source), "--rejects", str(workdir / "out.csv"))
    assert result.exit_code == 0, result.output
    assert "(UTF-8 with BOM, semicolon-separated)" in result.stdout
    assert "columns: E-mail -> email, Full Name -> name, Phone Number -> phone_number" in (
        result.stderr
    )
    assert leftovers(workdir, "*out.csv*") == []  # nor a temporary file
    again = await run_cli("import", str(source), "--json")
    summary = json.loads(again.stdout)
    assert (summary["created"], summary["updated"], summary["unchanged"]) == (0, 0, 2)
    assert summary["rejects_file"] is None


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["no_email_column.csv"], 1, "no email column: the file's columns are 'Name', 'Phone'"),
        (["empty.csv"], 1, "the file is empty"),
        (["missing.csv"], 1, "cannot read"),
        (["utf8_comma.csv", "--map", "Nope=email"], 1, "--map 'Nope': no such column"),
        (["utf8_comma.csv", "--select", "brevo,zoho"], 2, "Invalid CRM names: ['zoho']"),
        (["utf8_comma.csv", "--map", "name=colour"], 2, "unknown contact field 'colour'"),
        (["utf8_comma.csv", "--map", "noequals"], 2, "expected COLUMN=field"),
        (["utf8_comma.csv", "--delimiter", "ab"], 2, "one character"),
        (["utf8_comma.csv", "--format", "xml"], 2, "xml"),
    ],
)
async def test_import_exit_codes(
    run_cli: RunCli,
    workdir: Path,
    engine: AsyncEngine,
    args: list[str],
    code: int,
    message: str,
) -> None:
    result = await run_cli("import", str(workdir / args[0]), *args[1:])
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert await contact_count(engine) == 0


async def test_import_dry_run_and_select(
    run_cli: RunCli, workdir: Path, engine: AsyncEngine
) -> None:
    source = str(workdir / "cp1252_semicolon.csv")
    dry = await run_cli("import", source, "--dry-run", "--select", "brevo,hubspot")
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.startswith("dry run, nothing written: ")
    assert figures(dry.stdout)["selected"] == 2 and "(4 queued)" in dry.stdout
    assert await contact_count(engine) == 0
    real = await run_cli("import", source, "--select", "brevo,hubspot")
    assert "(Windows-1252, semicolon-separated)" in real.stdout
    assert figures(real.stdout)["created"] == 2
    async with engine.connect() as conn:
        states = (
            await conn.execute(select(crm_sync_state.c.crm, crm_sync_state.c.sync_status))
        ).all()
    assert sorted(states) == [("brevo", "Selected")] * 2 + [("hubspot", "Selected")] * 2


async def test_import_reads_stdin_and_json_lines_by_extension(
    run_cli: RunCli, workdir: Path, engine: AsyncEngine
) -> None:
    result = await run_cli(
        "import", "-", "--rejects", str(workdir / "r.csv"), input=b"email\nin@example.com\n"
    )
    assert result.exit_code == 0, result.output
    assert figures(result.stdout)["created"] == 1
    result = await run_cli("import", str(workdir / "contacts.jsonl"), "--json")
    summary = json.loads(result.stdout)
    assert (summary["format"], summary["created"], summary["rejected"]) == ("jsonl", 2, 3)
    assert summary["rejects_file"] == f"{workdir / 'contacts.jsonl'}.rejected.csv"


async def test_export_to_a_file_and_back_changes_nothing(
    run_cli: RunCli, workdir: Path, engine: AsyncEngine
) -> None:
    await run_cli("import", str(workdir / "utf8_comma.csv"), "--select", "n8n")
    target = workdir / "export.csv"
    result = await run_cli("export", "-o", str(target))
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().endswith(f"exported 2 contact(s) to {target}")
    assert read(target).startswith("email,email_type,has_gmail,")
    back = await run_cli("import", str(target))
    assert figures(back.stdout) == {
        "created": 0,
        "updated": 0,
        "unchanged": 2,
        "duplicates": 0,
        "rejected": 0,
    }


async def test_export_filters_and_formats(run_cli: RunCli, workdir: Path) -> None:
    await run_cli("import", str(workdir / "utf8_comma.csv"), "--select", "brevo")
    await run_cli(
        "import", "-", "--rejects", str(workdir / "r.csv"), input=b"email\nx@example.com\n"
    )
    selected = await run_cli("export", "--format", "jsonl", "--brevo-status", "selected")
    assert selected.exit_code == 0, selected.output
    emails = sorted(json.loads(line)["email"] for line in selected.stdout.splitlines())
    assert emails == ["jose@example.com", "zoe@example.org"]
    free = await run_cli("export", "--email-type", "FREE", "--email-contains", "ZOE")
    assert [line.split(",")[0] for line in free.stdout.splitlines()] == ["email", "zoe@example.org"]
    bad = await run_cli("export", "--brevo-status", "Done")
    assert bad.exit_code == 2 and "--brevo-status" in bad.stderr
    failed = await run_cli("export", "-o", str(workdir / "no-such-dir" / "out.csv"))
    assert failed.exit_code == 1 and "cannot write" in failed.stderr


@pytest.mark.parametrize("command", ["import", "export"])
async def test_help_shows_an_example(run_cli: RunCli, command: str) -> None:
    result = await run_cli(command, "--help")
    assert result.exit_code == 0
    assert f"Example: crmsync {command}" in result.stdout


def test_export_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    """`crmsync export | head` : the reader leaving is not a database error (SQLite file)."""
    from tests.test_cli import CLI, run

    rows = "".join(f"user{i}@example.com,User {i}\n" for i in range(5_000))
    (tmp_path / "many.csv").write_text("email,name\n" + rows)
    assert run(["db", "upgrade"], tmp_path).returncode == 0
    imported = run(["import", "many.csv"], tmp_path)
    assert imported.returncode == 0, imported.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE", "JWT"))}
    export = subprocess.Popen(
        [*CLI, "export"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert export.stdout is not None
    first = export.stdout.readline()
    export.stdout.close()  # what `head -1` does once it has its line
    _, stderr = export.communicate(timeout=60)
    assert first.startswith(b"email,email_type,")
    assert export.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr and b"database" not in stderr
