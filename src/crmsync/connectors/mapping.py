"""Field clean-up shared by every connector.

The customer's scraper writes placeholders ("Contact at example.com", "Phone not found") that the
old system pushed as real names and phone numbers (customer-system 6.2 item 7). Here a placeholder
is simply left out of the payload: the contact still syncs, without the bogus field.
"""

from __future__ import annotations

import re

import phonenumbers

# Contact fields that some connector sends. Editing one of them re-queues Complete rows.
SYNCED_FIELDS: frozenset[str] = frozenset(
    {
        "email",
        "name",
        "phone_number",
        "email_type",
        "has_gmail",
        "context",
        "source_url",
        "domain_id",
        "page_id",
        "source_job_id",
    }
)

_PLACEHOLDERS = {
    "",
    "n/a",
    "na",
    "none",
    "null",
    "unknown",
    "-",
    "phone not found",
    "not found",
    "no phone",
    "no name",
}
_CONTACT_AT = re.compile(r"^contact at\b", re.IGNORECASE)


# A plain ASCII address (dot-atom local part, alphabetic TLD): one regex match, ~1 us.
SIMPLE_EMAIL = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)


def plain_email(email: str) -> bool:
    """True for a plain ASCII address within the length limits (local part 64, all 254)."""
    local, _, domain = email.rpartition("@")
    return (
        len(email) <= 254
        and 0 < len(local) <= 64
        and len(domain) <= 253
        and SIMPLE_EMAIL.fullmatch(email) is not None
    )


# A phone worth sending holds at least one digit (a regex: once per contact on the hot path).
_DIGIT = re.compile(r"\d")


def is_placeholder(value: str | None) -> bool:
    if value is None:
        return True
    text = value.strip().lower()
    return text in _PLACEHOLDERS or bool(_CONTACT_AT.match(text))


def split_name(name: str | None) -> tuple[str | None, str | None]:
    """First token and the rest, or (None, None) for a missing or placeholder name."""
    if is_placeholder(name):
        return None, None
    assert name is not None
    parts = name.split(None, 1)
    first = parts[0]
    last = parts[1].strip() if len(parts) > 1 else None
    return first, last or None


def clean_phone(phone: str | None) -> str | None:
    """The phone as given, trimmed, unless it is a placeholder or holds no digits."""
    if is_placeholder(phone):
        return None
    assert phone is not None
    text = phone.strip()
    return text if _DIGIT.search(text) else None


def international_phone(phone: str | None, region: str | None = None) -> str | None:
    """E.164 form of a valid number (what Brevo's SMS attribute needs), else None.

    Brevo rejects an SMS value without a country code. A number that does not start with `+`
    or `00` is read as a national number of `region` (`CRMSYNC_DEFAULT_PHONE_REGION`, e.g.
    "US") when one is set, and otherwise not guessed at: it is left out.
    """
    text = clean_phone(phone)
    if text is None:
        return None
    if text.startswith("00"):
        text = "+" + text[2:]
    if not text.startswith("+") and region is None:
        return None
    try:
        parsed = phonenumbers.parse(text, None if text.startswith("+") else region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
