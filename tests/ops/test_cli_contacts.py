"""`crmsync select` (the same counts and validation as the selection API) and `crmsync failed`
(every format, and its ids piped into `crmsync retry --ids -`), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import Result

from crmsync.cli.failures import safe_cell
from crmsync.tables import contacts, crm_sync_state
from tests.conftest import add_contacts
from tests.ops.conftest import SELECT, World, state_rows

RunCli = Callable[..., Awaitable[Result]]
CLI = [sys.executable, "-m", "crmsync.cli"]


async def _segment(client: httpx.AsyncClient) -> dict[str, list[str]]:
    """12 contacts: 4 FREE with gmail, 4 CORPORATE, 4 without a type."""
    return {
        "free": await add_contacts(client, 4, email_type="FREE", has_gmail=True),
        "corporate": await add_contacts(client, 4, email_type="CORPORATE", has_gmail=False),
        "untyped": await add_contacts(client, 4),
    }


def _states(rows: list[dict[str, Any]], crm: str) -> dict[str, str]:
    return {str(r["contact_id"]): r["sync_status"] for r in rows if r["crm"] == crm}


async def test_select_matches_the_api_for_every_mode(
    client: httpx.AsyncClient, engine: AsyncEngine, run_cli: RunCli, tmp_path: Path
) -> None:
    """Each CLI call, then the same request to the API on the same data: the same answer."""
    seg = await _segment(client)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(seg["untyped"][:3]) + "\n")
    cases: list[tuple[list[str], str, dict[str, Any]]] = [
        (
            ["--crm", "brevo,hubspot", "--email-type", "free"],
            SELECT + "/filtered",
            {"crms": ["brevo", "hubspot"], "email_type": "FREE"},
        ),
        (
            ["--crm", "n8n", "--ids", str(ids_file)],
            SELECT,
            {"crms": ["n8n"], "contact_ids": seg["untyped"][:3]},
        ),
        (
            ["--crm", "mautic", "--crm", "n8n", "--no-gmail", "--force"],
            SELECT + "/filtered",
            {"crms": ["mautic", "n8n"], "has_gmail": False, "force": True},
        ),
        (["--crm", "mautic", "--all"], SELECT + "/filtered", {"crms": ["mautic"], "all": True}),
        (
            ["--crm", "hubspot", "--brevo-status", "selected"],
            SELECT + "/filtered",
            {"crms": ["hubspot"], "brevo_sync_status": "Selected"},
        ),
        (
            ["--crm", "mautic", "--unselect", "--email-contains", "USER1"],
            SELECT + "/filtered",
            {"crms": ["mautic"], "action": "unselect", "email_contains": "USER1"},
        ),
    ]
    for args, path, body in cases:
        cli = await run_cli("select", *args, "--json")
        assert cli.exit_code == 0, cli.output
        api = await client.put(path, json=body)
        assert api.status_code == 200, api.text
        assert json.loads(cli.stdout) == api.json(), args

    rows = await state_rows(engine)
    assert set(_states(rows, "brevo")) == set(seg["free"])
    assert set(_states(rows, "hubspot").values()) == {"Selected"}
    assert set(_states(rows, "n8n")) == set(seg["untyped"][:3] + seg["corporate"])
    mautic = _states(rows, "mautic")
    assert len(mautic) == 12  # --all
    unselected = {cid for cid, status in mautic.items() if status == "New"}
    assert unselected and all(
        status == "Selected" for c, status in mautic.items() if c not in unselected
    )
    forced = [r for r in rows if r["crm"] == "mautic" and r["synced_hash"] is not None]
    assert not forced


async def test_select_prints_the_api_message_and_reads_ids_from_stdin(
    client: httpx.AsyncClient, engine: AsyncEngine, run_cli: RunCli
) -> None:
    ids = await add_contacts(client, 3)
    stray = str(uuid.uuid4())
    result = await run_cli(
        "select", "--crm", "hubspot", "--ids", "-", input="\n".join([*ids, stray]) + "\n"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "Selected 3 contacts for 1 CRM(s), 3 queued for processing\n"
    assert "1 listed id(s) are not contacts" in result.stderr
    assert set(_states(await state_rows(engine), "hubspot").values()) == {"Selected"}

    back = await run_cli("select", "--crm", "hubspot", "--unselect", "--all")
    assert back.exit_code == 0 and back.stdout == "Unselected 3 contacts for 1 CRM(s)\n"
    assert set(_states(await state_rows(engine), "hubspot").values()) == {"New"}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--crm", "brevo"], 2, "give one of --ids FILE, --all, or filter options"),
        (["--crm", "brevo", "--all", "--email-type", "FREE"], 2, "--all means every contact"),
        (["--crm", "brevo", "--all", "--ids", "-"], 2, "give one of"),
        (["--crm", "brevo,zoho", "--all"], 2, "Invalid CRM names: ['zoho']"),
        (["--crm", "brevo", "--all", "--unselect", "--force"], 2, "--force applies to selecting"),
        (["--crm", "brevo", "--email-type", "PERSONAL"], 2, "PERSONAL"),
        (["--crm", "brevo", "--email-contains", ""], 2, "at least 1 character"),
        (["--crm", "brevo", "--ids", "-"], 2, "line 1: 'nope'"),
        (["--crm", "brevo", "--ids", "/no/such/file"], 2, "cannot read /no/such/file"),
    ],
)
async def test_select_refuses_bad_input_and_changes_nothing(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    run_cli: RunCli,
    args: list[str],
    code: int,
    message: str,
) -> None:
    await add_contacts(client, 2)
    result = await run_cli("select", *args, input="nope\n")
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert await state_rows(engine) == []


async def test_select_by_unknown_ids_exits_1_and_too_many_ids_exit_2(
    client: httpx.AsyncClient, engine: AsyncEngine, run_cli: RunCli, tmp_path: Path
) -> None:
    await add_contacts(client, 1)
    unknown = await run_cli("select", "--crm", "n8n", "--ids", "-", input=f"{uuid.uuid4()}\n")
    assert unknown.exit_code == 1 and "No contacts found with provided IDs" in unknown.stderr
    many = tmp_path / "many.txt"
    many.write_text("\n".join(str(uuid.uuid4()) for _ in range(10_001)))
    too_many = await run_cli("select", "--crm", "n8n", "--ids", str(many))
    assert too_many.exit_code == 2 and "at most 10,000 per call" in too_many.stderr
    assert await state_rows(engine) == []


# -- failed --------------------------------------------------------------------------------------


async def test_failed_in_every_format(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    stopped_world: World,
    run_cli: RunCli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # the table's width: no wrapped messages
    bad = stopped_world.bad
    # A name a spreadsheet would run as a formula; the row stays in Error.
    renamed = await client.put(f"/api/v3/contacts/{bad[0]}", json={"name": "=HYPERLINK(1)"})
    assert renamed.status_code == 200
    # The same contact in Error for a second CRM: one row per CRM, its id once with --format ids.
    async with engine.begin() as conn:
        await conn.execute(
            insert(crm_sync_state).values(
                contact_id=uuid.UUID(bad[0]),
                crm="n8n",
                sync_status="Error",
                processing_error="n8n answered 400",
                updated_at=dt.datetime.now(dt.UTC),
                contact_created_at=dt.datetime.fromisoformat(renamed.json()["created_at"]),
            )
        )

    table = await run_cli("failed")
    assert table.exit_code == 0, table.output
    assert "6 row(s) in Error" in table.stderr
    lines = table.stdout.splitlines()
    for email in await _emails(client, bad):
        found = [line for line in lines if email in line and line.split()[0] == "hubspot"]
        assert len(found) == 1 and "HubSpot refused the contact" in found[0]

    as_csv = await run_cli("failed", "--crm", "hubspot", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["contact_id"] for r in rows] and {r["contact_id"] for r in rows} == set(bad)
    assert {r["crm"] for r in rows} == {"hubspot"}
    assert {r["name"] for r in rows} == {"'=HYPERLINK(1)", ""}  # neutralised
    assert all("HubSpot refused" in r["error"] and r["attempts"] == "1" for r in rows)

    jsonl = await run_cli("failed", "--format", "jsonl")
    objects = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert len(objects) == 6
    assert {o["crm"] for o in objects} == {"hubspot", "mautic", "n8n"}
    assert set(objects[0]) == {
        "contact_id",
        "crm",
        "email",
        "name",
        "error",
        "attempts",
        "last_attempt_at",
    }

    ids = await run_cli("failed", "--format", "ids")
    listed = ids.stdout.split()
    assert len(listed) == len(set(listed)) == 5  # bad[0] is in Error twice, listed once
    assert set(listed) == set(bad) | set(stopped_world.good[:3])

    one = await run_cli("failed", "--limit", "1", "--format", "jsonl")
    assert len(one.stdout.splitlines()) == 1

    none = await run_cli("failed", "--crm", "brevo")
    assert none.exit_code == 0 and none.stdout == ""
    assert "no contact in Error for brevo" in none.stderr
    unknown = await run_cli("failed", "--crm", "zoho")
    assert unknown.exit_code == 2 and "Invalid CRM names" in unknown.stderr


async def _emails(client: httpx.AsyncClient, ids: list[str]) -> list[str]:
    return [(await client.get(f"/api/v3/contacts/{cid}")).json()["email"] for cid in ids]


def test_safe_cell_neutralises_formulas() -> None:
    for text in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert safe_cell(text) == "'" + text
    assert safe_cell("jane@example.com") == "jane@example.com" and safe_cell(None) == ""


async def test_failed_ids_pipe_into_retry(
    engine: AsyncEngine, stopped_world: World, db_url: str, tmp_path: Path
) -> None:
    """A real shell pipe between two processes, as an operator types it."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE", "CRMSYNC_"))},
        "DATABASE_URL": db_url,
    }
    cli = " ".join(CLI)
    pipe = f"{cli} failed --crm hubspot --format ids | {cli} retry --crm hubspot --ids -"

    def shell(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    result = await asyncio.to_thread(shell, pipe)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hubspot: requeued 2 contact(s)\n"
    hubspot = _states(await state_rows(engine), "hubspot")
    assert [hubspot[cid] for cid in stopped_world.bad] == ["Selected", "Selected"]
    assert _states(await state_rows(engine), "mautic") == {
        cid: "Error" for cid in stopped_world.good[:3]
    }

    # Nothing in Error any more: the same pipe is a normal, successful no-op.
    again = await asyncio.to_thread(shell, pipe)
    assert again.returncode == 0, again.stderr
    assert "no contact ids in it; nothing to do" in again.stderr


async def test_failed_stops_quietly_when_its_reader_does(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    """`crmsync failed | head -1` over more rows than a pipe buffers: exit 0, no traceback."""
    now = dt.datetime.now(dt.UTC)
    people = [
        {"id": uuid.uuid4(), "email": f"e{i}@example.com", "created_at": now, "updated_at": now}
        for i in range(3000)
    ]
    async with engine.begin() as conn:
        await conn.execute(insert(contacts), people)
        await conn.execute(
            insert(crm_sync_state),
            [
                {
                    "contact_id": p["id"],
                    "contact_created_at": now,
                    "crm": "mautic",
                    "sync_status": "Error",
                    "processing_error": "Mautic answered 500 " + "x" * 80,
                    "attempts": 3,
                    "last_attempt_at": now,
                    "updated_at": now,
                }
                for p in people
            ],
        )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE", "CRMSYNC_"))},
        "DATABASE_URL": db_url,
    }
    for fmt in ("jsonl", "csv", "ids"):
        command = f"{' '.join(CLI)} failed --format {fmt} | head -1"
        result = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-c", command + "; exit ${PIPESTATUS[0]}"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert len(result.stdout.splitlines()) == 1 and result.stderr == "", result.stderr
