"""Request bodies are limited before they are parsed or authenticated (CRMSYNC_MAX_BODY_BYTES)."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Message

from crmsync.api.app import create_app
from crmsync.settings import Settings
from tests.conftest import SECRET

LIMIT = 64 * 1024
CHUNK = 8 * 1024
BULK = "/api/v3/contacts/bulk"


def _app(tmp_path: Path, limit: int = LIMIT) -> object:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}",
        jwt_secret_key=SECRET,
        max_body_bytes=limit,
        _env_file=None,  # type: ignore[call-arg]
    )
    return create_app(settings, SECRET)


class Upload:
    """An ASGI `receive` that streams a body of `total` bytes in chunks and counts what was read."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.read = 0

    async def __call__(self) -> Message:
        size = min(CHUNK, self.total - self.read)
        self.read += size
        return {"type": "http.request", "body": b"x" * size, "more_body": self.read < self.total}


async def _call(app: object, headers: list[tuple[bytes, bytes]], upload: Upload) -> list[Message]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": BULK,
        "raw_path": BULK.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, upload, send)  # type: ignore[operator]
    return sent


def _status_and_body(sent: list[Message]) -> tuple[int, dict[str, object]]:
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


async def test_a_declared_length_over_the_limit_is_refused_before_reading(tmp_path: Path) -> None:
    upload = Upload(10 * LIMIT)
    sent = await _call(_app(tmp_path), [(b"content-length", str(10 * LIMIT).encode())], upload)
    status, body = _status_and_body(sent)
    assert status == 413 and "CRMSYNC_MAX_BODY_BYTES" in str(body["detail"])
    assert upload.read == 0  # not a byte read, and no token needed to be refused


async def test_a_streamed_body_is_cut_off_as_soon_as_it_passes_the_limit(tmp_path: Path) -> None:
    upload = Upload(1000 * LIMIT)  # 64 MiB, never declared
    status, body = _status_and_body(await _call(_app(tmp_path), [], upload))
    assert status == 413 and body["status_code"] == 413
    assert upload.read <= LIMIT + CHUNK  # at most one chunk past the limit was ever held


async def test_a_lying_content_length_is_still_counted(tmp_path: Path) -> None:
    upload = Upload(1000 * LIMIT)
    status, _ = _status_and_body(await _call(_app(tmp_path), [(b"content-length", b"10")], upload))
    assert status == 413 and upload.read <= LIMIT + CHUNK


async def test_a_body_within_the_limit_is_read_whole(tmp_path: Path) -> None:
    upload = Upload(LIMIT)
    status, body = _status_and_body(await _call(_app(tmp_path), [], upload))
    # Read in full and parsed (it is no JSON): the limit let it through.
    assert status == 422 and upload.read == LIMIT, body


def test_the_default_holds_a_10000_contact_bulk_request() -> None:
    contact = {
        "email": "firstname.lastname-0000@some-company-domain.example.com",
        "name": "Firstname Middlename Lastname",
        "phone_number": "+44 20 7946 0000",
        "email_type": "CORPORATE",
        "has_gmail": False,
        "context": "Head of Marketing at Some Company. " * 20,
        "source_url": "https://www.some-company-domain.example.com/about/team/leadership?ref=1",
        "domain_id": "6f1f9a56-0c55-4d43-9a4e-7c1b2f0e8d21",
        "page_id": "6f1f9a56-0c55-4d43-9a4e-7c1b2f0e8d22",
        "source_job_id": "6f1f9a56-0c55-4d43-9a4e-7c1b2f0e8d23",
        "contact_curation_status": "Queued",
    }
    body = json.dumps({"contacts": [contact] * 10_000}).encode()
    default = Settings(_env_file=None).max_body_bytes  # type: ignore[call-arg]
    assert len(body) < default


# -- a real server: refused at once, and the server's memory does not grow ---------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, int]]:
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'crmsync.db'}",
        "CRMSYNC_STATE_DIR": str(tmp_path / "state"),
        "CRMSYNC_MAX_BODY_BYTES": str(1024 * 1024),
    }
    cli = [sys.executable, "-m", "crmsync.cli"]
    proc = subprocess.Popen(
        [*cli, "serve", "--port", str(port), "--no-worker"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # bounded poll on the condition itself: the server answers
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "serve did not come up"
            time.sleep(0.05)
        yield port, proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _answer(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_the_server_refuses_a_huge_declared_body_at_once(server: tuple[int, int]) -> None:
    port, _ = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            f"POST {BULK} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {10**12}\r\n\r\n".encode()
        )
        assert _answer(sock).startswith(b"HTTP/1.1 413")  # no body was sent at all


def test_the_server_stops_a_streamed_body_without_holding_it(server: tuple[int, int]) -> None:
    port, pid = server
    before = _rss_kib(pid)
    chunk = b"x" * 65536
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            f"POST {BULK} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        sock.setblocking(False)
        answered = False
        while sent < 256 * 1024 * 1024 and not answered:
            readable, writable, _ = select.select([sock], [sock], [], 10)
            if readable:
                answered = True
            elif writable:
                try:
                    sent += sock.send(framed)
                except BlockingIOError:
                    continue
            else:
                raise AssertionError("the server neither read nor answered for 10 s")
        assert answered, f"sent {sent:,} bytes without an answer"
        sock.setblocking(True)
        assert _answer(sock).startswith(b"HTTP/1.1 413")
    # A 1 MiB limit: the server answered long before 256 MiB went out, and holds none of it.
    assert sent < 64 * 1024 * 1024
    assert _rss_kib(pid) - before < 16 * 1024


async def test_answers_are_never_cached(settings: Settings, engine: AsyncEngine) -> None:
    transport = httpx.ASGITransport(app=create_app(settings, SECRET, engine=engine))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        for path in ("/healthz", "/api/v3/contacts"):
            assert (await http.get(path)).headers["Cache-Control"] == "no-store"
