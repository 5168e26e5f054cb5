"""The columns of contact files: what an export writes, and how an import's headers map to fields.

Import headers are matched with case, spaces and punctuation ignored ("E-mail Address",
"email_address" and "EmailAddress" are one name), against the contact fields and the names
other tools export them under. A person can map any column by hand (`--map COLUMN=field`).
The columns an export writes that are not contact fields (ids, statuses, attempts, times) are
ignored, so that importing an export changes nothing.

Cells a spreadsheet would run as a formula are neutralised on the way out with a leading `'`
(OWASP's advice) and restored on the way in: `neutralise` and `restore` are each other's inverse.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crmsync.enums import CRM_ID_FIELD, Crm
from crmsync.errors import BadRequest

# The contact fields a file may set, in the order of the customer's schema.
CONTACT_FIELDS = (
    "email",
    "email_type",
    "has_gmail",
    "context",
    "source_url",
    "name",
    "phone_number",
    "domain_id",
    "page_id",
    "source_job_id",
)
# Not fields: joined into `name` ("First Last") when the file has no name column.
NAME_PARTS = ("first_name", "last_name")

# Every column `crmsync export` writes, in order.
EXPORT_COLUMNS: tuple[str, ...] = (
    *CONTACT_FIELDS,
    "id",
    "created_at",
    "updated_at",
    "contact_curation_status",
    "contact_processing_status",
    "contact_processing_error",
    *(
        column
        for crm in Crm
        for column in (
            f"{crm.value}_sync_status",
            f"{crm.value}_processing_status",
            f"{crm.value}_processing_error",
            CRM_ID_FIELD[crm],
            f"{crm.value}_attempts",
            f"{crm.value}_last_attempt_at",
            f"{crm.value}_next_attempt_at",
            f"{crm.value}_synced_at",
        )
    ),
)
# The two columns a rejects file adds in front of the rejected row.
REJECT_COLUMNS = ("rejected_line", "rejected_reason")

# Other names for each field, as normalised by `normalise` (lower case, letters and digits).
_ALIASES: dict[str, tuple[str, ...]] = {
    "email": (
        "mail",
        "emailaddress",
        "emailaddr",
        "email1",
        "primaryemail",
        "workemail",
        "businessemail",
        "contactemail",
        "courriel",
    ),
    "name": ("fullname", "contactname", "displayname", "personname", "contact"),
    "first_name": ("first", "firstname", "givenname", "forename", "fname"),
    "last_name": ("last", "lastname", "surname", "familyname", "lname"),
    "phone_number": (
        "phone",
        "phoneno",
        "mobile",
        "mobilephone",
        "mobilenumber",
        "cell",
        "cellphone",
        "tel",
        "telephone",
        "telephonenumber",
        "workphone",
        "businessphone",
        "contactnumber",
    ),
    "source_url": (
        "website",
        "websiteurl",
        "url",
        "web",
        "homepage",
        "site",
        "webpage",
        "pageurl",
    ),
    "email_type": (),
    "has_gmail": ("gmail", "isgmail"),
    "context": ("notes", "note", "comment", "comments", "description"),
    "domain_id": (),
    "page_id": (),
    "source_job_id": ("jobid",),
}

_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def normalise(header: str) -> str:
    """A header without case, spaces or punctuation: `E-mail Address` -> `emailaddress`."""
    return _NOT_ALNUM.sub("", header.lower())


_FIELD_BY_NAME: dict[str, str] = {}
for _field, _others in _ALIASES.items():
    for _name in (_field, *_others):
        _FIELD_BY_NAME[normalise(_name)] = _field
_IGNORED = {normalise(c) for c in (*EXPORT_COLUMNS, *REJECT_COLUMNS)} - set(_FIELD_BY_NAME)
MAPPABLE = (*CONTACT_FIELDS, *NAME_PARTS)
# `--map COLUMN=-` leaves a column out.
SKIP = "-"


class ImportFileError(Exception):
    """The file cannot be imported as a whole (no email column, unreadable, malformed)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # What an import had written before it stopped (an `importer.ImportSummary`).
        self.summary: Any = None


