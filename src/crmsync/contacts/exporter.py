"""Exporting contacts (CSV or JSON Lines): the library behind `crmsync export`.

Every contact field, then each CRM's status, error, external id, attempts and sync times, in
`columns.EXPORT_COLUMNS` order. Contacts are read a page at a time by keyset (created_at, id) on
the read engine, each page its own short read, so memory stays flat and no long transaction
holds the database; a contact added during the export is in it if it sorts after the page
being read.

CSV cells a spreadsheet would run as a formula are neutralised (`columns.neutralise`); the
importer restores them, so importing an export changes nothing. JSON Lines values are exact.

    async for text in Export(engine, filters, "csv").chunks(): ...   # e.g. a streamed response
    count = await export_contacts(engine, filters, out, "jsonl")      # to a text stream
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import IO, Any, Literal

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import db
from crmsync.contacts import repository as repo
from crmsync.contacts.columns import EXPORT_COLUMNS, neutralise
from crmsync.contacts.presenter import present_many
from crmsync.contacts.schemas import ContactFilters
from crmsync.enums import Crm

Format = Literal["csv", "jsonl"]
PAGE = 1_000
_SYNC_TIMES = ("last_attempt_at", "next_attempt_at", "synced_at")


class Export:
    """The matching contacts as text chunks (header first for CSV); `count` so far."""

    def __init__(
        self,
        engine: AsyncEngine,
        filters: ContactFilters | None = None,
        fmt: Format = "csv",
        page_size: int = PAGE,
    ) -> None:
        self.engine = db.read_only(engine)
        self.filters = filters or ContactFilters()
        self.format = fmt
        self.page_size = page_size
        self.count = 0

    async def chunks(self) -> AsyncIterator[str]:
        if self.format == "csv":
            yield _csv_text([list(EXPORT_COLUMNS)])
        conds = repo.filter_conditions(self.filters)
        after: tuple[dt.datetime, uuid.UUID] | None = None
        while True:
            async with self.engine.connect() as conn:
                rows = await repo.page_after(conn, conds, after, self.page_size)
                states = await repo.states_for(conn, [row["id"] for row in rows])
            if not rows:
                return
            records = [flat(contact) for contact in present_many(rows, states)]
            self.count += len(records)
            yield self._text(records)
            if len(rows) < self.page_size:
                return
            after = (rows[-1]["created_at"], rows[-1]["id"])

    def _text(self, records: list[dict[str, Any]]) -> str:
        if self.format == "jsonl":
            # `default=str`: asyncpg's UUIDs are not the uuid.UUID orjson writes natively.
            return "".join(orjson.dumps(r, default=str).decode() + "\n" for r in records)
        return _csv_text([[_cell(record[key]) for key in EXPORT_COLUMNS] for record in records])


async def export_contacts(
    engine: AsyncEngine,
    filters: ContactFilters | None,
    out: IO[str],
    fmt: Format = "csv",
    *,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Write the matching contacts to `out`; returns how many."""
    export = Export(engine, filters, fmt)
    async for text in export.chunks():
        out.write(text)
        if on_progress is not None:
            on_progress(export.count)
    return export.count


def flat(contact: Mapping[str, Any]) -> dict[str, Any]:
    """A presented contact (the API's shape) as one flat record of `EXPORT_COLUMNS`."""
    record = {key: contact[key] for key in EXPORT_COLUMNS if key in contact}
    for crm in Crm:
        sync = contact["sync"][crm.value]
        record[f"{crm.value}_attempts"] = sync.get("attempts", 0)
        for name in _SYNC_TIMES:
            record[f"{crm.value}_{name}"] = sync.get(name)
    return {key: record[key] for key in EXPORT_COLUMNS}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return neutralise(str(value))


def _csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()
