"""Header mapping, formula neutralisation and the seen-email set, without a database."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmsync.contacts.columns import (
    EXPORT_COLUMNS,
    ImportFileError,
    map_headers,
    neutralise,
    parse_mapping,
    restore,
)
from crmsync.contacts.seen import EmailSet
from crmsync.contacts.textfile import sniff_delimiter
from crmsync.errors import BadRequest


@pytest.mark.parametrize(
    ("header", "field"),
    [
        ("Email", "email"),
        ("E-mail", "email"),
        ("EMAIL ADDRESS", "email"),
        ("email_address", "email"),
        ("Name", "name"),
        ("Full Name", "name"),
        ("first name", "first_name"),
        ("Last-Name", "last_name"),
        ("Surname", "last_name"),
        ("Phone", "phone_number"),
        ("Phone Number", "phone_number"),
        ("Mobile", "phone_number"),
        ("phone_number", "phone_number"),
        ("Website", "source_url"),
        ("Source URL", "source_url"),
        ("Email Type", "email_type"),
        ("Has Gmail?", "has_gmail"),
        ("Notes", "context"),
        ("Domain ID", "domain_id"),
        ("page_id", "page_id"),
        ("Source Job Id", "source_job_id"),
    ],
)
def test_headers_match_fields_whatever_their_case_and_punctuation(header: str, field: str) -> None:
    mapped = map_headers(["email", header] if field != "email" else [header])
    assert mapped.used()[header] == field


def test_unknown_columns_are_reported_and_export_columns_ignored() -> None:
    mapped = map_headers(["Email", "Colour", "Company", *EXPORT_COLUMNS[10:], "", " "])
    assert mapped.unknown == ("Colour", "Company")
    assert set(mapped.ignored) == set(EXPORT_COLUMNS[10:])
    assert mapped.used() == {"Email": "email"}


def test_one_column_per_field_the_first_wins() -> None:
    mapped = map_headers(["Email", "E-mail", "Name", "Full Name"])
    assert mapped.used() == {"Email": "email", "Name": "name"}
    assert mapped.unknown == ("E-mail", "Full Name")


def test_no_email_column_lists_the_headers() -> None:
    with pytest.raises(ImportFileError, match="the file's columns are 'Name', 'Phone'"):
        map_headers(["Name", "Phone"])


def test_parse_mapping() -> None:
    assert parse_mapping(["Work Email=email", "Tel=phone", "Notes = -", "a=b=name"]) == {
        "Work Email": "email",
        "Tel": "phone_number",
        "Notes": "-",
        "a=b": "name",
    }
    for bad in ("email", "=email", "x=colour"):
        with pytest.raises(BadRequest):
            parse_mapping([bad])


@pytest.mark.parametrize(
    ("header", "delimiter"),
    [
        ("email,name,phone\n", ","),
        ("email;name;phone\r\n", ";"),
        ("email\tname\tphone\n", "\t"),
        ('"Name, full";email;phone\n', ";"),
        ("email\n", ","),
    ],
)
def test_sniff_delimiter(header: str, delimiter: str) -> None:
    assert sniff_delimiter(header) == delimiter


@given(st.text())
def test_restore_undoes_neutralise(cell: str) -> None:
    safe = neutralise(cell)
    assert restore(safe) == cell
    assert safe[:1] not in ("=", "+", "-", "@", "\t", "\r")


def test_neutralise_examples() -> None:
    assert neutralise("=1+1") == "'=1+1"
    assert neutralise("+33 1 23") == "'+33 1 23"
    assert neutralise("'=x") == "''=x"
    assert neutralise("O'Brien") == "O'Brien"
    assert restore("'+33 1 23") == "+33 1 23"  # a spreadsheet user's own quote too
    assert restore("'plain") == "'plain"


def test_email_set_counts_each_key_once_across_growth() -> None:
    seen = EmailSet(capacity=4)
    keys = [f"user{i}@example.com" for i in range(10_000)]
    assert all(seen.add(key) for key in keys)
    assert not any(seen.add(key) for key in keys)
    assert len(seen) == 10_000
