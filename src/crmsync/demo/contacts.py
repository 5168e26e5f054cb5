"""Generated contacts that look like the customer's scraper output (the demo seeds them; the
end-to-end tests and benchmarks push them).

Deterministic: contact `i` is the same on every call, so a generated list can be compared with
what reached a vendor. Every email is unique, and so is every valid international phone (Brevo
refuses an SMS number already on another contact).
"""

from __future__ import annotations

import uuid
from typing import Any

# Placeholder values the scraper writes; no connector may send them as data.
PLACEHOLDERS = ("Contact at", "Phone not found", "No name", "N/A")

_FIRST = ["Jane", "Ahmed", "Léa", "Björn", "Chen", "Priya", "Tom", "Zoë", "Olu", "María"]
_LAST = ["Smith", "Dubois", "Müller", "O'Connor", "Nakamura", "Okafor", "Rossi", "Kowalski"]
_COMPANIES = ["acme", "globex", "initech", "umbrella", "hooli", "vandelay", "wonka", "stark"]
_TLDS = ["com", "co.uk", "de", "io", "fr"]
_PAGES = ["contact", "team", "about-us", "impressum", None]
_NAMESPACE = uuid.UUID("0d6c3a4e-3f0e-4d8a-9a43-5b1f2a9e7c10")
# Where the first invalid email goes when `invalid_every` is set (not 0: row 0 is a placeholder
# name, and the demo's first rows should look ordinary).
_FIRST_INVALID = 13


def realistic_contacts(count: int, *, invalid_every: int = 0) -> list[dict[str, Any]]:
    """`count` contacts as the customer's scraper produces them, each with a unique email.

    Names include placeholders ("Contact at x.com", "No name"), missing ones and accented ones;
    phones include "Phone not found", "N/A", a local number many contacts share, and unique
    numbers in French, German, British, Spanish and US formats (`+`, `00`, dotted, bracketed);
    email types, gmail flags, domain and page ids vary, some are missing.

    With `invalid_every=N`, one contact in N gets an email that passes crmsync's loose check but
    that a vendor refuses, as scraped data has: two dots in a row, an underscore in the domain,
    a digit in the top-level domain.
    """
    return [_contact(i, invalid_every) for i in range(count)]


def invalid_email_indexes(count: int, invalid_every: int) -> list[int]:
    """The rows of `realistic_contacts(count, invalid_every=...)` whose email a vendor refuses."""
    if invalid_every <= 0:
        return []
    return list(range(_FIRST_INVALID % invalid_every, count, invalid_every))


def _contact(i: int, invalid_every: int) -> dict[str, Any]:
    company = _COMPANIES[i % len(_COMPANIES)]
    domain = f"{company}{i % 150}.{_TLDS[i % len(_TLDS)]}"
    first, last = _FIRST[i % len(_FIRST)], _LAST[(i // 7) % len(_LAST)]
    page = _PAGES[i % len(_PAGES)]
    email, email_type, gmail = _email(i, domain, company, first, last)
    if invalid_every > 0 and i % invalid_every == _FIRST_INVALID % invalid_every:
        email = _invalid_email(i, i // invalid_every, email, company)
    return {
        "email": email,
        "name": _name(i, domain, first, last),
        "phone_number": _phone(i),
        "email_type": email_type,
        "has_gmail": gmail,
        "context": f"Found on the {page} page of {domain}" if page else None,
        "source_url": f"https://www.{domain}/{page}" if page else f"https://{domain}",
        "domain_id": str(uuid.uuid5(_NAMESPACE, domain)) if i % 9 else None,
        "page_id": str(uuid.uuid5(_NAMESPACE, f"{domain}/{page}")) if page else None,
        "source_job_id": str(uuid.uuid5(_NAMESPACE, f"job{i // 500}")),
    }


def _email(
    i: int, domain: str, company: str, first: str, last: str
) -> tuple[str, str | None, bool | None]:
    kind = i % 6
    if kind == 0:
        return f"info.{i}@{domain}", "SERVICE", False
    if kind == 1:
        local = f"{first}.{last}".lower().encode("ascii", "ignore").decode().replace("'", "")
        return f"{local}{i}@{domain}", "CORPORATE", False
    if kind == 2:
        return f"{company}.lead{i}@gmail.com", "FREE", True
    if kind == 3:
        return f"Sales.Team.{i}@{domain.upper()}", "CORPORATE", False
    if kind == 4:
        return f"hello+{i}@{domain}", "SERVICE", False
    return f"x_{i}@{domain}", None if i % 12 == 5 else "UNKNOWN", None


def _invalid_email(i: int, nth: int, email: str, company: str) -> str:
    local, _, domain = email.partition("@")
    return {
        0: f"{local}..{i}@{domain}",
        1: f"{local}@{company}_{i}.com",
        2: f"{local}@{company}{i}.c0m",
    }[nth % 3]


def _name(i: int, domain: str, first: str, last: str) -> str | None:
    return {
        0: f"Contact at {domain}",
        1: None,
        2: "José Ñúñez-García",
        3: first,
        4: "Mary Ann O'Neil",
        5: f"  {first}   {last} ",
        6: "No name",
    }.get(i % 10, f"{first} {last}")


def _phone(i: int) -> str | None:
    digits = f"{i:08d}"
    pairs = " ".join(digits[n : n + 2] for n in range(0, 8, 2))
    seven = f"{i % 10_000_000:07d}"
    return {
        0: "Phone not found",
        1: None,
        2: "01 42 68 53 00",  # local form (no country code): shared by many, never sent as SMS
        3: f"+33 1 {pairs}",
        4: f"+49 30 {digits}",
        5: f"0049 30 {i:07d}",
        6: "N/A",
        7: f"+44 20 7{seven[:3]} {seven[3:]}",
        8: f"+1 (646) {200 + (i // 10_000) % 800}-{i % 10_000:04d}",
        9: f"+34 91 {seven[:3]} {seven[3:]}",
    }.get(i % 11, f"+33 6.{pairs.replace(' ', '.')}")
