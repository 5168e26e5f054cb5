"""The dashboard in a real browser (Debian's Chromium through Playwright), against a real
`crmsync serve` and the sandbox, on SQLite and PostgreSQL.

The walk a person takes: sign in through the link, see the overview, search, filter, check three
contacts, "Sync to Brevo", watch their Brevo badges reach Complete (the page updates itself),
make a contact fail (Brevo refuses its email), find it on Failed, fix its email, retry it, see it
arrive, and sign out. Along the way: the overview refreshes without reloading, nothing the page
loads is blocked by its Content-Security-Policy, and the keyboard reaches the controls.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from crmsync.sandbox import SandboxConfig, SandboxServer
from tests.e2e.browser import Served, empty_database, launch, require_browser, serve
from tests.e2e.support import e2e_env

if TYPE_CHECKING:
    from playwright.sync_api import Page

# Our API accepts this address (one @, a dot in the domain); Brevo refuses it (an underscore in
# the domain), so the contact ends in Error there at once.
REFUSED = "pat.bad@acme_e2e.com"
GOOD = ("ana@acme-e2e.com", "bo@acme-e2e.com", "cy@acme-e2e.com")
FIXED = "pat.fixed@acme-e2e.com"


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(no_rate_limits=True, custom_fields=True)) as server:
        yield server


@pytest.fixture
def served(db_url: str, sandbox: SandboxServer, tmp_path: Path) -> Iterator[Served]:
    require_browser()
    empty_database(db_url)
    with serve(e2e_env(sandbox.env(), db_url), tmp_path) as running:
        contacts = [
            *({"email": e, "name": f"E2E {e[:2]}", "email_type": "CORPORATE"} for e in GOOD),
            {"email": REFUSED, "name": "E2E Pat", "email_type": "CORPORATE"},
            {"email": "dee@other-e2e.com", "name": "E2E Dee", "email_type": "FREE"},
            *({"email": f"lead{i}@example.com", "name": f"Lead {i}"} for i in range(20)),
        ]
        answer = running.api.post("/api/v3/contacts/bulk", json={"contacts": contacts})
        assert answer.status_code == 200 and answer.json()["created_count"] == 25, answer.text
        yield running


def _badge(page: Page, email: str, crm: str = "brevo") -> str:
    return f'tr:has(input[aria-label="{email}"]) .badge[data-crm="{crm}"]'


@pytest.mark.timeout(300)
def test_a_person_syncs_fixes_and_retries_in_the_browser(
    served: Served, sandbox: SandboxServer
) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1024, "height": 768})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            _walk(page, served, sandbox)
            assert problems == [], problems
        finally:
            browser.close()


def _walk(page: Page, served: Served, sandbox: SandboxServer) -> None:
    from playwright.sync_api import expect

    # Signed out, every page sends the browser to sign in.
    page.goto(f"{served.url}/contacts")
    expect(page).to_have_url(re.compile(r"/login\?next=/contacts$"))
    expect(page.get_by_label("Access token")).to_be_visible()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()

    # The link signs in at once, and the token leaves the address bar.
    page.goto(served.sign_in_link)
    expect(page).to_have_url(f"{served.url}/")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    for name in ("Brevo", "HubSpot", "Mautic", "n8n"):
        expect(page.get_by_role("region", name=name, exact=True)).to_be_visible()
    n8n = page.get_by_role("region", name="n8n", exact=True)
    expect(n8n).to_contain_text("0 synced in the last hour")

    # The overview refreshes itself: a sync made elsewhere shows up without a reload.
    page.evaluate("window.__stillHere = true")
    selected = served.api.put(
        "/api/v3/contacts/crm/select/filtered",
        json={"email_contains": "other-e2e", "crms": ["n8n"]},
    )
    assert selected.status_code == 200, selected.text
    expect(n8n).to_contain_text("1 synced in the last hour", timeout=30_000)
    assert page.evaluate("window.__stillHere") is True

    # Contacts: search, filter, check three, sync them to Brevo.
    page.get_by_role("link", name="Contacts").click()
    expect(page.get_by_text("25 contacts", exact=True)).to_be_visible()
    page.get_by_label("Search").fill("e2e")
    page.get_by_label("Search").press("Enter")
    expect(page.get_by_text("5 contacts", exact=True)).to_be_visible()
    page.get_by_label("Email type").select_option("CORPORATE")
    page.get_by_role("button", name="Apply filters").click()
    expect(page.get_by_text("4 contacts", exact=True)).to_be_visible()
    for email in GOOD:
        page.get_by_label(email, exact=True).check()
    page.get_by_role("button", name="Sync to Brevo").click()
    expect(page.get_by_role("status")).to_contain_text("Sync to Brevo: 3 contacts selected")
    for email in GOOD:
        expect(page.locator(_badge(page, email))).to_have_text("Complete", timeout=30_000)
    expect(page.locator(_badge(page, REFUSED))).to_have_text("New")
    assert {c["email"] for c in sandbox.contacts("brevo")} == set(GOOD)

    # A contact Brevo refuses ends in Error, in front of the person.
    page.get_by_label(REFUSED, exact=True).check()
    page.get_by_role("button", name="Sync to Brevo").click()
    expect(page.locator(_badge(page, REFUSED))).to_have_text("Error", timeout=30_000)

    # Failed: grouped by CRM and message; open it, fix the email, retry it.
    page.get_by_role("link", name="Failed").click()
    brevo = page.get_by_role("region", name="Brevo")
    expect(brevo).to_contain_text("Invalid email address")
    expect(brevo).to_contain_text("1 contact")
    brevo.get_by_role("link", name=REFUSED).click()
    expect(page.get_by_role("heading", name=REFUSED)).to_be_visible()
    expect(page.get_by_text("Last error: Invalid email address")).to_be_visible()
    page.get_by_label("Email", exact=True).fill(FIXED)
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text("Saved.")
    page.get_by_role("link", name="Failed").click()
    item = page.get_by_role("listitem").filter(has_text=FIXED)
    item.get_by_role("button", name="Retry").click()
    expect(page.get_by_role("status")).to_have_text("Retrying 1 contact for Brevo.")
    _until(lambda: FIXED in {c["email"] for c in sandbox.contacts("brevo")}, "Brevo to hold it")
    page.reload()
    expect(page.get_by_text("No contact is in Error.")).to_be_visible()

    _import(page, served)

    # The keyboard reaches everything: the first Tab lands on "Skip to content".
    page.get_by_role("link", name="Contacts").click()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()

    # Sign out ends the session.
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{served.url}/login")
    page.goto(f"{served.url}/")
    expect(page).to_have_url(f"{served.url}/login")


IMPORTED = (
    "E-mail;Full Name;Phone\r\n"
    "imp.ana@import-e2e.com;Ana Importée;+33 1 23 45 67 89\r\n"
    "imp.bo@import-e2e.com;Bo Import;\r\n"
    "not an email;Rejected Row;\r\n"
    f"{GOOD[0]};E2E an, renamed;\r\n"
)


def _import(page: Page, served: Served) -> None:
    """Import: upload a CSV file, read its summary, download its rejected rows."""
    from playwright.sync_api import expect

    page.get_by_role("link", name="Import").click()
    expect(page.get_by_role("heading", name="Import", exact=True)).to_be_visible()
    page.get_by_label("CSV file").set_input_files(
        files=[{"name": "leads.csv", "mimeType": "text/csv", "buffer": IMPORTED.encode()}]
    )
    page.get_by_role("button", name="Import", exact=True).click()
    result = page.get_by_role("region", name="Imported leads.csv")
    expect(result).to_contain_text("4 rows read (UTF-8, semicolon-separated)")
    summary = result.locator(".import-summary")
    for label, count in (("Created", 2), ("Updated", 1), ("Unchanged", 0), ("Rejected", 1)):
        expect(summary.locator(f"div:has(dt:text-is('{label}')) dd")).to_have_text(str(count))
    assert "import-e2e" not in page.url
    with page.expect_download() as info:
        result.get_by_role("link", name="Download rejected rows").click()
    download = info.value
    assert download.suggested_filename == "leads.csv.rejected.csv"
    rejected = Path(download.path()).read_text(encoding="utf-8").splitlines()
    assert rejected[0] == "rejected_line,rejected_reason,E-mail,Full Name,Phone"
    assert len(rejected) == 2 and rejected[1].startswith("4,") and "not an email" in rejected[1]
    found = served.api.get("/api/v3/contacts", params={"email_contains": "import-e2e"}).json()
    assert sorted(c["email"] for c in found) == ["imp.ana@import-e2e.com", "imp.bo@import-e2e.com"]


def _until(condition: object, what: str, within: float = 30.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        time.sleep(0.1)
