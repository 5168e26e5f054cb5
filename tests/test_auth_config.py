"""Signing secret strength, issuer/audience checks and read-only tokens from the command line."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx
import jwt
import pytest
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import auth
from crmsync.api.app import create_app
from crmsync.settings import Settings
from tests.conftest import SECRET
from tests.test_cli import run

SHORT = "s" * 31


def test_a_short_jwt_secret_key_stops_settings_from_loading() -> None:
    with pytest.raises(ValidationError, match="at least 32 bytes"):
        Settings(jwt_secret_key=SHORT, _env_file=None)  # type: ignore[call-arg]
    # Bytes, not characters: 11 three-byte characters are 33 bytes.
    Settings(jwt_secret_key="€" * 11, _env_file=None)  # type: ignore[call-arg]


def test_a_short_secret_stops_the_app_too() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    with pytest.raises(auth.WeakSecret, match="at least 32 bytes"):
        create_app(settings, SHORT)


def test_serve_refuses_to_start_with_a_short_secret(tmp_path: Path) -> None:
    result = run(["serve", "--no-worker"], tmp_path, JWT_SECRET_KEY=SHORT)
    assert result.returncode == 2
    assert "JWT_SECRET_KEY is 31 bytes long" in result.stderr and "token_urlsafe" in result.stderr
    assert "Traceback" not in result.stderr and SHORT not in result.stderr


def test_a_short_secret_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".crmsync").mkdir()
    (tmp_path / ".crmsync" / "secret").write_text("tooshort\n")
    result = run(["token"], tmp_path)
    assert result.returncode == 2 and "at least 32 bytes" in result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr


def test_the_generated_secret_is_long_enough(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    secret, created = auth.ensure_secret(settings)
    assert created is not None and len(secret.encode()) >= 32
    auth.check_secret_length(secret)


def test_token_read_only_mints_a_read_scope(tmp_path: Path) -> None:
    secret = "k" * 48
    result = run(["token", "--read-only"], tmp_path, JWT_SECRET_KEY=secret)
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(
        result.stdout.strip(), secret, algorithms=["HS256"], audience="authenticated"
    )
    assert claims["scope"] == "read"
    full = run(["token"], tmp_path, JWT_SECRET_KEY=secret).stdout.strip()
    assert "scope" not in jwt.decode(full, secret, algorithms=["HS256"], audience="authenticated")


def test_token_carries_the_configured_issuer_and_audience(tmp_path: Path) -> None:
    secret = "k" * 48
    result = run(
        ["token"],
        tmp_path,
        JWT_SECRET_KEY=secret,
        CRMSYNC_JWT_ISSUER="https://auth.example.com",
        CRMSYNC_JWT_AUDIENCE="crmsync",
    )
    claims = jwt.decode(
        result.stdout.strip(),
        secret,
        algorithms=["HS256"],
        audience="crmsync",
        issuer="https://auth.example.com",
    )
    assert claims["sub"] == "crmsync"


def _token(**claims: object) -> str:
    base: dict[str, object] = {"sub": "u", "exp": int(dt.datetime.now(dt.UTC).timestamp()) + 600}
    return jwt.encode({**base, **claims}, SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    ("issuer", "audience", "claims", "expected"),
    [
        # Nothing configured: any issuer; `aud`, when present, must be Supabase's.
        (None, None, {}, 200),
        (None, None, {"iss": "anyone"}, 200),
        (None, None, {"aud": "authenticated"}, 200),
        (None, None, {"aud": "other"}, 401),
        # An issuer configured: required and equal.
        ("https://idp", None, {}, 401),
        ("https://idp", None, {"iss": "https://evil"}, 401),
        ("https://idp", None, {"iss": "https://idp"}, 200),
        # An audience configured: required, and named by `aud` (a string or a list).
        (None, "crmsync", {}, 401),
        (None, "crmsync", {"aud": "authenticated"}, 401),
        (None, "crmsync", {"aud": "crmsync"}, 200),
        (None, "crmsync", {"aud": ["other", "crmsync"]}, 200),
        ("https://idp", "crmsync", {"iss": "https://idp", "aud": "crmsync"}, 200),
    ],
)
async def test_issuer_and_audience_are_checked_when_configured(
    settings: Settings,
    engine: AsyncEngine,
    issuer: str | None,
    audience: str | None,
    claims: dict[str, object],
    expected: int,
) -> None:
    configured = settings.model_copy(update={"jwt_issuer": issuer, "jwt_audience": audience})
    transport = httpx.ASGITransport(app=create_app(configured, SECRET, engine=engine))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        headers = {"Authorization": f"Bearer {_token(**claims)}"}
        r = await http.get("/api/v3/contacts", headers=headers)
    assert r.status_code == expected, r.text


@pytest.mark.parametrize(
    ("scope", "read", "write"),
    [
        (None, 200, 201),  # no scope: full power (the customer's Supabase tokens)
        ("read", 200, 403),
        ("write", 200, 201),
        ("read write", 200, 201),
        (["read"], 200, 403),
        ("admin", 403, 403),  # a scope that grants nothing here
    ],
)
async def test_a_token_scope_limits_what_it_may_do(
    settings: Settings, engine: AsyncEngine, scope: object, read: int, write: int
) -> None:
    transport = httpx.ASGITransport(app=create_app(settings, SECRET, engine=engine))
    claims = {} if scope is None else {"scope": scope}
    headers = {"Authorization": f"Bearer {_token(**claims)}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test", headers=headers
    ) as http:
        assert (await http.get("/api/v3/contacts")).status_code == read
        created = await http.post("/api/v3/contacts", json={"email": "w@example.com"})
        assert created.status_code == write, created.text
        if write == 403:
            assert created.json()["status_code"] == 403
            # Refused before anything was written.
            admin = {"Authorization": f"Bearer {_token()}"}
            assert (await http.get("/api/v3/contacts", headers=admin)).json() == []
