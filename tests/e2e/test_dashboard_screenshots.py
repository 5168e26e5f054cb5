"""Screenshots of every dashboard page over a demo-like database (docs/screenshots/).

A real `crmsync serve` syncs 400 scraped-looking contacts to the sandbox: Brevo takes most of them
and refuses a few addresses, Mautic fails every request (so its contacts end in Error after their
retries), n8n takes a segment, HubSpot is paused after a rate limit. Then Chromium, 1280 px wide,
photographs each page. The test checks the pages show that state; the pictures go to a temporary
directory, or to docs/screenshots/ with `CRMSYNC_SCREENSHOTS=1`:

    CRMSYNC_SCREENSHOTS=1 .venv/bin/pytest tests/e2e/test_dashboard_screenshots.py
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import insert

from crmsync import db
from crmsync.sandbox import SandboxConfig, SandboxServer
from crmsync.tables import crm_control
from tests.e2e.browser import Served, launch, require_browser, serve
from tests.e2e.support import e2e_env, realistic_contacts

DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
REFUSED = [f"lead.{n}@bad_domain{n}.com" for n in range(4)]


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    config = SandboxConfig(
        no_rate_limits=True,
        custom_fields=True,
        faults={"mautic": {"error_rate": 1.0, "faults_on": "writes"}},
    )
    with SandboxServer(config) as server:
        yield server


def _pause_hubspot(url: str) -> None:
    async def write() -> None:
        engine = db.create_engine(url)
        now = dt.datetime.now(dt.UTC)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    insert(crm_control).values(
                        crm="hubspot",
                        manual_pause=False,
                        paused_until=now + dt.timedelta(minutes=42),
                        pause_kind="rate_limit",
                        pause_reason="HubSpot answered 429: the daily limit is reached",
                        updated_at=now,
                    )
                )
        finally:
            await engine.dispose()

    asyncio.run(write())


def _populate(served: Served, url: str) -> str:
    """The demo-like state; returns the id of a contact with a varied history."""
    rows = realistic_contacts(400)
    rows += [{"email": e, "name": "Refused Lead", "email_type": "SERVICE"} for e in REFUSED]
    answer = served.api.post("/api/v3/contacts/bulk", json={"contacts": rows})
    assert answer.status_code == 200, answer.text

    def select(crms: list[str], **filters: object) -> None:
        body = {"crms": crms, **filters}
        response = served.api.put("/api/v3/contacts/crm/select/filtered", json=body)
        assert response.status_code == 200, response.text

    select(["brevo"], email_type="CORPORATE")
    select(["brevo"], email_type="SERVICE")
    select(["n8n"], email_type="FREE")
    select(["mautic"], email_contains="acme")

    def settled() -> bool:
        summary = served.api.get("/api/v3/crm/status/summary").json()["crms"]
        waiting = ("Selected", "Queued", "Processing")
        return all(summary[crm][st] == 0 for crm in ("brevo", "n8n", "mautic") for st in waiting)

    _wait(settled, "the syncs to settle", 90)
    _pause_hubspot(url)
    found = served.api.get("/api/v3/contacts", params={"email_contains": "acme", "limit": 1})
    return str(found.json()[0]["id"])


def _leads() -> bytes:
    """A spreadsheet's export: semicolons, Windows-1252, new leads, a few known, a few refused."""
    rows = ["Email;First Name;Last Name;Phone;Website;Notes"]
    for n, contact in enumerate(realistic_contacts(60)[::2]):
        first, _, last = str(contact.get("name") or "Lead").partition(" ")
        phone = contact.get("phone_number") or ""
        rows.append(f"{contact['email']};{first};{last};{phone};https://example.com/{n};")
    for n in range(120):
        rows.append(f"new.lead{n}@societe{n % 7}.fr;Zoé;Lefèvre {n};+33 6 12 34 56 {n % 90:02d};;")
    rows += ["jean.dupont(at)mail.fr;Jean;Dupont;;;", ";Sans;Adresse;;;", "x@;Half;Address;;;"]
    return ("\r\n".join(rows) + "\r\n").encode("cp1252", errors="replace")


def _wait(condition: object, what: str, within: float) -> None:
    import time

    assert callable(condition)
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        time.sleep(0.2)


@pytest.mark.timeout(300)
def test_screenshots_of_every_page(sandbox: SandboxServer, tmp_path: Path) -> None:
    require_browser()
    from playwright.sync_api import expect, sync_playwright

    target = DOCS if os.environ.get("CRMSYNC_SCREENSHOTS") == "1" else tmp_path / "shots"
    target.mkdir(parents=True, exist_ok=True)
    url = f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}"
    extra = {"MAUTIC_SYNC_MAX_RETRIES": "1", "MAUTIC_SYNC_RETRY_DELAY_SECONDS": "0.05"}
    with serve(e2e_env(sandbox.env(), url, **extra), tmp_path) as served:
        contact = _populate(served, url)
        with sync_playwright() as playwright:
            browser = launch(playwright)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                page.goto(served.sign_in_link)
                expect(page.get_by_role("heading", name="Overview")).to_be_visible()
                hubspot = page.get_by_role("region", name="HubSpot", exact=True)
                expect(hubspot).to_contain_text("Paused: rate limit")
                expect(page.get_by_role("region", name="Mautic")).to_contain_text("in Error")
                page.screenshot(path=target / "overview.png", full_page=True)

                page.goto(f"{served.url}/contacts?search=acme")
                expect(page.locator("#total")).to_contain_text("contacts")
                for box in page.locator("input[name='ids']").all()[:3]:
                    box.check()
                page.screenshot(path=target / "contacts.png", full_page=False)

                page.goto(f"{served.url}/failed")
                expect(page.get_by_role("region", name="Brevo")).to_contain_text(
                    "Invalid email address"
                )
                page.screenshot(path=target / "failed.png", full_page=True)

                page.goto(f"{served.url}/contacts/{contact}")
                expect(page.get_by_role("heading", name="Sync history")).to_be_visible()
                page.screenshot(path=target / "contact.png", full_page=True)

                page.goto(f"{served.url}/import")
                page.get_by_label("CSV file").set_input_files(
                    files=[{"name": "leads.csv", "mimeType": "text/csv", "buffer": _leads()}]
                )
                page.get_by_role("button", name="Import", exact=True).click()
                expect(page.get_by_role("region", name="Imported leads.csv")).to_contain_text(
                    "Download rejected rows"
                )
                page.screenshot(path=target / "import.png", full_page=True)

                # Signed out: a page of its own context, without the session cookie.
                signed_out = browser.new_page(viewport={"width": 1280, "height": 640})
                signed_out.goto(f"{served.url}/login")
                expect(signed_out.get_by_label("Access token")).to_be_focused()
                signed_out.screenshot(path=target / "login.png")
            finally:
                browser.close()
    assert sorted(p.name for p in target.glob("*.png")) >= [
        "contact.png",
        "contacts.png",
        "failed.png",
        "import.png",
        "login.png",
        "overview.png",
    ]
