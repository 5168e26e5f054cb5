"""`crmsync demo` as a user runs it: a subprocess on free ports in a temp dir.

It answers within 10 s, every CRM's segment is pushed to the sandbox within 10 s more, a
restart keeps the contacts and queues nothing twice, and SIGINT (Ctrl-C: the whole process
group) or SIGTERM (the demo alone) stops it within 5 s with no process left behind. The user's
`DATABASE_URL`, `.env` and vendor variables are set to traps throughout: none may be used.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from crmsync.demo.config import INVALID_EVERY
from crmsync.demo.contacts import invalid_email_indexes, realistic_contacts
from tests.test_cli import CLI
from tests.test_cli_runtime import _free_port

CRMS = ("brevo", "hubspot", "mautic", "n8n")
WAITING = ("Selected", "Queued", "Processing")
READY_SECONDS = 10.0
SYNC_SECONDS = 10.0
STOP_SECONDS = 5.0


def _trap_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user with a production configuration (none of it may be used)."""
    dead = f"http://127.0.0.1:{_free_port()}"
    (tmp_path / ".env").write_text(
        f"DATABASE_URL=sqlite+aiosqlite:///{tmp_path / 'dotenv-prod.db'}\n"
        "BREVO_API_KEY=xkeysib-from-dotenv\n"
        f"HUBSPOT_API_BASE_URL={dead}/dotenv\n"
    )
    return {
        **os.environ,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'env-prod.db'}",
        "JWT_SECRET_KEY": "production-secret",
        "CRMSYNC_STATE_DIR": str(tmp_path / "prod-state"),
        "BREVO_API_KEY": "xkeysib-real",
        "BREVO_API_BASE_URL": f"{dead}/brevo",
        "HUBSPOT_ACCESS_TOKEN": "pat-real",
        "HUBSPOT_API_BASE_URL": f"{dead}/hubspot",
        "MAUTIC_BASE_URL": f"{dead}/mautic",
        "N8N_WEBHOOK_URL": f"{dead}/n8n",
    }


