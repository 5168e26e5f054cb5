"""The dashboard's pages and actions, over HTTP on both databases: what each page says, what
each button does, and that no secret ever shows."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import counts
from crmsync.settings import Settings
from crmsync.sync import control
from crmsync.sync.control import PauseKind
from crmsync.tables import crm_control, crm_sync_state, sync_events
from crmsync.web import actions, pages
from tests.conftest import add_contacts
from tests.web.conftest import csrf_of, fail_rows, post_form


def _card(html: str, crm: str) -> str:
    """The markup of one CRM's card on the overview."""
    start = html.index(f'aria-labelledby="card-{crm}"')
    end = html.find("</section>", start)
    return html[start:end]


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))


async def _select(api: httpx.AsyncClient, crm: str, ids: list[str]) -> None:
    body = {"contact_ids": ids, "crms": [crm]}
    response = await api.put("/api/v3/contacts/crm/select", json=body)
    assert response.status_code == 200, response.text


# -- Overview ------------------------------------------------------------------------------------


async def test_overview_shows_each_crms_state_and_counts(
    signed_in: httpx.AsyncClient,
    api: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    ids = await add_contacts(api, 5)
    settings.brevo.api_key = SecretStr("brevo-key-do-not-show-0123456789")
    settings.n8n.webhook_url = "https://hooks.example/secret-path-do-not-show"
    settings.hubspot.access_token = SecretStr("pat-do-not-show-0123456789")
    await _select(api, "brevo", ids[:3])
    now = dt.datetime.now(dt.UTC)
    async with engine.begin() as conn:
        until = now + dt.timedelta(minutes=5)
        await control.pause_until(
            conn, control.Crm.hubspot, until, PauseKind.rate_limit, "HubSpot answered 429", now
        )
        await control.pause_until(
            conn, control.Crm.n8n, until, PauseKind.auth, "n8n answered 401", now
        )
    await fail_rows(engine, "brevo", ids[:1], "Invalid email address")

    page = await signed_in.get("/")
    assert page.status_code == 200
    html = page.text
    for secret in ("brevo-key-do-not-show", "secret-path-do-not-show", "pat-do-not-show"):
        assert secret not in html
    assert "5 contacts" in _text(html)

    brevo = _text(_card(html, "brevo"))
    # Brevo is configured but no worker runs in this test: its contacts wait for one.
    assert "Waiting for a worker" in brevo and "2 contacts waiting" in brevo
    assert "Selected 2" in brevo and "Error 1" in brevo and "New 2" in brevo
    assert "BREVO_API_KEY set" in brevo and "BREVO_LIST_ID not set" in brevo

    hubspot = _text(_card(html, "hubspot"))
    assert "Paused" in hubspot and "Paused: rate limit: HubSpot answered 429" in hubspot
    assert f"Resumes at {until:%Y-%m-%d %H:%M:%S} UTC" in hubspot and "(in 5 min)" in hubspot

    n8n = _text(_card(html, "n8n"))
    assert "Paused: authentication failure: n8n answered 401" in n8n
    assert "N8N_WEBHOOK_URL set" in n8n

    mautic = _text(_card(html, "mautic"))
    assert "Disabled" in mautic and "Not configured: MAUTIC_BASE_URL is not set" in mautic
    assert "MAUTIC_PASSWORD not set" in mautic

    # The refresh fetches the same cards.
    cards = await signed_in.get("/overview/cards")
    assert cards.status_code == 200 and "<html" not in cards.text
    assert "Paused: rate limit" in _text(_card(cards.text, "hubspot"))


async def test_a_pause_of_a_new_kind_shows_its_kind_reason_and_end(
    signed_in: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    settings.brevo.api_key = SecretStr("k")
    now = dt.datetime.now(dt.UTC)
    until = now + dt.timedelta(seconds=90)
    async with engine.begin() as conn:
        # A kind this branch's engine does not write yet, as a worker would store it.
        await conn.execute(
            insert(crm_control).values(
                crm="brevo",
                manual_pause=False,
                paused_until=until,
                pause_kind="outage",
                pause_reason="Brevo answered 503 five times",
                updated_at=now,
            )
        )
        await control.set_manual(conn, control.Crm.hubspot, True, now)
        await control.set_manual(conn, control.Crm.brevo, True, now)
    html = (await signed_in.get("/")).text
    brevo = _text(_card(html, "brevo"))
    assert "Paused: outage: Brevo answered 503 five times" in brevo
    assert f"Resumes at {until:%Y-%m-%d %H:%M:%S} UTC" in brevo
    # Paused by an operator as well: both pauses are listed.
    assert "Paused by an operator. Resume with crmsync resume --crm brevo." in brevo
    hubspot = _text(_card(html, "hubspot"))
    # HubSpot has no credentials, and not being configured is said first.
    assert "Disabled" in hubspot and "Paused" not in hubspot


async def test_the_sparkline_counts_contacts_synced_per_minute(
    signed_in: httpx.AsyncClient, api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    ids = await add_contacts(api, 3)
    now = dt.datetime.now(dt.UTC)
    rows = []
    spread = ((0, "ok", 2), (1, "ok", 3), (1, "unchanged", 1), (5, "error", 4), (90, "ok", 7))
    for minutes_ago, outcome, n in spread:
        for i in range(n):
            rows.append(
                {
                    "contact_id": uuid.UUID(ids[i % 3]),
                    "crm": "brevo",
                    "outcome": outcome,
                    "attempt": 1,
                    "duration_ms": 5,
                    "created_at": now - dt.timedelta(minutes=minutes_ago),
                }
            )
    async with engine.begin() as conn:
        await conn.execute(insert(sync_events), rows[:5])
        await conn.execute(insert(sync_events), rows[5:])
    brevo = _text(_card((await signed_in.get("/")).text, "brevo"))
    # 2 + 3 + 1 synced within the hour; the failures and the event 90 minutes ago are not.
    assert "6 synced in the last hour" in brevo
    assert "6 contacts synced in the last hour, at most 4 in a minute" in _card(
        (await signed_in.get("/")).text, "brevo"
    )
    async with engine.begin() as conn:
        await counts.compact(conn)  # PostgreSQL folds the minutes: the sums stay
    assert "6 synced in the last hour" in _text(_card((await signed_in.get("/")).text, "brevo"))


# -- Contacts ------------------------------------------------------------------------------------


async def test_contacts_search_filters_and_total(
    signed_in: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    rows = [
        {"email": "ada@lovelace.example", "name": "Ada Lovelace", "email_type": "CORPORATE"},
        {"email": "grace@navy.example", "name": "Grace Hopper", "email_type": "FREE"},
        {"email": "alan@turing.example", "name": "Alan Lovelace-Turing", "email_type": "FREE"},
    ]
    assert (await api.post("/api/v3/contacts/bulk", json={"contacts": rows})).status_code == 200
    page = await signed_in.get("/contacts")
    assert "3 contacts" in _text(page.text)
    # Search matches the email or the name.
    found = await signed_in.get("/contacts", params={"search": "LOVELACE"})
    assert "2 contacts" in _text(found.text)
    assert "ada@lovelace.example" in found.text and "alan@turing.example" in found.text
    assert "grace@navy.example" not in found.text
    one = await signed_in.get("/contacts", params={"search": "lovelace", "email_type": "FREE"})
    assert "1 contact " in _text(one.text) and "alan@turing.example" in one.text
    listed = await api.get("/api/v3/contacts", params={"search": "hopper"})
    assert [c["email"] for c in listed.json()] == ["grace@navy.example"]
    assert listed.headers["x-total-count"] == "1"
    bad = await signed_in.get("/contacts", params={"brevo_sync_status": "Nonsense"})
    assert bad.status_code == 200 and "Unknown filter value" in bad.text
    assert "3 contacts" in _text(bad.text)


async def test_contacts_pages_with_the_total(
    signed_in: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    await add_contacts(api, 55)
    first = _text((await signed_in.get("/contacts")).text)
    assert "55 contacts" in first and "Next page" in first
    assert "Showing 1\N{EN DASH}50 of 55" in first
    second = _text((await signed_in.get("/contacts", params={"offset": 50})).text)
    assert "Showing 51\N{EN DASH}55 of 55" in second and "Previous page" in second


async def test_sync_checked_contacts_then_unselect(
    signed_in: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    ids = await add_contacts(api, 4)
    response = await post_form(
        signed_in,
        "/contacts",
        "/contacts/actions",
        {"action": "sync:brevo", "ids": ids[:3], "return_to": "/contacts?search=user"},
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/contacts?search=user"
    page = await signed_in.get(response.headers["location"])
    assert "Sync to Brevo: 3 contacts selected, 3 queued." in page.text
    assert "Brevo is not configured (BREVO_API_KEY is not set)" in page.text
    assert page.text.count('data-crm="brevo">Selected<') == 3
    # The message is shown once.
    assert "3 contacts selected" not in (await signed_in.get("/contacts")).text
    badges = (await signed_in.get("/contacts/badges", params={"id": ids})).json()
    assert [badges[i]["brevo"] for i in ids] == ["Selected", "Selected", "Selected", "New"]

    response = await post_form(
        signed_in, "/contacts", "/contacts/actions", {"action": "unselect", "ids": ids[:1]}
    )
    page = await signed_in.get(response.headers["location"])
    assert "Unselected 1 contact from Brevo, HubSpot, Mautic and n8n." in page.text
    badges = (await signed_in.get("/contacts/badges", params={"id": ids})).json()
    assert [badges[i]["brevo"] for i in ids] == ["New", "Selected", "Selected", "New"]

    nothing = await post_form(signed_in, "/contacts", "/contacts/actions", {"action": "sync:n8n"})
    assert "Check at least one contact" in (await signed_in.get("/contacts")).text
    assert nothing.status_code == 303


async def test_select_all_matching_asks_first_when_many(
    signed_in: httpx.AsyncClient, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(actions, "CONFIRM_ABOVE", 3)
    await add_contacts(api, 3, email_type="FREE")
    await add_contacts(api, 4, email_type="CORPORATE")
    form = {"action": "sync:hubspot", "all_matching": "1", "email_type": "FREE"}
    small = await post_form(signed_in, "/contacts", "/contacts/actions", form)
    assert small.status_code == 303
    assert "Sync to HubSpot: 3 contacts selected" in (await signed_in.get("/contacts")).text

    many = {**form, "email_type": "CORPORATE"}
    asked = await post_form(signed_in, "/contacts", "/contacts/actions", many)
    assert asked.status_code == 200
    assert "Sync 4 contacts to HubSpot?" in asked.text
    listed = await api.get("/api/v3/contacts", params={"hubspot_sync_status": "Selected"})
    assert listed.headers["x-total-count"] == "3"  # nothing happened yet
    confirmed = await signed_in.post(
        "/contacts/actions", data={**many, "confirmed": "4", "csrf_token": csrf_of(asked.text)}
    )
    assert confirmed.status_code == 303
    listed = await api.get("/api/v3/contacts", params={"hubspot_sync_status": "Selected"})
    assert listed.headers["x-total-count"] == "7"

    # No filter at all: every contact, still confirmed first.
    everything = {"action": "sync:mautic", "all_matching": "1"}
    asked = await post_form(signed_in, "/contacts", "/contacts/actions", everything)
    assert "Sync 7 contacts to Mautic?" in asked.text
    await signed_in.post(
        "/contacts/actions",
        data={**everything, "confirmed": "7", "csrf_token": csrf_of(asked.text)},
    )
    listed = await api.get("/api/v3/contacts", params={"mautic_sync_status": "Selected"})
    assert listed.headers["x-total-count"] == "7"


# -- Contact ---------------------------------------------------------------------------------------


async def test_contact_page_edits_and_shows_state(
    signed_in: httpx.AsyncClient, api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    (cid,) = await add_contacts(api, 1)
    await _select(api, "brevo", [cid])
    await fail_rows(engine, "brevo", [cid], "Invalid email address")
    page = await signed_in.get(f"/contacts/{cid}")
    assert page.status_code == 200
    text = _text(page.text)
    assert "Last error: Invalid email address" in text
    assert 'data-crm="brevo">Error<' in page.text

    bad = await post_form(
        signed_in, f"/contacts/{cid}", f"/contacts/{cid}/edit", {"email": "not an email"}
    )
    assert "Not saved" in (await signed_in.get(bad.headers["location"])).text
    ok = await post_form(
        signed_in,
        f"/contacts/{cid}",
        f"/contacts/{cid}/edit",
        {"email": "fixed@example.com", "name": "Fixed Name", "phone_number": ""},
    )
    page = await signed_in.get(ok.headers["location"])
    assert "Saved." in page.text and 'value="fixed@example.com"' in page.text
    retried = await post_form(
        signed_in,
        f"/contacts/{cid}",
        "/failed/retry",
        {"crm": "brevo", "scope": "contact", "contact_id": cid, "return_to": f"/contacts/{cid}"},
    )
    page = await signed_in.get(retried.headers["location"])
    assert "Retrying 1 contact for Brevo." in page.text
    assert 'data-crm="brevo">Selected<' in page.text

    missing = await signed_in.get(f"/contacts/{uuid.uuid4()}")
    assert missing.status_code == 404 and "There is no contact with this id." in missing.text
    assert (await signed_in.get("/contacts/not-an-id")).status_code == 404


# -- Failed ----------------------------------------------------------------------------------------


async def test_failed_groups_by_crm_and_message_and_retries(
    signed_in: httpx.AsyncClient, api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    ids = await add_contacts(api, 9)
    await _select(api, "brevo", ids[:7])
    await _select(api, "hubspot", ids[7:])
    await fail_rows(engine, "brevo", ids[:6], "Invalid email address")
    await fail_rows(engine, "brevo", ids[6:7], "Max retries exceeded. Last error: 503")
    await fail_rows(engine, "hubspot", ids[7:], "Property values were not valid")

    page = await signed_in.get("/failed")
    text = _text(page.text)
    assert "9 contacts in Error" in text
    assert "Brevo 7 failed" in text and "HubSpot 2 failed" in text
    assert "Invalid email address 6 contacts" in text
    assert "Show all 6 contacts with this error" in text  # 5 are listed
    assert page.text.count("Retry all failed") == 2

    group = await signed_in.get(
        "/failed", params={"crm": "brevo", "error": "Invalid email address"}
    )
    assert "6 contacts in Error with this message." in _text(group.text)

    one = await post_form(
        signed_in,
        "/failed",
        "/failed/retry",
        {"crm": "brevo", "scope": "group", "error": "Max retries exceeded. Last error: 503"},
    )
    assert "Retrying 1 contact for Brevo." in (await signed_in.get(one.headers["location"])).text
    group_retry = await post_form(
        signed_in,
        "/failed",
        "/failed/retry",
        {"crm": "brevo", "scope": "group", "error": "Invalid email address"},
    )
    assert "Retrying 6 contacts" in (await signed_in.get(group_retry.headers["location"])).text
    everything = await post_form(
        signed_in, "/failed", "/failed/retry", {"crm": "hubspot", "scope": "all"}
    )
    assert (
        "Retrying 2 contacts for HubSpot"
        in (await signed_in.get(everything.headers["location"])).text
    )
    assert "No contact is in Error." in (await signed_in.get("/failed")).text
    s = crm_sync_state.c
    async with engine.connect() as conn:
        statuses = (await conn.execute(select(s.sync_status).distinct())).scalars().all()
    assert statuses == ["Selected"]


async def test_a_costly_combination_is_counted_up_to_a_cap(
    signed_in: httpx.AsyncClient, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pages, "PAGE_SIZE", 2)
    monkeypatch.setattr(pages, "COUNT_CAP", 3)
    ids = await add_contacts(api, 5, email_type="FREE")
    await add_contacts(api, 2, email_type="CORPORATE")
    await _select(api, "brevo", ids)
    combined = {"brevo_sync_status": "Selected", "email_type": "FREE"}
    first = _text((await signed_in.get("/contacts", params=combined)).text)
    assert "More than 3 contacts" in first
    assert "Showing 1\N{EN DASH}2 of more than 3" in first and "Next page" in first
    last = _text((await signed_in.get("/contacts", params={**combined, "offset": 4})).text)
    assert "5 contacts" in last and "More than" not in last
    # One filter alone is counted exactly from kept totals, however many match.
    alone = _text((await signed_in.get("/contacts", params={"email_type": "FREE"})).text)
    assert "5 contacts" in alone and "More than" not in alone
