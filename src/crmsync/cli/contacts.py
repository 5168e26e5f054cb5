"""Contacts in and out: `crmsync import` and `crmsync export` (the work is in
`contacts.importer` and `contacts.exporter`; these wire options, progress and exit codes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, TypeVar

import typer

from crmsync import db
from crmsync.cli import common, filters
from crmsync.cli.app import app
from crmsync.cli.common import exit_codes, fail

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from crmsync.contacts.importer import ImportSummary
    from crmsync.settings import Settings

T = TypeVar("T")


class FileFormat(StrEnum):
    csv = "csv"
    jsonl = "jsonl"


def _delimiter(value: str | None) -> str | None:
    if value is None:
        return None
    named = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";"}
    value = named.get(value.lower(), value)
    if len(value) != 1 or value in "\r\n\"'":
        raise typer.BadParameter("one character, e.g. ';' or tab", param_hint="--delimiter")
    return value


@app.command("import", rich_help_panel="Contacts")
def import_command(
    file: Annotated[
        str, typer.Argument(metavar="FILE", help="A CSV or JSON Lines file; - reads stdin.")
    ],
    fmt: Annotated[
        FileFormat | None,
        typer.Option(
            "--format", help="csv or jsonl. Default: by extension (.jsonl, .ndjson), else csv."
        ),
    ] = None,
    mapping: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            metavar="COLUMN=FIELD",
            help="Read COLUMN into a contact field (repeatable); FIELD - leaves it out.",
        ),
    ] = None,
    delimiter: Annotated[
        str | None, typer.Option(help="CSV delimiter. Default: sniffed (comma, ; or tab).")
    ] = None,
    rejects: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH", help="Where rejected rows go, with line and reason [FILE.rejected.csv]"
        ),
    ] = None,
    select: Annotated[
        str | None,
        typer.Option(metavar="CRMS", help="Select the imported contacts for these CRMs."),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Count against the database, write no contact (rejects are written)."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    chunk_size: Annotated[
        int, typer.Option(min=1, max=10_000, help="Rows per transaction.")
    ] = 2_000,
) -> None:
    """Import contacts from a CSV or JSON Lines file, upserted by email.

    Headers match contact fields in any case and punctuation: E-mail,
    Full Name (or First Name + Last Name), Phone Number, Website, ...;
    --map names the others. Rows are written a chunk per transaction:
    if an import stops, run it again to finish. Exit 0 when the file
    was read (rejected rows included), 1 on a file-level error, 2 on
    bad usage.

    Example: crmsync import leads.csv --select brevo,hubspot

    Example: crmsync import leads.csv --map "Work Email=email" --dry-run
    """
    from crmsync.contacts.columns import ImportFileError, parse_mapping
    from crmsync.contacts.importer import ImportOptions, format_for, import_contacts
    from crmsync.contacts.service import parse_crms

    with exit_codes():
        options = ImportOptions(
            format=fmt.value if fmt else format_for(file),
            mapping=parse_mapping(mapping or []),
            delimiter=_delimiter(delimiter),
            select=parse_crms(select.split(",")) if select else (),
            dry_run=dry_run,
            chunk_size=chunk_size,
        )
    settings = common.load_settings()
    reject_path = rejects or Path(("stdin" if file == "-" else file) + ".rejected.csv")
    latest: list[ImportSummary] = []  # the summary after the last chunk written

    try:
        with _input(file) as (stream, size), _rejects_file(reject_path) as reject_stream:
            with _progress(size, "importing") as advance:

                def report(done: ImportSummary, bytes_read: int) -> None:
                    latest[:] = [done]
                    advance(bytes_read, done.rows)

                summary = _run(
                    settings,
                    lambda engine: import_contacts(
                        engine, settings, stream, options, rejects=reject_stream, on_progress=report
                    ),
                )
    except ImportFileError as exc:
        if exc.summary is not None and exc.summary.rows and not options.dry_run:
            typer.echo(f"the {exc.summary.rows:,} rows before it were imported", err=True)
        raise fail(f"{file}: {exc.message}", 1) from None
    except KeyboardInterrupt:
        rows = latest[0].rows if latest else 0
        raise fail(
            f"interrupted: the first {rows:,} rows were imported; run the same command again "
            "to finish",
            130,
        ) from None
    shown = str(reject_path) if summary.rejected else None
    if as_json:
        typer.echo(json.dumps({**summary.as_dict(), "rejects_file": shown}, indent=2))
    else:
        _print_summary(file, summary, shown)


@app.command("export", rich_help_panel="Contacts")
def export_command(
    fmt: Annotated[FileFormat, typer.Option("--format", help="csv or jsonl.")] = FileFormat.csv,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="PATH", help="Write here instead of stdout."),
    ] = None,
    email_type: filters.EmailTypeOption = None,
    brevo_status: filters.BrevoStatus = None,
    hubspot_status: filters.HubspotStatus = None,
    mautic_status: filters.MauticStatus = None,
    n8n_status: filters.N8nStatus = None,
    curation_status: filters.CurationOption = None,
    processing_status: filters.ProcessingOption = None,
    email_contains: filters.EmailContains = None,
    name_contains: filters.NameContains = None,
    domain_id: filters.DomainId = None,
    page_id: filters.PageId = None,
    has_gmail: filters.HasGmail = None,
) -> None:
    """Export contacts: every field, and each CRM's status, error,
    external id and sync times.

    The filters are the list API's; without any, every contact. CSV
    cells a spreadsheet would run as formulas are neutralised, and
    importing an export changes nothing. Streamed: memory stays flat.

    Example: crmsync export --brevo-status Complete -o synced.csv
    """
    from crmsync.contacts.exporter import export_contacts

    chosen = filters.contact_filters(
        email_type=email_type,
        brevo_status=brevo_status,
        hubspot_status=hubspot_status,
        mautic_status=mautic_status,
        n8n_status=n8n_status,
        curation_status=curation_status,
        processing_status=processing_status,
        email_contains=email_contains,
        name_contains=name_contains,
        domain_id=domain_id,
        page_id=page_id,
        has_gmail=has_gmail,
    )
    settings = common.load_settings()
    with _output(output) as out, _progress(None, "exporting", show=output is not None) as advance:

        async def work(engine: AsyncEngine) -> int | None:
            try:
                return await export_contacts(
                    engine, chosen, out, fmt.value, on_progress=lambda n: advance(n, n)
                )
            except BrokenPipeError:
                return None  # the reader went away (`crmsync export | head`): stop quietly

        count = _run(settings, work)
    if count is None:
        # Python would complain flushing stdout at exit; nobody reads it any more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    where = f" to {output}" if output is not None else ""
    typer.echo(f"exported {count:,} contact(s){where}", err=True)


# -- wiring --------------------------------------------------------------------------------------


def _run(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run `work` against DATABASE_URL after checking its schema; database errors exit 1."""
    from crmsync.runtime import check_schema

    # The schema check reads alembic's version table; its INFO lines are noise here.
    logging.getLogger("alembic").setLevel(logging.WARNING)

    async def _go() -> T:
        engine = db.engine_for(settings)
        try:
            await check_schema(engine)
            return await work(engine)
        finally:
            await engine.dispose()

    with exit_codes():
        return asyncio.run(_go())