@dataclass
class Demo:
    proc: subprocess.Popen[bytes]
    out: Path
    api: str
    sandbox: str
    started: float
    seen_children: dict[int, str] = field(default_factory=dict)  # pid -> command line

    @classmethod
    def start(cls, tmp_path: Path, run: str, env: dict[str, str], *args: str) -> Demo:
        port, sandbox_port = _free_port(), _free_port()
        out = tmp_path / f"{run}.out"
        with out.open("wb") as sink:
            proc = subprocess.Popen(
                [
                    *CLI,
                    "demo",
                    "--port",
                    str(port),
                    "--sandbox-port",
                    str(sandbox_port),
                    *args,
                ],
                cwd=tmp_path,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, as in a terminal
            )
        return cls(
            proc,
            out,
            f"http://127.0.0.1:{port}",
            f"http://127.0.0.1:{sandbox_port}",
            time.monotonic(),
        )

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_ready(self) -> float:
        """Seconds from the start until the API answers."""
        deadline = self.started + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if httpx.get(f"{self.api}/healthz", timeout=1).status_code == 200:
                    return time.monotonic() - self.started
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"the demo did not answer within 60 s:\n{self.output()}")

    def token(self) -> str:
        deadline = time.monotonic() + 10
        while (found := re.search(r"export TOKEN=(\S+)", self.output())) is None:
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.05)
        return found.group(1)

    def get(self, path: str, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token()}"}
        response = httpx.get(f"{self.api}{path}", headers=headers, params=params, timeout=10)
        response.raise_for_status()
        return response.json()

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = self.get("/api/v3/crm/status/summary")
        return summary

    def sandbox_contacts(self, crm: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.sandbox}/_sandbox/{crm}/contacts", timeout=10)
        result: list[dict[str, Any]] = response.raise_for_status().json()
        return result

    def note_children(self) -> None:
        # Read again each time: a child seen between fork and exec still shows its parent's
        # command line.
        for pid in _descendants(self.proc.pid):
            if line := _cmdline(pid):
                self.seen_children[pid] = line

    def had_writer(self) -> bool:
        return any("crmsync.writer_process" in line for line in self.seen_children.values())

    def stop(self, sig: signal.Signals, *, group: bool) -> float:
        """Send `sig` (to the whole group, as a terminal's Ctrl-C does); seconds until exit."""
        self.note_children()
        sent = time.monotonic()
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the demo did not stop:\n{self.output()}") from None
        return time.monotonic() - sent

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[1], []).append(int(entry.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _assert_nothing_left(demo: Demo) -> None:
    alive = [
        (pid, line)
        for pid, line in demo.seen_children.items()
        if (stat := _stat(pid)) is not None and stat[0] != "Z"
    ]
    assert not alive, f"processes left behind: {alive}"
    with pytest.raises(ProcessLookupError):
        os.killpg(demo.proc.pid, 0)  # nothing at all is left in the demo's process group


def _waiting(summary: dict[str, Any]) -> int:
    return sum(counts[s] for counts in summary["crms"].values() for s in WAITING)


@pytest.mark.timeout(240)
def test_demo_syncs_every_crm_restarts_without_seeding_twice_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    env = _trap_env(tmp_path)
    demo = Demo.start(tmp_path, "first", env)
    try:
        ready = demo.wait_ready()
        assert ready < READY_SECONDS, f"the API answered after {ready:.1f} s"
        answered = time.monotonic()
        deadline = answered + SYNC_SECONDS
        while True:
            summary = demo.summary()
            demo.note_children()
            if _waiting(summary) == 0:
                break
            assert time.monotonic() < deadline, f"not synced in {SYNC_SECONDS} s: {summary}"
            time.sleep(0.1)
        took = time.monotonic() - answered

        # Every CRM got its segment, in the sandbox; only the invalid emails were refused.
        rows = realistic_contacts(500, invalid_every=INVALID_EVERY)
        invalid = {rows[i]["email"].lower() for i in invalid_email_indexes(500, INVALID_EVERY)}
        assert summary["total_contacts"] == 500
        failed = demo.get("/api/v3/crm/status/failed", limit=1000)
        assert {item["email"].lower() for item in failed} <= invalid
        for crm in CRMS:
            counts = summary["crms"][crm]
            assert counts["Complete"] > 0, (crm, counts)
            stored = demo.sandbox_contacts(crm)
            assert len(stored) == counts["Complete"], (crm, counts)
            assert counts["Error"] == sum(item["crm"] == crm for item in failed)
        assert summary["crms"]["brevo"]["Complete"] + summary["crms"]["brevo"]["Error"] == 500
        assert summary["crms"]["brevo"]["Error"] == len(invalid)  # Brevo checks every email

        # What a user sees: the URLs, a token that works, a curl line, the result.
        text = demo.output()
        for needle in (f"API        {demo.api}", f"{demo.api}/docs", "curl -H", "Generated 500"):
            assert needle in text, text
        assert "Queue drained" in text
        # The dashboard's sign-in link: the app's sign-in page, with the demo's token.
        link = text.split("Dashboard  ")[1].split()[0]
        assert link.startswith(f"{demo.api}/login#token=ey"), link
        page = httpx.get(link.split("#")[0], timeout=10)
        assert page.status_code == 200 and "<form" in page.text

        assert demo.had_writer()  # the check below is not vacuous
        stopped = demo.stop(signal.SIGINT, group=True)
        assert demo.proc.returncode == 0, demo.output()
        assert stopped < STOP_SECONDS, f"stopped {stopped:.1f} s after Ctrl-C"
        _assert_nothing_left(demo)
    finally:
        demo.kill()
    print(f"\nready {ready:.1f} s, synced {took:.1f} s later, stopped {stopped:.1f} s after SIGINT")

    # The user's databases were never created; the demo's is where it says.
    assert not (tmp_path / "env-prod.db").exists()
    assert not (tmp_path / "dotenv-prod.db").exists()
    assert not (tmp_path / "prod-state").exists()
    assert (tmp_path / "crmsync-demo.db").exists()

    again = Demo.start(tmp_path, "restart", env)
    try:
        again.wait_ready()
        after = again.summary()
        assert after == summary  # the same contacts, the same statuses: nothing re-queued
        assert "500 contacts already in the database; none generated" in again.output()
        assert all(again.sandbox_contacts(crm) == [] for crm in CRMS)  # a fresh sandbox
        again.note_children()
        stopped = again.stop(signal.SIGTERM, group=False)
        assert again.proc.returncode == 0, again.output()
        assert stopped < STOP_SECONDS, f"stopped {stopped:.1f} s after SIGTERM"
        _assert_nothing_left(again)
    finally:
        again.kill()


@pytest.mark.timeout(120)
def test_sigterm_in_the_middle_of_a_sync_stops_everything_within_5_s(tmp_path: Path) -> None:
    demo = Demo.start(tmp_path, "busy", _trap_env(tmp_path), "--contacts", "2000")
    try:
        demo.wait_ready()
        deadline = time.monotonic() + 60
        while True:
            summary = demo.summary()
            demo.note_children()
            complete = sum(counts["Complete"] for counts in summary["crms"].values())
            if complete and _waiting(summary):
                break  # some rows pushed, others still queued or in flight
            assert _waiting(summary), f"drained before it could be interrupted: {summary}"
            assert time.monotonic() < deadline, summary
            time.sleep(0.05)
        stopped = demo.stop(signal.SIGTERM, group=False)
        assert demo.proc.returncode == 0, demo.output()
        assert stopped < STOP_SECONDS, f"stopped {stopped:.1f} s after SIGTERM"
        assert demo.had_writer()  # the check below is not vacuous
        _assert_nothing_left(demo)
    finally:
        demo.kill()
    assert "Generated 2000 contacts" in demo.output()


def _refused(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`crmsync demo ARGS` that is expected to stop at once."""
    return subprocess.run(
        [*CLI, "demo", *args],
        cwd=tmp_path,
        env=_trap_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("option", ["--port", "--sandbox-port"])
def test_a_port_in_use_stops_the_demo_with_one_line(tmp_path: Path, option: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        other = "--sandbox-port" if option == "--port" else "--port"
        result = _refused(tmp_path, option, port, other, str(_free_port()))
    assert result.returncode == 1, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and option in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env"]  # nothing was created


def test_a_file_that_is_not_a_database_is_refused_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.db").write_text("not a database")
    ports = ["--port", str(_free_port()), "--sandbox-port", str(_free_port())]
    result = _refused(tmp_path, "--db", "notes.db", *ports)
    assert result.returncode == 1, result.stderr
    assert "notes.db cannot be used as the demo's database" in result.stderr
    assert "--db" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "notes.db").read_text() == "not a database"


def test_ctrl_c_while_it_starts_stops_it_cleanly(tmp_path: Path) -> None:
    demo = Demo.start(tmp_path, "early", _trap_env(tmp_path))
    try:
        deadline = time.monotonic() + 60
        while not demo.had_writer():  # the worker is starting: the API does not answer yet
            assert demo.proc.poll() is None, demo.output()
            assert time.monotonic() < deadline, demo.output()
            demo.note_children()
            time.sleep(0.01)
        stopped = demo.stop(signal.SIGINT, group=True)
        assert demo.proc.returncode in (0, 130), demo.output()
        assert stopped < STOP_SECONDS, f"stopped {stopped:.1f} s after Ctrl-C"
        assert "Traceback" not in demo.output(), demo.output()
        _assert_nothing_left(demo)
    finally:
        demo.kill()
