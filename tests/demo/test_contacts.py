"""The generated contacts the demo seeds: realistic, varied, and valid where they should be."""

from __future__ import annotations

import re
from collections import Counter

import phonenumbers

from crmsync.connectors.mapping import international_phone
from crmsync.contacts.schemas import ContactCreate
from crmsync.demo.contacts import invalid_email_indexes, realistic_contacts
from crmsync.sandbox.common import is_valid_email


def test_the_contacts_are_varied_like_scraped_leads() -> None:
    rows = realistic_contacts(500, invalid_every=97)
    assert len({row["email"].lower() for row in rows}) == 500
    types = Counter(row["email_type"] for row in rows)
    assert set(types) == {"SERVICE", "CORPORATE", "FREE", "UNKNOWN", None}
    assert min(types.values()) >= 10, types
    names = [row["name"] or "" for row in rows]
    assert sum(bool(re.search(r"[^\x00-\x7f]", name)) for name in names) >= 50
    # Phones: placeholders and local numbers, and several countries' international formats.
    valid = [p for row in rows if (p := international_phone(row["phone_number"]))]
    countries = Counter(phonenumbers.parse(phone).country_code for phone in valid)
    assert {33, 49, 44, 34, 1} <= set(countries), countries
    assert any(row["phone_number"] == "Phone not found" for row in rows)
    assert any(str(row["phone_number"]).startswith("0049 ") for row in rows)
    # Every row is one the API accepts.
    for row in rows:
        ContactCreate.model_validate(row)


def test_a_few_emails_pass_our_check_but_not_a_vendors() -> None:
    rows = realistic_contacts(500, invalid_every=97)
    refused = [i for i, row in enumerate(rows) if not is_valid_email(row["email"])]
    assert refused == invalid_email_indexes(500, 97)
    assert 3 <= len(refused) <= 10
    assert len({rows[i]["email_type"] for i in refused}) >= 3  # spread over the segments


def test_without_invalid_emails_every_email_is_valid_and_phones_are_unique() -> None:
    rows = realistic_contacts(20_000)
    assert all(is_valid_email(row["email"]) for row in rows)
    assert invalid_email_indexes(20_000, 0) == []
    # Brevo refuses an SMS number already on another contact: every valid one is unique.
    phones = Counter(p for row in rows if (p := international_phone(row["phone_number"])))
    assert phones and max(phones.values()) == 1


def test_the_same_index_gives_the_same_contact() -> None:
    assert realistic_contacts(50, invalid_every=7) == realistic_contacts(50, invalid_every=7)
    assert realistic_contacts(10) == realistic_contacts(30)[:10]
