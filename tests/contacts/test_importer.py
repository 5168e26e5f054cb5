"""The importer on real files (tests/contacts/files) and a real database, SQLite and PostgreSQL:
encodings, delimiters, header names, duplicates, rejects, re-runs, dry runs, selection and a
failure in the middle of a file."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.contacts import importer
from crmsync.contacts.importer import ImportFileError, ImportOptions, ImportSummary
from crmsync.enums import Crm
from crmsync.settings import Settings
from crmsync.tables import contacts, crm_sync_state

FILES = Path(__file__).parent / "files"
JOSE = {
    "email": "jose@example.com",
    "name": "José Müller",
    "phone_number": "+34 612 345 678",
    "source_url": "https://example.com/team",
}
ZOE = {"email": "zoe@example.org", "name": "Zoë Ødegård", "phone_number": "0612345678"}


async def run(
    engine: AsyncEngine, settings: Settings, data: bytes | str, **options: Any
) -> tuple[ImportSummary, str]:
    """Import a file of tests/contacts/files (by name) or these bytes; summary and rejects CSV."""
    raw = (FILES / data).read_bytes() if isinstance(data, str) else data
    rejects = io.StringIO()
    summary = await importer.import_contacts(
        engine, settings, io.BytesIO(raw), ImportOptions(**options), rejects=rejects
    )
    return summary, rejects.getvalue()


async def stored(engine: AsyncEngine) -> dict[str, dict[str, Any]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(contacts))).mappings().all()
    return {row["email"].lower(): dict(row) for row in rows}


def counts(summary: ImportSummary) -> tuple[int, ...]:
    return (
        summary.rows,
        summary.created,
        summary.updated,
        summary.unchanged,
        summary.duplicates,
        summary.rejected,
    )


@pytest.mark.parametrize(
    ("name", "encoding", "delimiter", "phone_and_site"),
    [
        ("utf8_comma.csv", "UTF-8", ",", True),
        ("utf8_bom_semicolon.csv", "UTF-8 with BOM", ";", True),
        ("utf16_tab.csv", "UTF-16", "\t", True),
        ("cp1252_semicolon.csv", "Windows-1252", ";", False),
    ],
)
async def test_each_encoding_and_delimiter_reads_the_same_contacts(
    engine: AsyncEngine,
    settings: Settings,
    name: str,
    encoding: str,
    delimiter: str,
    phone_and_site: bool,
) -> None:
    summary, rejects = await run(engine, settings, name)
    assert (summary.encoding, summary.delimiter) == (encoding, delimiter)
    assert counts(summary) == (2, 2, 0, 0, 0, 0) and rejects == ""
    found = await stored(engine)
    assert set(found) == {"jose@example.com", "zoe@example.org"}
    expected_jose = JOSE if phone_and_site else {**JOSE, "source_url": None}
    assert {key: found["jose@example.com"][key] for key in expected_jose} == expected_jose
    assert {key: found["zoe@example.org"][key] for key in ZOE} == ZOE
    assert found["zoe@example.org"]["source_url"] is None  # an empty cell sets nothing


async def test_the_customer_field_names_are_read_with_their_types(
    engine: AsyncEngine, settings: Settings
) -> None:
    summary, _ = await run(engine, settings, "utf8_comma.csv")
    assert summary.columns == {
        key: key
        for key in (
            "email",
            "name",
            "phone_number",
            "email_type",
            "has_gmail",
            "source_url",
            "context",
        )
    }
    found = await stored(engine)
    jose, zoe = found["jose@example.com"], found["zoe@example.org"]
    assert (jose["email_type"], jose["has_gmail"], jose["context"]) == (
        "CORPORATE",
        False,
        "Met at the fair",
    )
    assert (zoe["email_type"], zoe["has_gmail"]) == ("FREE", True)


async def test_quoted_newlines_blank_lines_and_trailing_empty_columns(
    engine: AsyncEngine, settings: Settings
) -> None:
    summary, rejects = await run(engine, settings, "quoted_blank_trailing.csv")
    assert counts(summary) == (2, 2, 0, 0, 0, 0) and rejects == ""
    assert summary.unknown_columns == []  # the unnamed trailing columns are not reported
    jose = (await stored(engine))["jose@example.com"]
    assert jose["name"] == "Müller, José"
    assert jose["context"] == 'first line\nsecond line, with a comma\nand "quotes"'


async def test_duplicates_by_case_count_and_the_last_row_wins(
    engine: AsyncEngine, settings: Settings
) -> None:
    summary, _ = await run(engine, settings, "duplicates_by_case.csv")
    assert counts(summary) == (4, 2, 0, 0, 2, 0)
    found = await stored(engine)
    assert set(found) == {"ann@example.com", "bob@example.com"}
    assert found["ann@example.com"]["name"] == "Ann Three"
    assert found["ann@example.com"]["email"] == "ANN@EXAMPLE.COM"


async def test_duplicates_across_chunks_are_counted_once_and_the_last_row_wins(
    engine: AsyncEngine, settings: Settings
) -> None:
    summary, _ = await run(engine, settings, "duplicates_by_case.csv", chunk_size=1)
    assert counts(summary) == (4, 2, 0, 0, 2, 0)
    assert (await stored(engine))["ann@example.com"]["name"] == "Ann Three"


async def test_invalid_rows_go_to_the_rejects_file_with_line_and_reason(
    engine: AsyncEngine, settings: Settings
) -> None:
    summary, rejects = await run(engine, settings, "bad_rows.csv")
    assert counts(summary) == (10, 3, 0, 0, 0, 7)
    assert set(await stored(engine)) == {"good@example.com", "=cmd@example.com", "last@example.com"}
    rows = list(csv.reader(io.StringIO(rejects)))
    assert rows[0] == [
        "rejected_line",
        "rejected_reason",
        "email",
        "name",
        "email_type",
        "has_gmail",
        "domain_id",
    ]
    by_line = {int(row[0]): row for row in rows[1:]}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 8, 9]
    assert by_line[3][1] == "email: not a valid email address (expected name@domain.tld)"
    assert by_line[3][2:] == ["not-an-email", "Bad", "", "", ""]
    assert by_line[4][1] == "no email"
    assert by_line[5][1].startswith("name: String should have at most 10000 characters")
    assert by_line[6][1].startswith("email_type: Input should be 'SERVICE'")
    assert by_line[7][1].startswith("has_gmail: Input should be a valid boolean")
    assert by_line[8][1].startswith("domain_id: Input should be a valid UUID")
    assert by_line[9][1].startswith("6 values in a row of 5 columns")
    # A formula in the input is stored as written; the rejects file is for spreadsheets.
    assert (await stored(engine))["=cmd@example.com"]["name"] == '=HYPERLINK("http://evil")'


async def test_rejected_rows_are_written_neutralised_and_reimport_after_a_fix(
    engine: AsyncEngine, settings: Settings
) -> None:
    data = b"email,name\nbad,=1+2\n"
    summary, rejects = await run(engine, settings, data)
    assert summary.rejected == 1
    assert (
        rejects.splitlines()[1]
        == "2,email: not a valid email address (expected name@domain.tld),bad,'=1+2"
    )
    fixed = rejects.replace(",bad,", ",fixed@example.com,").encode()
    summary, _ = await run(engine, settings, fixed)
    assert counts(summary) == (1, 1, 0, 0, 0, 0)
    assert summary.ignored_columns == ["rejected_line", "rejected_reason"]
    assert (await stored(engine))["fixed@example.com"]["name"] == "=1+2"


@pytest.mark.parametrize("name", ["empty.csv", "no_email_column.csv"])
async def test_file_level_errors(engine: AsyncEngine, settings: Settings, name: str) -> None:
    with pytest.raises(ImportFileError) as raised:
        await run(engine, settings, name)
    if name == "empty.csv":
        assert "the file is empty" in raised.value.message
    else:
        assert raised.value.message.startswith(
            "no email column: the file's columns are 'Name', 'Phone', 'Company'"
        )
    assert await stored(engine) == {}


@pytest.mark.parametrize(
    ("content", "found"),
    [
        (
            b"email,name\n"
            + b"a@example.com,A\n" * 3000
            + b'b@example.com,"unclosed\n'
            + b"x" * 140_000,
            "field larger than field limit",
        ),
        (b"name\nA\n", "no email column"),
        (b'{"email": "a@example.com"}\n[1, 2]\n', None),  # a bad JSON line is a rejected row
    ],
)
def test_check_file_finds_what_would_stop_the_import_without_writing(
    content: bytes, found: str | None
) -> None:
    fmt = "jsonl" if content.startswith(b"{") else "csv"
    stream = io.BytesIO(content)
    if found is None:
        importer.check_file(stream, ImportOptions(format=fmt))
        assert stream.tell() == len(content)
        return
    with pytest.raises(ImportFileError) as raised:
        importer.check_file(stream, ImportOptions(format=fmt))
    assert found in raised.value.message


async def test_a_header_only_file_imports_nothing(engine: AsyncEngine, settings: Settings) -> None:
    summary, rejects = await run(engine, settings, "header_only.csv")
    assert counts(summary) == (0, 0, 0, 0, 0, 0) and rejects == ""
    assert summary.unknown_columns == []
    assert summary.columns == {"email": "email", "name": "name", "phone": "phone_number"}


async def test_json_lines(engine: AsyncEngine, settings: Settings) -> None:
    summary, rejects = await run(engine, settings, "contacts.jsonl", format="jsonl")
    assert counts(summary) == (5, 2, 0, 0, 0, 3)
    assert summary.unknown_columns == ["nickname"]
    found = await stored(engine)
    assert found["jose@example.com"]["phone_number"] == "34612345678"
    assert found["jose@example.com"]["has_gmail"] is False
    assert found["zoe@example.org"]["name"] == "Zoë Ødegård"
    lines = {int(row[0]): row[1] for row in list(csv.reader(io.StringIO(rejects)))[1:]}
    assert lines[4] == "not a JSON object but list"
    assert lines[5].startswith("not valid JSON")
    assert lines[6].startswith("email: not a valid email address")


async def test_a_csv_given_as_json_lines_is_a_file_error(
    engine: AsyncEngine, settings: Settings
) -> None:
    with pytest.raises(ImportFileError, match="a CSV file"):
        await run(engine, settings, "utf8_comma.csv", format="jsonl")


async def test_manual_mapping_wins_over_names(engine: AsyncEngine, settings: Settings) -> None:
    data = b"Email,Work Email,Notes,Kind\nold@example.com,new@example.com,hello,FREE\n"
    mapping = {"Work Email": "email", "Email": "-", "Kind": "email_type"}
    summary, _ = await run(engine, settings, data, mapping=mapping)
    assert summary.columns == {"Work Email": "email", "Notes": "context", "Kind": "email_type"}
    assert summary.unknown_columns == []
    found = await stored(engine)
    assert list(found) == ["new@example.com"]
    assert (found["new@example.com"]["context"], found["new@example.com"]["email_type"]) == (
        "hello",
        "FREE",
    )
    with pytest.raises(ImportFileError, match="--map 'Missing': no such column"):
        await run(engine, settings, data, mapping={"Missing": "email"})


async def test_reimporting_the_same_file_changes_nothing(
    engine: AsyncEngine, settings: Settings
) -> None:
    await run(engine, settings, "utf8_comma.csv")
    before = await stored(engine)
    summary, _ = await run(engine, settings, "utf8_comma.csv")
    assert counts(summary) == (2, 0, 0, 2, 0, 0)
    assert await stored(engine) == before
    # An edited file updates only what changed, and only the fields it carries.
    edited = "email,name\nJOSE@example.com,José M.\n".encode()
    summary, _ = await run(engine, settings, edited)
    assert counts(summary) == (1, 0, 1, 0, 0, 0)
    jose = (await stored(engine))["jose@example.com"]
    assert (jose["name"], jose["phone_number"]) == ("José M.", "+34 612 345 678")


async def test_dry_run_counts_without_writing(engine: AsyncEngine, settings: Settings) -> None:
    await run(engine, settings, "utf8_comma.csv")
    before = await stored(engine)
    data = (
        "email,name\njose@example.com,José Müller\nzoe@example.org,Z\nnew@example.com,New\n"
        "NEW@example.com,New\nbad,Bad\n"
    ).encode()
    dry, _ = await run(engine, settings, data, dry_run=True, select=[Crm.brevo])
    assert counts(dry) == (5, 1, 1, 1, 1, 1) and dry.dry_run
    assert (dry.selected, dry.queued) == (3, 3)
    assert await stored(engine) == before
    async with engine.connect() as conn:
        assert (await conn.execute(select(crm_sync_state))).all() == []
    real, _ = await run(engine, settings, data)
    assert counts(real) == counts(dry)


async def test_select_queues_the_imported_contacts_only(
    engine: AsyncEngine, settings: Settings
) -> None:
    await run(engine, settings, b"email\nother@example.com\n")
    summary, _ = await run(engine, settings, "utf8_comma.csv", select=[Crm.brevo, Crm.hubspot])
    assert (summary.selected, summary.queued) == (2, 4)
    found = await stored(engine)
    async with engine.connect() as conn:
        states = (await conn.execute(select(crm_sync_state))).mappings().all()
    chosen = {found["jose@example.com"]["id"], found["zoe@example.org"]["id"]}
    assert {(s["contact_id"], s["crm"]) for s in states} == {
        (cid, crm) for cid in chosen for crm in ("brevo", "hubspot")
    }
    assert {(s["sync_status"], s["processing_status"]) for s in states} == {("Selected", "Queued")}


async def test_a_failure_mid_file_keeps_the_reported_chunks_and_a_rerun_finishes(
    engine: AsyncEngine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [f"user{i}@example.com,User {i}" for i in range(10)]
    data = ("email,name\n" + "\n".join(lines) + "\n").encode()
    real = importer.upsert_by_email
    calls = 0

    async def fails_in_the_third_chunk(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        done = await real(*args, **kwargs)  # the chunk is written in its transaction...
        if calls == 3:
            raise ConnectionError("the database went away")  # ...and never committed
        return done

    monkeypatch.setattr(importer, "upsert_by_email", fails_in_the_third_chunk)
    reported: list[int] = []
    with pytest.raises(ConnectionError):
        await importer.import_contacts(
            engine,
            settings,
            io.BytesIO(data),
            ImportOptions(chunk_size=3, select=[Crm.n8n]),
            on_progress=lambda summary, _bytes: reported.append(summary.created),
        )
    assert reported == [3, 6]
    found = await stored(engine)
    assert sorted(found) == sorted(f"user{i}@example.com" for i in range(6))
    async with engine.connect() as conn:
        assert len((await conn.execute(select(crm_sync_state))).all()) == 6

    monkeypatch.setattr(importer, "upsert_by_email", real)
    summary, _ = await run(engine, settings, data, chunk_size=3, select=[Crm.n8n])
    assert counts(summary) == (10, 4, 0, 6, 0, 0)
    assert len(await stored(engine)) == 10


async def test_an_unreadable_row_stops_the_file_after_the_chunks_before_it(
    engine: AsyncEngine, settings: Settings
) -> None:
    """A field past the csv module's limit (an unclosed quote swallowing the file) is a file
    error naming the line; the chunks before it stay written and say so."""
    good = "".join(f"user{i}@example.com,ok\n" for i in range(4))
    data = ("email,name\n" + good + 'broken@example.com,"' + "x" * 200_000 + "\n").encode()
    with pytest.raises(ImportFileError) as raised:
        await run(engine, settings, data, chunk_size=2)
    assert raised.value.message.startswith("line 6: field larger than field limit")
    assert "unclosed quote" in raised.value.message
    assert raised.value.summary.created == 4
    assert len(await stored(engine)) == 4


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"PK\x03\x04\x14\x00\x06\x00", "a zip file, such as an Excel workbook"),
        ("email,name\nann@example.com,Ann\n".encode("utf-16-le"), "without a byte-order mark"),
        (b"email,name\nann@example.com,A\x00nn\n", None),
    ],
)
async def test_files_that_are_not_text_say_what_they_are(
    engine: AsyncEngine, settings: Settings, data: bytes, message: str | None
) -> None:
    if message is None:  # a NUL inside a value: that row is rejected (PostgreSQL refuses it)
        summary, rejects = await run(engine, settings, data)
        assert summary.rejected == 1 and "name: contains a NUL character" in rejects
        return
    with pytest.raises(ImportFileError, match=message):
        await run(engine, settings, data)
