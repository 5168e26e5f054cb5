"""Every route but /healthz needs a valid HS256 bearer token."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time

import httpx
import jwt
import pytest

from crmsync.auth import mint_token, parse_ttl
from tests.conftest import SECRET

URL = "/api/v3/contacts"


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _bad_tokens() -> dict[str, str]:
    now = int(time.time())
    good = {"sub": "u", "exp": now + 600}
    return {
        "malformed": "not.a.jwt",
        "garbage": "abc",
        "expired": jwt.encode({"sub": "u", "exp": now - 10}, SECRET, algorithm="HS256"),
        "wrong_secret": jwt.encode(good, "another-secret-" + "y" * 40, algorithm="HS256"),
        "alg_none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(good)}.",
        "hs512": jwt.encode(good, SECRET, algorithm="HS512"),
        "no_sub": jwt.encode({"exp": now + 600}, SECRET, algorithm="HS256"),
        "no_exp": jwt.encode({"sub": "u"}, SECRET, algorithm="HS256"),
        "wrong_aud": jwt.encode({**good, "aud": "anon"}, SECRET, algorithm="HS256"),
    }


@pytest.mark.parametrize("case", sorted(_bad_tokens()))
async def test_bad_tokens_are_401(client: httpx.AsyncClient, case: str) -> None:
    token = _bad_tokens()[case]
    r = await client.get(URL, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401, case
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert r.json()["status_code"] == 401 and r.json()["detail"]


async def test_missing_and_non_bearer_headers_are_401(client: httpx.AsyncClient) -> None:
    for headers in ({"Authorization": ""}, {"Authorization": "Basic dXNlcjpwYXNz"}):
        r = await client.get(URL, headers=headers)
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == "Bearer"
    client.headers.pop("Authorization")
    for method, path in (
        ("GET", URL),
        ("POST", URL),
        ("PUT", f"{URL}/crm/select"),
        ("PUT", f"{URL}/status"),
        ("POST", f"{URL}/bulk"),
    ):
        r = await client.request(method, path, json={})
        assert r.status_code == 401, (method, path)
        assert r.json()["detail"] == "Not authenticated"


async def test_supabase_style_and_plain_tokens_pass(client: httpx.AsyncClient) -> None:
    now = int(time.time())
    supabase = jwt.encode(
        {"sub": "5905e9fe", "aud": "authenticated", "role": "authenticated", "exp": now + 60},
        SECRET,
        algorithm="HS256",
    )
    plain = jwt.encode({"sub": "svc", "exp": now + 60}, SECRET, algorithm="HS256")
    for token in (supabase, plain, mint_token(SECRET, "cli", dt.timedelta(minutes=1))):
        r = await client.get(URL, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200


async def test_healthz_needs_no_token(client: httpx.AsyncClient) -> None:
    client.headers.pop("Authorization")
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_parse_ttl() -> None:
    assert parse_ttl("90") == dt.timedelta(seconds=90)
    assert parse_ttl("15m") == dt.timedelta(minutes=15)
    assert parse_ttl("1h") == dt.timedelta(hours=1)
    assert parse_ttl("7d") == dt.timedelta(days=7)
    for bad in ("", "0", "-1h", "1w", "h"):
        with pytest.raises(ValueError, match="TTL"):
            parse_ttl(bad)
