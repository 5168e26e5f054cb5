"""`crmsync failed`: contacts in Error with the vendor's last reason, as a table, CSV, JSON
lines, or bare ids for `crmsync retry --ids -`."""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from crmsync.cli import common
from crmsync.cli.app import app
from crmsync.cli.common import one_crm, run_ops
from crmsync.ops.schemas import FailedContact
from crmsync.ops.service import OpsService

PAGE = 1000  # rows read per query (the API's largest page)
# A cell a spreadsheet would run as a formula starts with one of these (OWASP's list).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class Format(StrEnum):
    table = "table"
    csv = "csv"
    jsonl = "jsonl"
    ids = "ids"


def safe_cell(value: object) -> str:
    """A CSV cell as text, with a leading ' if a spreadsheet would run it as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


CSV_COLUMNS = ("contact_id", "crm", "email", "name", "attempts", "last_attempt_at", "error")


@app.command(rich_help_panel="Contacts")
def failed(
    crm: Annotated[
        str | None, typer.Option("--crm", help="Only this CRM (default: every CRM).")
    ] = None,
    fmt: Annotated[
        Format,
        typer.Option(
            "--format",
            case_sensitive=False,
            help="table; csv or jsonl (one row per contact and CRM); ids: each contact id once.",
        ),
    ] = Format.table,
    limit: Annotated[
        int | None, typer.Option(min=1, help="At most this many rows (default: all).")
    ] = None,
) -> None:
    """List contacts in Error, newest failure first, with the vendor's last reason.

    A contact in Error for several CRMs has a row for each (with --crm, only that CRM's).
    Exits 0 whether or not any contact is in Error.

    \b
    Examples:
      crmsync failed
      crmsync failed --crm hubspot --format csv > hubspot-failures.csv
      crmsync failed --crm hubspot --format ids | crmsync retry --crm hubspot --ids -
    """
    target = one_crm(crm).value if crm is not None else None
    settings = common.load_settings()
    write = _writer(fmt)

    async def _list(ops: OpsService) -> int:
        shown = 0
        total = None
        while limit is None or shown < limit:
            size = PAGE if limit is None else min(PAGE, limit - shown)
            rows, total = await ops.failed(target, size, shown)
            try:
                write(rows)
            except BrokenPipeError:  # `| head`: the reader has all it wants
                raise _ReaderGone from None
            shown += len(rows)
            if len(rows) < size:
                break
        write.end()
        return total or 0

    try:
        total = run_ops(settings, _list)
    except _ReaderGone:
        # Stdout is closed: point it at /dev/null so the exit's flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    if fmt is Format.table:
        where = f" for {target}" if target else ""
        if total == 0:
            typer.echo(f"no contact in Error{where}", err=True)
        else:
            hint = f"--crm {target}" if target else "--crm NAME"
            typer.echo(
                f"{total} row(s) in Error{where}. Retry them: `crmsync retry {hint} "
                "--all-failed`, or some: `crmsync failed ... --format ids | crmsync retry "
                f"{hint} --ids -`",
                err=True,
            )


class _ReaderGone(Exception):
    """Whoever read our stdout closed it (not an OSError: that would read as a database one)."""


class _Writer:
    """Writes pages of failed rows as they are read (constant memory), in one format."""

    def __call__(self, rows: list[FailedContact]) -> None:
        raise NotImplementedError

    def end(self) -> None:
        sys.stdout.flush()


class _Ids(_Writer):
    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, rows: list[FailedContact]) -> None:
        for row in rows:
            contact = str(row.contact_id)
            if contact not in self.seen:
                self.seen.add(contact)
                sys.stdout.write(contact + "\n")


class _Jsonl(_Writer):
    def __call__(self, rows: list[FailedContact]) -> None:
        for row in rows:
            sys.stdout.write(row.model_dump_json() + "\n")


class _Csv(_Writer):
    def __init__(self) -> None:
        self.out = csv.writer(sys.stdout, lineterminator="\n")
        self.out.writerow(CSV_COLUMNS)

    def __call__(self, rows: list[FailedContact]) -> None:
        for row in rows:
            values = row.model_dump(mode="json")
            self.out.writerow([safe_cell(values[column]) for column in CSV_COLUMNS])


class _Table(_Writer):
    """A table needs every row before it is printed; --limit bounds it."""

    def __init__(self) -> None:
        self.table = Table(box=box.SIMPLE_HEAD, expand=True)
        self.table.add_column("CRM", no_wrap=True)
        self.table.add_column("email", overflow="fold", max_width=40)
        self.table.add_column("tries", justify="right", no_wrap=True)
        self.table.add_column("last try (UTC)", no_wrap=True)
        self.table.add_column("error", overflow="fold", ratio=1)
        self.count = 0

    def __call__(self, rows: list[FailedContact]) -> None:
        for row in rows:
            self.count += 1
            when = row.last_attempt_at.strftime("%Y-%m-%d %H:%M") if row.last_attempt_at else "-"
            self.table.add_row(row.crm, row.email, str(row.attempts), when, row.error or "")

    def end(self) -> None:
        if self.count:
            Console().print(self.table)


def _writer(fmt: Format) -> _Writer:
    makers: dict[Format, Callable[[], _Writer]] = {
        Format.ids: _Ids,
        Format.jsonl: _Jsonl,
        Format.csv: _Csv,
        Format.table: _Table,
    }
    return makers[fmt]()
