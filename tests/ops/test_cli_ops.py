"""The operator commands: status, retry, reset, pause/resume (pause and resume with a worker are
in test_health.py), their errors and exit codes, and `worker --health-port`."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner, Result

from crmsync import cli
from tests.conftest import _migrate as migrate_schema
from tests.ops.conftest import World, expected_summary, state_rows
from tests.test_cli import CLI, run

RunCli = Callable[..., Awaitable[Result]]


async def hubspot_rows(engine: AsyncEngine) -> list[dict[str, object]]:
    return [r for r in await state_rows(engine) if r["crm"] == "hubspot"]


async def test_status_shows_each_crm_and_json_matches_the_database(
    engine: AsyncEngine, stopped_world: World, run_cli: RunCli
) -> None:
    result = await run_cli("status")
    assert result.exit_code == 0, result.output
    out = result.stdout
    # Nothing is due, but no worker is alive any more (and mautic's error rate is 100%).
    assert out.startswith("crmsync: degraded")
    assert "hubspot: no live worker serves it" in out
    for crm in ("brevo", "hubspot", "mautic", "n8n"):
        assert crm in out
    hubspot_line = next(line for line in out.splitlines() if line.strip().startswith("hubspot"))
    assert hubspot_line.split()[1:] == ["degraded", "-", "0", "0", "0", "20%", "of", "10", "1.6"]

    as_json = await run_cli("status", "--json")
    assert as_json.exit_code == 0
    data = json.loads(as_json.stdout)
    expected = await expected_summary(engine)
    assert data["summary"] == expected
    assert data["health"]["crms"]["hubspot"]["queue"] == expected["crms"]["hubspot"]
    assert data["health"]["crms"]["mautic"]["failures"] == 3


async def test_reset_asks_first_and_changes_nothing_on_no(
    engine: AsyncEngine, stopped_world: World, run_cli: RunCli
) -> None:
    before = await state_rows(engine)
    args = ("reset", "--crm", "hubspot", "--from", "Error", "--to", "New")
    declined = await run_cli(*args, input="n\n")
    assert declined.exit_code == 1
    assert "hubspot: 2 row(s) in Error" in declined.stdout
    assert "Reset 2 row(s) of hubspot? [y/N]" in declined.stdout
    assert "aborted; nothing was changed" in declined.stderr
    assert await state_rows(engine) == before

    done = await run_cli("reset", "--crm", "hubspot", "--from", "error", "--to", "new", "--yes")
    assert done.exit_code == 0, done.output
    assert "hubspot: 2 row(s) in Error" in done.stdout and "reset 2 row(s) to New" in done.stdout
    rows = await hubspot_rows(engine)
    reset = [r for r in rows if r["sync_status"] == "New"]
    assert len(reset) == 2 and not [r for r in rows if r["sync_status"] == "Error"]
    for row in reset:
        assert row["processing_status"] is None and row["processing_error"] is None
        assert row["attempts"] == 0 and row["next_attempt_at"] is None
        assert row["lease_token"] is None
    assert sum(r["sync_status"] == "Complete" for r in rows) == 8  # untouched
    assert (await expected_summary(engine))["crms"]["hubspot"]["New"] == 4

    nothing = await run_cli(*args)
    assert nothing.exit_code == 0 and "nothing to reset" in nothing.stdout


async def test_reset_to_selected_requeues_and_forgets_the_payload_hash(
    engine: AsyncEngine, stopped_world: World, run_cli: RunCli
) -> None:
    result = await run_cli(
        "reset", "--crm", "n8n", "--from", "Complete", "--to", "Selected", input="y\n"
    )
    assert result.exit_code == 0, result.output
    assert "reset 5 row(s) to Selected" in result.stdout
    rows = [r for r in await state_rows(engine) if r["crm"] == "n8n"]
    assert all(r["sync_status"] == "Selected" and r["synced_hash"] is None for r in rows)
    assert all(r["external_id"] is not None for r in rows)  # the vendor's id is kept


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--from", "Processing", "--to", "New"], 1, "--force"),
        (["--from", "Complete", "--to", "Error"], 2, "cannot reset to Error"),
        (["--from", "New", "--to", "Selected"], 2, "rows in New are not queued"),
        (["--from", "Error", "--to", "Error"], 2, "cannot reset to Error"),
        (["--from", "Selected", "--to", "Selected"], 2, "are the same status"),
        (["--from", "Broken", "--to", "New"], 2, "unknown status 'Broken'"),
    ],
)
async def test_reset_refuses_what_makes_no_sense(
    run_cli: RunCli, args: list[str], code: int, message: str
) -> None:
    result = await run_cli("reset", "--crm", "hubspot", *args, "--yes")
    assert result.exit_code == code, result.output
    assert message in result.stderr


async def test_retry_from_an_ids_file(
    engine: AsyncEngine, stopped_world: World, run_cli: RunCli, tmp_path: Path
) -> None:
    bad, good = stopped_world.bad, stopped_world.good
    before = await state_rows(engine)
    broken = tmp_path / "broken.txt"
    broken.write_text(f"{bad[0]}\n{bad[1]}\nnot-a-uuid\n")
    result = await run_cli("retry", "--crm", "hubspot", "--ids", str(broken))
    assert result.exit_code == 2
    assert "line 3: 'not-a-uuid'" in result.stderr and "Nothing was changed" in result.stderr
    assert await state_rows(engine) == before

    ids = tmp_path / "ids.txt"
    ids.write_text(f"# failed yesterday\n{bad[0]}\n\n{bad[1]}\n{good[0]}\n")
    result = await run_cli("retry", "--crm", "hubspot", "--ids", str(ids))
    assert result.exit_code == 0, result.output
    assert "requeued 2 contact(s) (1 listed were not in Error" in result.stdout
    rows = {str(r["contact_id"]): r for r in await hubspot_rows(engine)}
    assert [rows[i]["sync_status"] for i in bad] == ["Selected", "Selected"]
    assert rows[good[0]]["sync_status"] == "Complete"

    result = await run_cli("retry", "--crm", "mautic", "--all-failed")
    assert result.exit_code == 0 and "mautic: requeued 3 failed contact(s)" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["retry", "--crm", "hubspot"], "exactly one of --all-failed and --ids"),
        (["retry", "--crm", "hubspot", "--all-failed", "--ids", "x"], "exactly one of"),
        (["retry", "--crm", "zoho", "--all-failed"], "Invalid CRM names: ['zoho']"),
        (["retry", "--crm", "hubspot", "--ids", "/no/such/file"], "cannot read /no/such/file"),
        (["pause", "--crm", "zoho"], "Invalid CRM names"),
        (["reset", "--crm", "zoho", "--from", "Error", "--to", "New"], "Invalid CRM names"),
    ],
)
def test_bad_input_exits_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


@pytest.mark.parametrize("command", ["status", "retry", "reset", "pause", "resume", "worker"])
def test_help(command: str) -> None:
    result = CliRunner().invoke(cli.app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.stdout


def test_ops_commands_refuse_a_database_without_the_schema(tmp_path: Path) -> None:
    result = run(["status"], tmp_path)
    assert result.returncode == 2
    assert "crmsync db upgrade" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("option", ["--health-port", "--metrics-port"])
def test_worker_serves_probes_and_its_counters(tmp_path: Path, option: str) -> None:
    asyncio.run(migrate_schema(f"sqlite+aiosqlite:///{tmp_path / 'crmsync.db'}"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BREVO", "HUBSPOT"))},
        "HUBSPOT_ACCESS_TOKEN": "t",
        "HUBSPOT_API_BASE_URL": "http://127.0.0.1:9",
    }
    proc = subprocess.Popen(
        [*CLI, "worker", "--crm", "hubspot", option, str(port)],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:  # until the worker has registered and says it is ready
            try:
                ready = httpx.get(f"{base}/readyz", timeout=1)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the worker never became ready"
            time.sleep(0.05)
        assert ready.json()["status"] == "ready"
        assert httpx.get(f"{base}/healthz").json()["status"] == "ok"
        response = httpx.get(f"{base}/metrics", timeout=1)
        assert response.status_code == 200
        for name in ("crmsync_pushes", "crmsync_batches_in_flight", "crmsync_lease_lost"):
            assert f"# HELP {name}" in response.text
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_worker_with_a_taken_health_port_says_so(tmp_path: Path) -> None:
    asyncio.run(migrate_schema(f"sqlite+aiosqlite:///{tmp_path / 'crmsync.db'}"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(["worker", "--crm", "hubspot", "--health-port", str(port)], tmp_path)
    assert result.returncode == 1
    assert f"cannot serve probes on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
