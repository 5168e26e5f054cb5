"""The dashboard's Import page: upload a CSV file, see its summary, download its rejected rows.

The upload goes through `contacts.importer`, as `crmsync import FILE` does:

1. The form is parsed by Starlette, which spools the file to a temporary file past 1 MiB (it is
   never held in memory); the request body is bounded by CRMSYNC_MAX_BODY_BYTES like every
   request (`api.limits`). The session's CSRF token is checked (`WriteSession`).
2. `importer.check_file` reads the whole file, in a thread, for what would stop it (no email
   column, an unclosed quote, a file that cannot be decoded): a bad file writes nothing.
3. `importer.import_contacts` writes it a chunk per transaction, reading in a thread while it
   writes, so the event loop keeps serving; rejected rows stream to a file of `import_results`.
4. The browser is redirected to `/import?result=ID`, where the summary shows and the rejected
   rows download from `/import/rejects/ID`, for this session only (see `import_results`).
"""

from __future__ import annotations

import asyncio
from typing import IO, Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import UploadFile

from crmsync.contacts.importer import (
    ImportFileError,
    ImportOptions,
    ImportSummary,
    check_file,
    format_for,
    import_contacts,
)
from crmsync.web.import_results import ResultStore
from crmsync.web.session import PageSession, Session, WriteSession
from crmsync.web.templating import render

router = APIRouter(include_in_schema=False)

FIELD = "file"
SEPARATORS = {",": "comma", ";": "semicolon", "\t": "tab"}
# The CLI's advice names its options; on the page the file itself is what a person changes.
_CLI_HINTS = {
    "Name one with --map COLUMN=email": "Name that column Email (or E-mail, Email Address) and "
    "upload the file again",
    " (a CSV file? use --format csv)": "",
}


def results(request: Request) -> ResultStore:
    """The app's result store, made on first use (tests set `app.state.import_results`)."""
    store: ResultStore | None = getattr(request.app.state, "import_results", None)
    if store is None:
        store = request.app.state.import_results = ResultStore()
    return store


def _page(
    request: Request,
    session: Session,
    *,
    result: dict[str, Any] | None = None,
    result_id: str = "",
    rejects: bool = False,
    error: str = "",
    status_code: int = 200,
) -> Response:
    context = {
        "active": "import",
        "title": "Import",
        "max_bytes": request.app.state.settings.max_body_bytes,
        "result": result,
        "result_id": result_id,
        "rejects": rejects,
        "separator": SEPARATORS.get(str((result or {}).get("delimiter")), ""),
    }
    flash = {"kind": "error", "text": error} if error else None
    return render(
        request, "import.html", context, session=session, status_code=status_code, flash=flash
    )


@router.get("/import")
async def import_page(request: Request, session: PageSession) -> Response:
    result_id = request.query_params.get("result", "")
    if not result_id:
        return _page(request, session)
    found = results(request).find(result_id, session.csrf)
    if found is None:
        message = "This import's result is no longer kept (an hour, in this session only)."
        return _page(request, session, error=message, status_code=404)
    return _page(
        request,
        session,
        result=found.summary,
        result_id=result_id,
        rejects=found.rejects is not None,
    )


@router.post("/import")
async def upload(request: Request, session: WriteSession) -> Response:
    form = await request.form()
    try:
        upload = form.get(FIELD)
        if not isinstance(upload, UploadFile) or not (upload.filename or upload.size):
            return _page(request, session, error="Choose a CSV file to import.", status_code=400)
        return await _import(request, session, upload)
    finally:
        await form.close()  # the spooled upload's temporary file


async def _import(request: Request, session: Session, upload: UploadFile) -> Response:
    name = upload.filename or "upload.csv"
    options = ImportOptions(format=format_for(name))
    store = results(request)
    done: list[ImportSummary] = []  # the summary after the last chunk committed

    def progress(summary: ImportSummary, _bytes_read: int) -> None:
        done[:] = [summary]

    try:
        await asyncio.to_thread(_check, upload.file, options)
        with store.writing(session.csrf) as (result_id, rejects):
            summary = await import_contacts(
                request.app.state.engine,
                request.app.state.settings,
                upload.file,
                options,
                rejects=rejects,
                clock=request.app.state.contacts.clock,
                on_progress=progress,
            )
    except ImportFileError as exc:
        written = exc.summary.rows if exc.summary is not None else 0
        return _refused(request, session, name, _for_the_page(exc.message), written, 400)
    except SQLAlchemyError:
        written = done[0].rows if done else 0
        message = "the database failed while importing"
        return _refused(request, session, name, message, written, 503)
    store.save(result_id, session.csrf, {"file": name, **summary.as_dict()})
    return RedirectResponse(f"/import?result={result_id}", status_code=303)


def _check(stream: IO[bytes], options: ImportOptions) -> None:
    check_file(stream, options)
    stream.seek(0)


def _refused(
    request: Request, session: Session, name: str, reason: str, written: int, status: int
) -> Response:
    if written:
        after = (
            f" The first {written:,} rows were imported: upload the same file again to finish "
            "(rows already imported count as unchanged)."
        )
    else:
        after = " Nothing was imported."
    return _page(request, session, error=f"{name}: {reason}.{after}", status_code=status)


def _for_the_page(message: str) -> str:
    for cli, page in _CLI_HINTS.items():
        message = message.replace(cli, page)
    return message.rstrip(". ")


@router.get("/import/rejects/{result_id}")
async def rejected_rows(request: Request, session: PageSession, result_id: str) -> Response:
    """The rejected rows of this session's import, as CSV: line, reason, then the row."""
    found = results(request).find(result_id, session.csrf)
    if found is None or found.rejects is None:
        message = "These rejected rows are no longer kept (an hour, in this session only)."
        return _page(request, session, error=message, status_code=404)
    stem = str(found.summary.get("file") or "import").rsplit("/", 1)[-1]
    return FileResponse(
        found.rejects,
        media_type="text/csv; charset=utf-8",
        filename=f"{stem}.rejected.csv",
        headers={"Cache-Control": "no-store"},
    )