@contextlib.contextmanager
def _input(file: str) -> Iterator[tuple[IO[bytes], int | None]]:
    """The file (or stdin for -) and its size when known."""
    if file == "-":
        yield sys.stdin.buffer, None
        return
    try:
        stream = open(file, "rb")
        size = os.fstat(stream.fileno()).st_size
    except OSError as exc:
        raise fail(f"cannot read {file}: {exc.strerror or exc}", 1) from None
    with stream:
        yield stream, size or None


@contextlib.contextmanager
def _rejects_file(path: Path) -> Iterator[IO[str]]:
    """A temporary file next to `path`, put in its place only if some row was rejected.

    A clean import leaves no empty rejects file behind; a rejects file from an earlier run
    is replaced when there are new rejects, and otherwise left as it was.
    """
    try:
        handle = tempfile.NamedTemporaryFile(
            "w",
            encoding="utf-8",
            newline="",
            dir=path.parent or ".",
            prefix=f".{path.name}.",
            delete=False,
        )
    except OSError as exc:
        raise fail(f"cannot write rejects next to {path}: {exc.strerror or exc}", 1) from None
    try:
        yield handle
    finally:
        handle.close()
        if os.path.getsize(handle.name):
            os.replace(handle.name, path)
        else:
            os.unlink(handle.name)


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[IO[str]]:
    """stdout, or a file written whole or not at all (a failed export leaves no half file)."""
    if path is None:
        yield sys.stdout
        return
    try:
        handle = tempfile.NamedTemporaryFile(
            "w",
            encoding="utf-8",
            newline="",
            dir=path.parent or ".",
            prefix=f".{path.name}.",
            delete=False,
        )
    except OSError as exc:
        raise fail(f"cannot write {path}: {exc.strerror or exc}", 1) from None
    done = False
    try:
        with handle:
            yield handle
        done = True
    finally:
        if done:
            os.replace(handle.name, path)
        else:
            os.unlink(handle.name)


