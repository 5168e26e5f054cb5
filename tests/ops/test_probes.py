"""Probes and HTTP conventions for production: liveness, readiness, CORS, the access log,
request ids and log timestamps."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import db, logs
from crmsync.api.app import create_app
from crmsync.settings import Settings
from crmsync.sync.worker import Worker
from tests.conftest import SECRET

UNREACHABLE = "postgresql+asyncpg://crmsync:hunter2@127.0.0.1:9/nowhere"


def _settings(tmp_path: Path, url: str, **values: object) -> Settings:
    return Settings(
        database_url=url,
        jwt_secret_key=SECRET,
        state_dir=tmp_path / ".crmsync",
        _env_file=None,  # type: ignore[call-arg]
        **values,
    )


@contextlib.asynccontextmanager
async def _app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    engine = db.create_engine(settings.database_url)
    app = create_app(settings, SECRET, engine=engine)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as http:
            yield http
    finally:
        await engine.dispose()


async def test_ready_when_the_database_answers_and_is_migrated(client: httpx.AsyncClient) -> None:
    live = await client.get("/healthz", headers={"Authorization": ""})
    ready = await client.get("/readyz", headers={"Authorization": ""})
    assert live.status_code == 200 and live.json()["status"] == "ok"
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


async def test_a_database_outage_fails_readiness_but_never_liveness(tmp_path: Path) -> None:
    async with _app_client(_settings(tmp_path, UNREACHABLE)) as http:
        live = await http.get("/healthz")
        ready = await http.get("/readyz")
    assert live.status_code == 200  # a restart would not bring the database back
    assert ready.status_code == 503
    reason = ready.json()["reason"]
    assert "unreachable" in reason and "hunter2" not in reason and "crmsync:" not in reason


async def test_an_unmigrated_database_is_not_ready_and_says_what_to_run(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    async with _app_client(_settings(tmp_path, url)) as http:
        ready = await http.get("/readyz")
    assert ready.status_code == 503
    assert "crmsync db upgrade" in ready.json()["reason"]


async def test_a_worker_is_ready_only_while_its_heartbeat_is_current(
    engine: AsyncEngine, settings: Settings
) -> None:
    worker = Worker(engine, settings.model_copy(update={"lease_seconds": 3.0}), [])
    assert worker.not_ready() == "the worker has not registered yet"
    worker.beat_at = time.monotonic()
    assert worker.not_ready() is None
    worker.beat_at = time.monotonic() - 3 * 1.0 - 0.5  # three missed beats of 1 s
    late = worker.not_ready()
    assert late is not None and "last heartbeat was 4 s ago" in late
    worker.beat_at = time.monotonic()
    worker.stop()
    assert worker.not_ready() == "the worker is stopping"


async def test_cors_is_off_by_default(client: httpx.AsyncClient) -> None:
    preflight = await client.options(
        "/api/v3/contacts",
        headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in preflight.headers


async def test_cors_allows_exactly_the_configured_origins(
    tmp_path: Path, engine: AsyncEngine, db_url: str
) -> None:
    settings = _settings(tmp_path, db_url, cors_origins="https://app.example.com/, http://x.test")
    assert settings.cors_origins == ["https://app.example.com", "http://x.test"]
    app = create_app(settings, SECRET, engine=engine)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as http:
        ok = await http.options(
            "/api/v3/contacts",
            headers={
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": "PUT",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        other = await http.options(
            "/api/v3/contacts",
            headers={"Origin": "https://evil.test", "Access-Control-Request-Method": "GET"},
        )
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "PUT" in ok.headers["access-control-allow-methods"]
    assert other.headers.get("access-control-allow-origin") is None


def test_a_cors_origin_with_a_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"is not an origin like https://app\.example\.com"):
        _settings(tmp_path, "sqlite://", cors_origins="https://app.example.com/contacts")


async def test_the_access_log_is_one_line_per_request_without_secrets(
    tmp_path: Path,
    engine: AsyncEngine,
    db_url: str,
    auth: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(_settings(tmp_path, db_url, access_log=True), SECRET, engine=engine)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", headers=auth
    ) as http:
        with caplog.at_level(logging.INFO, logger="crmsync.access"):
            listed = await http.get(
                "/api/v3/contacts",
                params={"limit": 5, "access_token": "abc123"},
                headers={"X-Request-ID": "req-42"},
            )
            created = await http.post("/api/v3/contacts", json={"email": "body@example.com"})
    assert listed.headers["X-Request-ID"] == "req-42"
    generated = created.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    lines = [r for r in caplog.records if r.name == "crmsync.access"]
    assert len(lines) == 2
    first, second = lines
    assert first.getMessage().startswith(
        "GET /api/v3/contacts?limit=5&access_token=%5Bredacted%5D 200 "
    )
    assert first.getMessage().endswith(" ms id=req-42")
    assert (second.method, second.path, second.status) == ("POST", "/api/v3/contacts", 201)  # type: ignore[attr-defined]
    assert second.request_id == generated  # type: ignore[attr-defined]
    assert isinstance(second.duration_ms, float)  # type: ignore[attr-defined]
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert "abc123" not in everything and "body@example.com" not in everything
    entry = json.loads(logs.JsonFormatter().format(second))
    assert entry["status"] == 201 and entry["request_id"] == generated


async def test_without_the_setting_there_is_no_access_log_but_still_request_ids(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="crmsync.access"):
        response = await client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert not [r for r in caplog.records if r.name == "crmsync.access"]
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])  # not the bad one


def test_text_log_lines_carry_the_date_and_the_zone() -> None:
    record = logging.makeLogRecord(
        {"name": "crmsync.x", "levelname": "INFO", "msg": "hello", "created": 1_796_000_000.5}
    )
    line = logs.TextFormatter().format(record)
    stamp, rest = line.split(" ", 1)
    parsed = dt.datetime.fromisoformat(stamp)
    assert parsed.utcoffset() is not None
    assert parsed.timestamp() == pytest.approx(1_796_000_000.5)
    assert rest == "INFO    crmsync.x: hello"