def field_for(name: str) -> str:
    """The field a `--map` target names (a field, or any of its other names); BadRequest if none."""
    if name.strip() == SKIP:
        return SKIP
    field = _FIELD_BY_NAME.get(normalise(name))
    if field is None:
        raise BadRequest(
            f"--map: unknown contact field {name!r}; fields: {', '.join(MAPPABLE)} "
            f"(or {SKIP} to leave the column out)"
        )
    return field


def parse_mapping(items: Iterable[str]) -> dict[str, str]:
    """`COLUMN=field` pairs (from `--map`) to {column: field}; BadRequest on a malformed one."""
    mapping: dict[str, str] = {}
    for item in items:
        column, sep, target = item.rpartition("=")
        if not sep or not column.strip():
            example = "--map 'Work Email=email'"
            raise BadRequest(f"--map {item!r}: expected COLUMN=field, e.g. {example}")
        mapping[column.strip()] = field_for(target)
    return mapping


@dataclass(frozen=True)
class HeaderMap:
    """Which field each column of a file feeds (None: not used)."""

    headers: tuple[str, ...]
    fields: tuple[str | None, ...]
    # Columns that matched nothing, reported once; export columns left out on purpose.
    unknown: tuple[str, ...]
    ignored: tuple[str, ...]

    @property
    def mapped(self) -> list[tuple[int, str]]:
        """(index, field) of each column that is read."""
        return [(i, f) for i, f in enumerate(self.fields) if f is not None]

    def used(self) -> dict[str, str]:
        """{column: field} of the columns that are read."""
        return {h: f for h, f in zip(self.headers, self.fields, strict=True) if f is not None}


def map_headers(
    headers: Sequence[str], manual: Mapping[str, str] | None = None, *, strict: bool = True
) -> HeaderMap:
    """Map a file's headers to fields: by hand first, then by name. A field is fed by one column.

    `strict` (a CSV header, or the first JSON object) raises ImportFileError when no column
    gives the email or a `--map` column is missing; otherwise (a later JSON object, whose keys
    may vary) those are left to each row.
    """
    manual = manual or {}
    clean = [h.strip().lstrip("\ufeff") for h in headers]
    fields: list[str | None] = [None] * len(clean)
    taken: set[str] = set()
    by_hand: set[int] = set()
    for column, field in manual.items():
        index = _find_column(clean, column)
        if index is None:
            if not strict:
                continue
            raise ImportFileError(
                f"--map {column!r}: no such column; the file's columns are {_listed(clean)}"
            )
        by_hand.add(index)
        if field != SKIP:
            fields[index] = field
            taken.add(field)
    unknown: list[str] = []
    ignored: list[str] = []
    for index, header in enumerate(clean):
        if index in by_hand or not header:
            continue  # a trailing delimiter makes columns without a name: nothing to say
        key = normalise(header)
        found = _FIELD_BY_NAME.get(key)
        if found is None:
            (ignored if key in _IGNORED else unknown).append(header)
        elif found in taken:
            unknown.append(header)  # another column already gives this field
        else:
            fields[index] = found
            taken.add(found)
    if strict and "email" not in taken:
        raise ImportFileError(
            f"no email column: the file's columns are {_listed(clean)}. "
            "Name one with --map COLUMN=email"
        )
    return HeaderMap(tuple(clean), tuple(fields), tuple(unknown), tuple(ignored))


def _find_column(headers: Sequence[str], column: str) -> int | None:
    """The column named exactly so, else the only one equal to it once normalised."""
    if column in headers:
        return headers.index(column)
    matches = [i for i, h in enumerate(headers) if normalise(h) == normalise(column)]
    return matches[0] if len(matches) == 1 else None


def _listed(headers: Sequence[str]) -> str:
    shown = [repr(h) for h in headers if h][:30]
    return ", ".join(shown) if shown else "(none)"


# A cell a spreadsheet would evaluate: it starts, after any quotes, with one of these.
_FORMULA = re.compile(r"'*[=+\-@\t\r]")


def neutralise(cell: str) -> str:
    """A cell a spreadsheet shows as text: a leading `'` before a formula-like start."""
    return "'" + cell if _FORMULA.match(cell) else cell


def restore(cell: str) -> str:
    """The inverse of `neutralise` (a spreadsheet user's own `'+33...` loses its `'` too)."""
    return cell[1:] if cell.startswith("'") and _FORMULA.match(cell, 1) else cell