@contextlib.contextmanager
def _progress(
    total: int | None, what: str, *, show: bool = True
) -> Iterator[Callable[[int, int], None]]:
    """A Rich progress bar with rows/s on stderr when it is a terminal: advance(completed, rows).

    `completed` counts towards `total` (bytes of the file); without a total the bar pulses.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        ProgressColumn,
        Task,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.text import Text

    class RowsPerSecond(ProgressColumn):
        def render(self, task: Task) -> Text:
            elapsed = task.elapsed or 0.0
            rate = task.fields["rows"] / elapsed if elapsed > 0 else 0.0
            return Text(f"{rate:,.0f} rows/s", style="progress.data.speed")

    console = Console(stderr=True)
    if not show or not console.is_terminal:
        yield lambda _completed, _rows: None
        return
    bar = Progress(
        TextColumn(f"[bold]{what}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rows]:,} rows"),
        RowsPerSecond(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task(what, total=total, rows=0)
    with bar:
        yield lambda completed, rows: bar.update(task, completed=completed, rows=rows)


def _print_summary(file: str, summary: ImportSummary, rejects: str | None) -> None:
    how = summary.encoding
    if summary.delimiter is not None:
        how += (
            ", "
            + {",": "comma", ";": "semicolon", "\t": "tab"}.get(
                summary.delimiter, repr(summary.delimiter)
            )
            + "-separated"
        )
    mapped = ", ".join(f"{c} -> {f}" for c, f in summary.columns.items() if c != f)
    if mapped:
        typer.echo(f"columns: {mapped}", err=True)
    if summary.unknown_columns:
        names = ", ".join(repr(c) for c in summary.unknown_columns)
        typer.echo(f"not imported (unknown columns, --map reads one): {names}", err=True)
    prefix = "dry run, nothing written: " if summary.dry_run else ""
    typer.echo(f"{prefix}{file}: {summary.rows:,} rows read ({how})")
    lines = [
        ("created", summary.created),
        ("updated", summary.updated),
        ("unchanged", summary.unchanged),
        ("duplicates", summary.duplicates),
        ("rejected", summary.rejected),
    ]
    for label, value in lines:
        note = f"  -> {rejects}" if label == "rejected" and rejects else ""
        typer.echo(f"  {label:<11}{value:>10,}{note}")
    if summary.selected:
        typer.echo(f"  {'selected':<11}{summary.selected:>10,}  ({summary.queued:,} queued)")
