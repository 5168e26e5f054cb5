"""The Import page over HTTP on both databases: an upload's summary, its rejected rows (for this
session only), the refusals (bad files, too large, no CSRF token, a read-only token) writing
nothing, and the result store's expiry."""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.api.app import create_app
from crmsync.auth import READ, mint_token
from crmsync.settings import Settings
from crmsync.tables import contacts
from crmsync.web.import_results import ResultStore
from tests.conftest import SECRET
from tests.web.conftest import csrf_of, sign_in

GOOD = (
    "Email;Full Name;Phone Number;Website\r\n"
    "ana@acme.example;Ana Müller;+33 1 23 45 67 89;https://acme.example\r\n"
    "bo@acme.example;Bo;;\r\n"
    "not-an-email;Someone Wrong;;\r\n"
    "BO@acme.example;Bo Later;;\r\n"
)


@pytest.fixture
def app(settings: Settings, engine: AsyncEngine, tmp_path: Path) -> FastAPI:
    app = create_app(settings, SECRET, engine=engine)
    app.state.import_results = ResultStore(tmp_path / "imports")
    return app


async def _count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(contacts))).scalar_one())


async def _upload(
    browser: httpx.AsyncClient,
    content: bytes | str,
    name: str = "leads.csv",
    csrf: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    if csrf is None:
        csrf = csrf_of((await browser.get("/import")).text)
    raw = content.encode() if isinstance(content, str) else content
    return await browser.post(
        "/import",
        data={"csrf_token": csrf} if csrf else {},
        files={"file": (name, raw, "text/csv")},
        headers=headers,
    )


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


async def test_the_page_is_in_the_navigation_with_its_labelled_upload(
    signed_in: httpx.AsyncClient,
) -> None:
    page = await signed_in.get("/")
    assert '<a href="/import">Import</a>' in page.text
    form = await signed_in.get("/import")
    assert form.status_code == 200
    assert '<label for="import-file">CSV file</label>' in form.text
    assert 'id="import-file" name="file" type="file"' in form.text
    assert 'enctype="multipart/form-data"' in form.text
    assert 'href="/import" aria-current="page"' in form.text


async def test_an_upload_shows_its_summary_and_its_rejected_rows(
    signed_in: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    response = await _upload(signed_in, GOOD)
    assert response.status_code == 303, response.text
    target = response.headers["location"]
    assert re.fullmatch(r"/import\?result=[A-Za-z0-9_-]{22}", target)
    assert "acme" not in target
    page = await signed_in.get(target)
    text = _text(page.text)
    assert "Imported leads.csv" in text and "4 rows read (UTF-8, semicolon-separated)" in text
    for label, count in (
        ("Created", 2),
        ("Updated", 0),
        ("Unchanged", 0),
        ("Duplicates", 1),
        ("Rejected", 1),
    ):
        assert f"{label} {count}" in text
    assert await _count(engine) == 2

    link = re.search(r'href="(/import/rejects/[^"]+)"', page.text)
    assert link and "Download rejected rows" in page.text
    download = await signed_in.get(link.group(1))
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/csv")
    assert 'filename="leads.csv.rejected.csv"' in download.headers["content-disposition"]
    assert download.headers["cache-control"] == "no-store"
    rows = list(csv.reader(io.StringIO(download.text)))
    assert rows[0] == [
        "rejected_line",
        "rejected_reason",
        "Email",
        "Full Name",
        "Phone Number",
        "Website",
    ]
    assert (
        rows[1][0] == "4"
        and "email" in rows[1][1]
        and rows[1][2:4]
        == [
            "not-an-email",
            "Someone Wrong",
        ]
    )
    assert len(rows) == 2

    # The same file again: nothing created or updated, and no rejects file is offered twice.
    again = await signed_in.get((await _upload(signed_in, GOOD)).headers["location"])
    assert "Created 0" in _text(again.text) and "Unchanged 2" in _text(again.text)


async def test_a_clean_file_offers_no_download(signed_in: httpx.AsyncClient) -> None:
    response = await _upload(signed_in, "email,name\nzoe@acme.example,Zoë\n")
    page = await signed_in.get(response.headers["location"])
    assert "Created 1" in _text(page.text) and "Rejected 0" in _text(page.text)
    assert "/import/rejects/" not in page.text


async def test_the_rejected_rows_are_this_sessions_only(
    app: FastAPI, signed_in: httpx.AsyncClient, browser: httpx.AsyncClient
) -> None:
    page = await signed_in.get((await _upload(signed_in, GOOD)).headers["location"])
    link = re.search(r'href="(/import/rejects/[^"]+)"', page.text)
    assert link
    result = page.url.query.decode()
    # Another browser, signed in as the same user with another token: neither the result nor
    # its rows, even with the id.
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dash") as other:
        other_token = mint_token(SECRET, "dash-user", dt.timedelta(hours=2))
        assert (await sign_in(other, other_token)).status_code == 303
        assert (await other.get(link.group(1))).status_code == 404
        refused = await other.get(f"/import?{result}")
        assert refused.status_code == 404 and "no longer kept" in refused.text
        assert "not-an-email" not in refused.text
    # Signed out: sent to sign in.
    signed_in.cookies.clear()
    out = await signed_in.get(link.group(1))
    assert out.status_code == 303 and out.headers["location"].startswith("/login")


@pytest.mark.parametrize(
    ("content", "name", "expected"),
    [
        (
            "Full Name,Phone\nAna,123\n",
            "names.csv",
            "no email column: the file's columns are 'Full Name', 'Phone'. Name that column Email",
        ),
        (b"PK\x03\x04\x14\x00\x06\x00rest of a workbook", "book.xlsx", "zip file"),
        ("", "empty.csv", "the file is empty"),
        ("email\r\n".encode("utf-16-le"), "sixteen.csv", "UTF-16 without a byte-order mark"),
    ],
)
async def test_a_bad_file_says_what_to_do_and_writes_nothing(
    signed_in: httpx.AsyncClient,
    engine: AsyncEngine,
    content: str | bytes,
    name: str,
    expected: str,
) -> None:
    response = await _upload(signed_in, content, name)
    assert response.status_code == 400, response.text
    assert expected in html.unescape(response.text)
    assert "Nothing was imported." in response.text
    assert 'role="alert"' in response.text
    assert await _count(engine) == 0


async def test_a_broken_row_late_in_the_file_writes_nothing(
    signed_in: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The importer commits a chunk at a time; the page checks the whole file first."""
    rows = "".join(f"lead{i}@acme.example,Lead {i}\n" for i in range(5000))
    broken = "email,name\n" + rows + 'late@acme.example,"an unclosed quote\n' + "x" * 200_000
    response = await _upload(signed_in, broken)
    assert response.status_code == 400, response.text
    assert "Nothing was imported." in response.text
    assert await _count(engine) == 0


async def test_an_upload_over_the_limit_is_refused_before_it_is_read(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    settings.max_body_bytes = 4096
    app = create_app(settings, SECRET, engine=engine)
    app.state.import_results = ResultStore(tmp_path / "imports")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dash") as browser:
        assert (await sign_in(browser)).status_code == 303
        big = "email\n" + "".join(f"lead{i}@acme.example\n" for i in range(400))
        response = await _upload(browser, big, headers={"Accept": "text/html"})
        assert response.status_code == 413
        assert "too large for the dashboard: at most 0.0 MiB (4,096 bytes" in response.text
        assert "Nothing was imported." in response.text
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert await _count(engine) == 0


async def test_an_upload_without_the_csrf_token_is_refused(
    signed_in: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    missing = await _upload(signed_in, GOOD, csrf="")
    wrong = await _upload(signed_in, GOOD, csrf="0" * 64)
    for response in (missing, wrong):
        assert response.status_code == 403 and "CSRF token" in response.text
    assert await _count(engine) == 0


async def test_a_read_only_token_may_open_the_page_but_not_import(
    browser: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    viewer = mint_token(SECRET, "viewer", dt.timedelta(hours=1), scope=READ)
    assert (await sign_in(browser, viewer)).status_code == 303
    assert (await browser.get("/import")).status_code == 200
    refused = await _upload(browser, GOOD)
    assert refused.status_code == 403 and "may only read" in refused.text
    assert await _count(engine) == 0


async def test_no_file_chosen(signed_in: httpx.AsyncClient) -> None:
    response = await _upload(signed_in, b"", name="")
    assert response.status_code == 400 and "Choose a CSV file to import." in response.text


async def test_the_import_pages_carry_the_security_headers(signed_in: httpx.AsyncClient) -> None:
    page = await signed_in.get((await _upload(signed_in, GOOD)).headers["location"])
    link = re.search(r'href="(/import/rejects/[^"]+)"', page.text)
    assert link
    for response in (page, await signed_in.get(link.group(1)), await _upload(signed_in, "")):
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text and " style=" not in page.text
    assert '<script src="/static/import.js' in page.text


def test_results_expire_and_are_swept(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "imports", keep=60)
    with store.writing("owner") as (result_id, rejects):
        rejects.write("rejected_line,rejected_reason,email\n4,no email,\n")
    store.save(result_id, "owner", {"rows": 1})
    found = store.find(result_id, "owner")
    assert found is not None and found.rejects is not None
    assert store.find(result_id, "someone else") is None
    assert store.find("../../etc/passwd", "owner") is None
    assert (tmp_path / "imports").stat().st_mode & 0o777 == 0o700
    old = time.time() - 120
    for path in (tmp_path / "imports").iterdir():
        os.utime(path, (old, old))
    assert store.find(result_id, "owner") is None
    store.sweep()
    assert list((tmp_path / "imports").iterdir()) == []


async def test_a_database_failure_partway_says_how_many_rows_were_imported(
    signed_in: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    from crmsync.contacts.importer import ImportSummary
    from crmsync.web import imports

    async def failing(*_args: object, on_progress: Any, **_kwargs: object) -> ImportSummary:
        on_progress(ImportSummary(format="csv", dry_run=False, rows=2_000), 1_000)
        raise OperationalError("INSERT", {}, Exception("connection lost"))

    monkeypatch.setattr(imports, "import_contacts", failing)
    response = await _upload(signed_in, GOOD)
    assert response.status_code == 503
    text = html.unescape(response.text)
    assert "leads.csv: the database failed while importing." in text
    assert "The first 2,000 rows were imported: upload the same file again to finish" in text
