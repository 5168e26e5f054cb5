"""What every command shares: settings, CRM options, exit codes and running against the database.

Commands call `common.load_settings()` through this module (not a name imported from it), so a
test can hand every command its settings by patching one attribute.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import db, logs
from crmsync.enums import CRM_NAMES, Crm
from crmsync.errors import BadRequest, NotFound
from crmsync.migrate import upgrade
from crmsync.settings import Settings

if TYPE_CHECKING:
    from crmsync.ops.service import OpsService

T = TypeVar("T")

CrmOption = Annotated[
    list[str] | None,
    typer.Option("--crm", help="Only this CRM (repeatable): brevo, hubspot, mautic, n8n."),
]


def parse_crm_names(names: list[str] | None) -> list[Crm] | None:
    if not names:
        return None
    try:
        return [Crm(name.strip().lower()) for name in names]
    except ValueError:
        valid = ", ".join(CRM_NAMES)
        raise typer.BadParameter(
            f"unknown CRM in {names}; valid: {valid}", param_hint="--crm"
        ) from None


def read_settings() -> tuple[Settings | None, list[str]]:
    """Settings from the environment and .env, or None and one line per bad value."""
    try:
        return Settings(), []
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            where = ".".join(str(p) for p in error["loc"])
            problems.append(f"{where}: {error['msg']}")
        return None, problems


def load_settings() -> Settings:
    """Settings from the environment and .env, or a readable exit on a bad value."""
    settings, problems = read_settings()
    if settings is None:
        lines = "\n".join(f"  {problem}" for problem in problems)
        typer.echo("crmsync: invalid configuration:\n" + lines, err=True)
        raise typer.Exit(2)
    logs.configure(settings.log_format, settings.log_level)
    return settings


def open_engine(settings: Settings) -> AsyncEngine:
    """The engine of DATABASE_URL; a SQLite file that cannot be opened fails here already.

    For SQLite the file is opened once with plain sqlite3 first: when aiosqlite cannot open
    it, its thread reports the failure to an event loop that `asyncio.run` may have closed
    meanwhile, and prints a traceback after our one-line message.
    """
    url = db.normalise_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        sqlite3.connect(url.database).close()
    return db.engine_for(settings)


async def upgrade_schema(settings: Settings) -> None:
    engine = open_engine(settings)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


OpsCrm = Annotated[str, typer.Option("--crm", help="The CRM: brevo, hubspot, mautic or n8n.")]


def fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"crmsync: {message}", err=True)
    return typer.Exit(code)


def database_name(url: str) -> str:
    """DATABASE_URL as it may be shown to a person: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not even a URL: show nothing of it, it may hold a password
        return "in DATABASE_URL (not a valid URL)"


def _redact(text: str, url: str) -> str:
    """`text` without the password of `url` (driver messages sometimes repeat the DSN)."""
    try:
        password = make_url(url).password
    except Exception:
        return text
    return text.replace(str(password), "***") if password else text


@contextmanager
def exit_codes(settings: Settings | None = None) -> Iterator[None]:
    """Turn operations errors into a message on stderr and an exit code.

    2 for bad input (unknown CRM or status, an outdated schema); 1 for a request refused for
    safety, nothing found, or a database that cannot be used (named, password redacted, when
    `settings` are given).
    """
    from sqlalchemy.exc import SQLAlchemyError

    from crmsync.ops.service import Refused
    from crmsync.runtime import SchemaOutdated

    try:
        yield
    except Refused as exc:
        raise fail(exc.message, 1) from None
    except NotFound as exc:
        raise fail(exc.message, 1) from None
    except (BadRequest, SchemaOutdated) as exc:
        raise fail(str(exc), 2) from None
    except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
        raise database_failure(exc, settings) from None


def database_failure(exc: BaseException, settings: Settings | None) -> typer.Exit:
    """One line that says which database could not be used and why; exit 1 (2: a bad URL)."""
    from sqlalchemy.exc import ArgumentError

    if isinstance(exc, ArgumentError):
        # Its message repeats the URL, password included: say what is wrong without it.
        return fail(
            f"DATABASE_URL is not a database URL crmsync can use ({type(exc).__name__}); "
            "e.g. sqlite+aiosqlite:///./crmsync.db or postgresql://user:password@host/db",
            2,
        )
    # The first line only: SQLAlchemy appends the statement and a link.
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    where = "the database"
    if settings is not None:
        first = _redact(first, settings.database_url)
        where = f"the database {database_name(settings.database_url)}"
    return fail(f"{where} could not be used ({type(exc).__name__}: {first})", 1)


def run_db(settings: Settings, action: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run `action(engine)` against DATABASE_URL after checking its schema version."""
    from crmsync.runtime import check_schema

    # The schema check reads alembic's version table; its INFO lines are noise here.
    logging.getLogger("alembic").setLevel(logging.WARNING)

    async def _run() -> T:
        engine = open_engine(settings)
        try:
            await check_schema(engine)
            return await action(engine)
        finally:
            await engine.dispose()

    with exit_codes(settings):
        return asyncio.run(_run())


def run_ops(settings: Settings, action: Callable[[OpsService], Awaitable[T]]) -> T:
    """Run one operations call against DATABASE_URL (after checking its schema version)."""
    from crmsync.ops.service import OpsService

    return run_db(settings, lambda engine: action(OpsService(engine, settings)))


def one_crm(name: str) -> Crm:
    from crmsync.ops.service import parse_crm

    try:
        return parse_crm(name)
    except BadRequest as exc:
        raise fail(exc.message, 2) from None


def read_id_file(path: str) -> list[uuid.UUID]:
    """Contact ids, one per line (blank lines and # comments skipped); "-" reads stdin.

    Any line that is not a UUID fails the whole file, so nothing is changed by half a list.
    No ids at all is no work (said on stderr), not an error: an empty pipe is a normal day.
    """
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadRequest(f"cannot read {path}: {exc}") from None
    ids: list[uuid.UUID] = []
    bad: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            ids.append(uuid.UUID(line))
        except ValueError:
            bad.append(f"line {number}: {line[:80]!r}")
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise BadRequest(f"{path}: not a contact id (UUID) on {shown}. Nothing was changed.")
    if not ids:
        # Not an error: `crmsync failed --format ids | crmsync retry --ids -` with no failures.
        typer.echo(f"crmsync: {path}: no contact ids in it; nothing to do", err=True)
    return ids
