"""Signing in and out of the dashboard, the session cookie, CSRF, and the security headers."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from crmsync.auth import READ, mint_token
from crmsync.web.session import COOKIE, safe_next
from tests.conftest import SECRET, add_contacts
from tests.web.conftest import csrf_of, post_form, sign_in

PAGES = ("/", "/contacts", "/failed", "/contacts/00000000-0000-0000-0000-000000000001")
DATA = ("/overview/cards", "/contacts/badges?id=00000000-0000-0000-0000-000000000001")


@pytest.mark.parametrize("path", PAGES)
async def test_no_page_is_reachable_signed_out(browser: httpx.AsyncClient, path: str) -> None:
    response = await browser.get(path)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login")
    if path != "/":
        assert response.headers["location"] == f"/login?next={path.replace(':', '%3A')}"


@pytest.mark.parametrize("path", DATA)
async def test_page_data_answers_401_signed_out(browser: httpx.AsyncClient, path: str) -> None:
    response = await browser.get(path)
    assert response.status_code == 401
    assert "/login" in response.json()["detail"]


async def test_sign_in_sets_a_strict_httponly_cookie_that_expires_with_the_token(
    browser: httpx.AsyncClient,
) -> None:
    token = mint_token(SECRET, "ada", dt.timedelta(minutes=30))
    response = await sign_in(browser, token, next_path="/contacts?search=x")
    assert response.status_code == 303
    assert response.headers["location"] == "/contacts?search=x"
    cookie = next(h for h in response.headers.get_list("set-cookie") if h.startswith(f"{COOKIE}="))
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "expires", "max-age", "path"} <= attributes
    assert "samesite=strict" in cookie.lower()
    max_age = int(cookie.lower().split("max-age=")[1].split(";")[0])
    assert 1790 <= max_age <= 1800
    page = await browser.get("/")
    assert page.status_code == 200
    assert "Signed in as ada" in page.text


async def test_a_refused_token_does_not_sign_in(browser: httpx.AsyncClient) -> None:
    expired = mint_token(
        SECRET, "ada", dt.timedelta(minutes=5), now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    )
    for token, reason in ((expired, "Token has expired"), ("not-a-jwt", "Malformed token")):
        response = await sign_in(browser, token)
        assert response.status_code == 401
        assert reason in response.text
        assert COOKIE not in browser.cookies
    wrong_secret = mint_token("another-secret-" + "y" * 40, "ada", dt.timedelta(hours=1))
    response = await sign_in(browser, wrong_secret)
    assert response.status_code == 401 and "signature is invalid" in response.text


async def test_sign_in_needs_the_forms_own_nonce(browser: httpx.AsyncClient) -> None:
    """Another site cannot post a token of its choosing to sign this browser in."""
    token = mint_token(SECRET, "mallory", dt.timedelta(hours=1))
    response = await browser.post("/login", data={"token": token, "login_csrf": "guess"})
    assert response.status_code == 403
    assert COOKIE not in browser.cookies


async def test_an_expired_session_sends_the_browser_back_to_sign_in(
    browser: httpx.AsyncClient,
) -> None:
    browser.cookies.set(COOKIE, mint_token(SECRET, "ada", dt.timedelta(minutes=5)))
    assert (await browser.get("/contacts")).status_code == 200
    stale = mint_token(
        SECRET, "ada", dt.timedelta(minutes=5), now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    )
    browser.cookies.set(COOKIE, stale)
    response = await browser.get("/contacts")
    assert response.status_code == 303 and response.headers["location"].startswith("/login")


async def test_sign_out_ends_the_session(signed_in: httpx.AsyncClient) -> None:
    response = await post_form(signed_in, "/", "/logout", {})
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert COOKIE not in signed_in.cookies
    assert (await signed_in.get("/")).status_code == 303


async def test_a_write_without_the_csrf_token_is_refused(
    signed_in: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    ids = await add_contacts(api, 2)
    form = {"action": "sync:brevo", "ids": ids}
    missing = await signed_in.post("/contacts/actions", data=form)
    wrong = await signed_in.post("/contacts/actions", data={**form, "csrf_token": "0" * 64})
    assert missing.status_code == wrong.status_code == 403
    assert "CSRF" in missing.text
    listed = await api.get("/api/v3/contacts", params={"brevo_sync_status": "Selected"})
    assert listed.json() == []
    # The same write with the page's token goes through; so does the token in the header.
    token = csrf_of((await signed_in.get("/contacts")).text)
    ok = await signed_in.post("/contacts/actions", data={**form, "csrf_token": token})
    assert ok.status_code == 303
    by_header = await signed_in.post(
        "/contacts/actions",
        data={"action": "sync:hubspot", "ids": ids},
        headers={"X-CSRF-Token": token},
    )
    assert by_header.status_code == 303
    listed = await api.get("/api/v3/contacts", params={"hubspot_sync_status": "Selected"})
    assert len(listed.json()) == 2
    # Signing out needs it too.
    assert (await signed_in.post("/logout")).status_code == 403


async def test_a_read_only_token_may_look_but_not_change_anything(
    browser: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    ids = await add_contacts(api, 2)
    viewer = mint_token(SECRET, "viewer", dt.timedelta(hours=1), scope=READ)
    assert (await sign_in(browser, viewer)).status_code == 303
    page = await browser.get("/contacts")
    assert page.status_code == 200
    refused = await post_form(
        browser, "/contacts", "/contacts/actions", {"action": "sync:brevo", "ids": ids}
    )
    assert refused.status_code == 403 and "may only read" in refused.text
    listed = await api.get("/api/v3/contacts", params={"brevo_sync_status": "Selected"})
    assert listed.json() == []


async def test_the_session_cookie_never_authorises_the_api(signed_in: httpx.AsyncClient) -> None:
    token = csrf_of((await signed_in.get("/")).text)
    read = await signed_in.get("/api/v3/contacts")
    write = await signed_in.put(
        "/api/v3/contacts/crm/select/filtered",
        json={"all": True, "crms": ["brevo"]},
        headers={"X-CSRF-Token": token},
    )
    assert read.status_code == write.status_code == 401


async def test_every_page_carries_the_security_headers(signed_in: httpx.AsyncClient) -> None:
    for path in (*PAGES, "/login", "/static/app.css", "/overview/cards", "/healthz"):
        response = await signed_in.get(path)
        headers = response.headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
        assert "frame-ancestors 'none'" in csp, path
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["referrer-policy"] == "same-origin", path
        if response.headers.get("content-type", "").startswith("text/html"):
            assert "<script>" not in response.text and " onclick=" not in response.text, path
            assert " style=" not in response.text, path


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/contacts?x=1", "/contacts?x=1"),
        ("//evil.example/x", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("/login?next=/x", "/"),
        (None, "/"),
    ],
)
def test_after_sign_in_only_paths_on_this_site(value: str | None, expected: str) -> None:
    assert safe_next(value) == expected
