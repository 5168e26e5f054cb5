"""Importing a contact file (CSV or JSON Lines): the library behind `crmsync import` and the
dashboard's Import page.

    summary = await import_contacts(engine, settings, stream, ImportOptions(...), rejects=out)

`stream` is any binary stream (a file, an upload, stdin). Rows are read, decoded and validated
with the API's own schema (`ContactCreate`) in a worker thread, `chunk_size` rows at a time, so
memory stays flat and the event loop keeps serving. Each chunk is upserted by email in one
transaction of its own (with its selection, when asked): a failure loses at most the chunk in
flight, nothing reported written, and running the same file again finishes the job (rows
already written are then unchanged).

Counting: every row read is exactly one of created, updated, unchanged, duplicate or rejected.
A later row with an email seen before (in any case) is a duplicate: it is written over the
earlier one (the last row wins) and the contact is counted once, by its first row. Empty cells
(and JSON nulls) leave a field as it is; invalid rows go to `rejects` (CSV, with the line they
start on and the reason) and never stop the file. A file-level problem (no email column, a file
that cannot be decoded or parsed) raises `ImportFileError`, whose `summary` says what was
written before it. `check_file` finds those problems in a whole file before anything is
written: a caller that holds the file (an upload) runs it first, and a bad file writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import IO, Any, Literal

import orjson
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import db, writes
from crmsync.clock import Clock, utcnow
from crmsync.contacts import repository as repo
from crmsync.contacts.columns import (
    REJECT_COLUMNS,
    HeaderMap,
    ImportFileError,
    map_headers,
    neutralise,
    restore,
)
from crmsync.contacts.schemas import ContactCreate
from crmsync.contacts.seen import EmailSet
from crmsync.contacts.textfile import CsvRecords, TextFile, jsonl_lines
from crmsync.contacts.upsert import Upserted, upsert_by_email
from crmsync.enums import Crm
from crmsync.settings import Settings
from crmsync.sync import selection, wakeup

__all__ = [
    "ImportFileError",
    "ImportOptions",
    "ImportSummary",
    "check_file",
    "format_for",
    "import_contacts",
]

Format = Literal["csv", "jsonl"]
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def format_for(filename: str) -> Format:
    """The format a file name suggests: JSON Lines for .jsonl/.ndjson, CSV otherwise."""
    return "jsonl" if PurePath(filename).suffix.lower() in JSONL_SUFFIXES else "csv"


@dataclass(frozen=True)
class ImportOptions:
    format: Format = "csv"
    # {column: field} chosen by hand (`--map`; `columns.parse_mapping` builds it), "-" to skip.
    mapping: Mapping[str, str] = field(default_factory=dict)
    delimiter: str | None = None  # None: sniffed from the header (, ; or tab)
    select: Sequence[Crm] = ()  # select every imported contact for these CRMs
    dry_run: bool = False  # read and count against the database, write nothing
    chunk_size: int = 2_000  # rows per transaction


@dataclass
class ImportSummary:
    format: Format
    dry_run: bool
    encoding: str = ""
    delimiter: str | None = None
    columns: dict[str, str] = field(default_factory=dict)  # {column: field} read
    unknown_columns: list[str] = field(default_factory=list)  # reported, not read
    ignored_columns: list[str] = field(default_factory=list)  # an export's own columns
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    rejected: int = 0
    selected: int = 0  # contacts selected (with `select`)
    queued: int = 0  # (contact, CRM) rows queued by that selection

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


async def import_contacts(
    engine: AsyncEngine,
    settings: Settings,
    stream: IO[bytes],
    options: ImportOptions | None = None,
    *,
    rejects: IO[str] | None = None,
    clock: Clock = utcnow,
    on_progress: Callable[[ImportSummary, int], None] | None = None,
    on_queued: Callable[[Sequence[Crm]], None] | None = None,
) -> ImportSummary:
    """Import `stream`; the summary once every row is read (see the module docstring).

    `rejects` receives the rejected rows as CSV (header first; nothing when none is rejected).
    `on_progress(summary, bytes_read)` is called after each chunk is committed; `on_queued`
    after a chunk's selection committed (to wake this process's workers).
    """
    options = options or ImportOptions()
    reader = await asyncio.to_thread(_Reader, stream, options, rejects)
    summary = reader.summary
    statistics = writes.Statistics(engine)
    # The next chunk is read while this one is written (SQLite and PostgreSQL work outside the
    # GIL): the file is read once either way, and a read error still comes after the chunks
    # before it are written.
    pending = asyncio.ensure_future(asyncio.to_thread(reader.next_chunk))
    try:
        while (chunk := await pending) is not None:
            pending = asyncio.ensure_future(asyncio.to_thread(reader.next_chunk))
            await _write(engine, settings, chunk, options, summary, clock, statistics)
            if options.select and not options.dry_run and on_queued is not None:
                on_queued(options.select)
            if on_progress is not None:
                on_progress(summary, reader.file.bytes_read)
    except ImportFileError as exc:
        exc.summary = summary
        raise
    finally:
        if not pending.done():
            # Never leave a read running on a stream the caller is about to close.
            with contextlib.suppress(Exception):
                await pending
        elif not pending.cancelled():
            pending.exception()  # retrieved: a read error after a write error is not news
    return summary


def check_file(stream: IO[bytes], options: ImportOptions | None = None) -> None:
    """Read all of `stream` as `import_contacts` would, without validating rows or writing:
    ImportFileError for any problem that would stop the file (so before its first chunk is
    written). Blocking: run it in a thread. The stream is read to its end; seek back to import.
    """
    reader = _Reader(stream, options or ImportOptions(), None)
    with reader.file.counting():
        for _ in reader.records:
            pass


@dataclass
class _Chunk:
    """Rows read together and written in one transaction."""

    rows: dict[str, ContactCreate] = field(default_factory=dict)  # by email.lower()
    repeats: set[str] = field(default_factory=set)  # emails an earlier chunk had too
    read: int = 0
    duplicates: int = 0
    rejected: int = 0


async def _write(
    engine: AsyncEngine,
    settings: Settings,
    chunk: _Chunk,
    options: ImportOptions,
    summary: ImportSummary,
    clock: Clock,
    statistics: writes.Statistics | None = None,
) -> None:
    now = clock()
    queued = 0
    resync = settings.resync_on_change
    if options.dry_run:
        async with db.read_only(engine).connect() as conn:
            done = await upsert_by_email(
                conn, chunk.rows, now, resync_on_change=resync, dry_run=True
            )
        queued = (len(chunk.rows) - len(chunk.repeats)) * len(options.select)
    elif chunk.rows:

        async def write() -> tuple[Upserted, int]:
            queued = 0
            async with engine.begin() as conn:
                done = await upsert_by_email(conn, chunk.rows, now, resync_on_change=resync)
                if options.select:
                    ids = repo.by_ids(list(done.ids.values()))
                    queued = await selection.select_contacts(conn, options.select, ids, now)
                    await wakeup.announce(conn, options.select)
            return done, queued

        done, queued = await writes.retry_conflicts(write, "import")
        if statistics is not None:
            await statistics.wrote(["contacts"], len(done.created) + len(done.changed))
            await statistics.wrote(["crm_sync_state"], queued)
    else:
        done = None
    # Counted only once committed: a failure above leaves the summary at the chunks written.
    summary.rows += chunk.read
    summary.duplicates += chunk.duplicates
    summary.rejected += chunk.rejected
    if done is not None:
        summary.created += len(done.created - chunk.repeats)
        summary.updated += len(done.changed - chunk.repeats)
        summary.unchanged += len(done.unchanged - chunk.repeats)
    if options.select:
        summary.selected += len(chunk.rows) - len(chunk.repeats)
        summary.queued += queued


class _Reader:
    """Reads, maps and validates rows (in a worker thread); one chunk per `next_chunk` call."""

    def __init__(self, stream: IO[bytes], options: ImportOptions, rejects: IO[str] | None):
        self.options = options
        self.file = TextFile(stream)
        self.summary = ImportSummary(format=options.format, dry_run=options.dry_run)
        self._seen = EmailSet()
        self._rejects = csv.writer(rejects) if rejects is not None else None
        self._rejects_stream = rejects
        self._reject_header: list[str] = [*REJECT_COLUMNS, "json"]
        self._maps: dict[tuple[str, ...], HeaderMap] = {}
        self._mapped: dict[tuple[str, ...], list[tuple[int, str]]] = {}
        with self.file.counting():
            if options.format == "csv":
                self.records = self._open_csv()
            else:
                self.records = self._open_jsonl()
        self.summary.encoding = self.file.describe_encoding()

    # -- opening -------------------------------------------------------------------------------

    def _open_csv(self) -> Iterator[tuple[int, list[str] | str, dict[str, Any] | str]]:
        records = CsvRecords(self.file.text, self.options.delimiter)
        headers = self._map(tuple(records.headers), strict=True)
        self.summary.delimiter = records.delimiter
        self._reject_header = [*REJECT_COLUMNS, *headers.headers]
        return ((line, cells, self._csv_values(headers, cells)) for line, cells in records)

    def _open_jsonl(self) -> Iterator[tuple[int, list[str] | str, dict[str, Any] | str]]:
        lines = jsonl_lines(self.file.text)
        first = next(lines, None)
        if first is None:
            raise ImportFileError("the file is empty: expected one JSON object per line")
        number, text = first
        parsed = _parse_json(text)
        if isinstance(parsed, str):
            hint = " (a JSON array? one object per line is expected)"
            raise ImportFileError(
                f"line {number} is not JSON Lines: {parsed}"
                + (hint if text.lstrip().startswith("[") else " (a CSV file? use --format csv)")
            )
        self._map(tuple(parsed), strict=True)
        return ((n, line, self._json_values(line)) for n, line in itertools.chain([first], lines))

    def _map(self, headers: tuple[str, ...], *, strict: bool) -> HeaderMap:
        found = self._maps.get(headers)
        if found is None:
            found = self._maps[headers] = map_headers(headers, self.options.mapping, strict=strict)
            self._mapped[found.headers] = found.mapped
            for column, mapped in found.used().items():
                self.summary.columns.setdefault(column, mapped)
            for name, seen in (
                (found.unknown, self.summary.unknown_columns),
                (found.ignored, self.summary.ignored_columns),
            ):
                seen.extend(column for column in name if column not in seen)
        return found

    # -- rows ----------------------------------------------------------------------------------

    def _csv_values(self, headers: HeaderMap, cells: list[str]) -> dict[str, Any] | str:
        width = len(headers.fields)
        if len(cells) > width and any(cell.strip() for cell in cells[width:]):
            return (
                f"{len(cells)} values in a row of {width} columns "
                f"(a {self.summary.delimiter!r} inside a value that is not quoted?)"
            )
        values: dict[str, Any] = {}
        for index, mapped in self._mapped[headers.headers]:
            if index < len(cells):
                cell = cells[index]
                if cell and not cell.isspace():
                    values[mapped] = restore(cell) if cell[0] == "'" else cell
        return values

    def _json_values(self, line: str) -> dict[str, Any] | str:
        parsed = _parse_json(line)
        if isinstance(parsed, str):
            return parsed
        headers = self._map(tuple(parsed), strict=False)
        values: dict[str, Any] = {}
        for key, mapped in zip(parsed, headers.fields, strict=True):
            value = parsed[key]
            if mapped is None or value is None or (isinstance(value, str) and not value.strip()):
                continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                value = str(value)  # a phone or an id written as a number
            values[mapped] = value
        return values

    def next_chunk(self) -> _Chunk | None:
        chunk = _Chunk()
        with self.file.counting():
            for line, raw, values in itertools.islice(self.records, self.options.chunk_size):
                chunk.read += 1
                contact = _validate(values)
                if isinstance(contact, str):
                    chunk.rejected += 1
                    self._reject(line, contact, raw)
                    continue
                key = contact.email.lower()
                if key in chunk.rows:
                    chunk.duplicates += 1
                elif not self._seen.add(key):
                    chunk.duplicates += 1
                    chunk.repeats.add(key)
                chunk.rows[key] = contact  # the last row wins
        self.summary.encoding = self.file.describe_encoding()
        if self._rejects_stream is not None:
            self._rejects_stream.flush()
        return chunk if chunk.read else None

    def _reject(self, line: int, reason: str, raw: list[str] | str) -> None:
        if self._rejects is None:
            return
        if self._reject_header:
            self._rejects.writerow(self._reject_header)
            self._reject_header = []
        cells = [raw.rstrip("\r\n")] if isinstance(raw, str) else raw
        self._rejects.writerow([line, reason, *(neutralise(cell) for cell in cells)])


def _parse_json(line: str) -> dict[str, Any] | str:
    try:
        parsed = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return f"not valid JSON: {exc}"
    if not isinstance(parsed, dict):
        return f"not a JSON object but {type(parsed).__name__}"
    return parsed


def _validate(values: dict[str, Any] | str) -> ContactCreate | str:
    """The row as the API would take it, or why not."""
    if isinstance(values, str):
        return values
    first, last = values.pop("first_name", None), values.pop("last_name", None)
    if "name" not in values and (first or last):
        values["name"] = " ".join(str(part).strip() for part in (first, last) if part)
    if "email" not in values:
        return "no email"
    for key, value in values.items():
        if isinstance(value, str) and "\x00" in value:
            return f"{key}: contains a NUL character"  # no database stores one in text
    email_type = values.get("email_type")
    if isinstance(email_type, str):
        values["email_type"] = email_type.strip().upper()
    try:
        return ContactCreate.model_validate(values)
    except ValidationError as exc:
        return "; ".join(_describe(error) for error in exc.errors(include_url=False))


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "row"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"
