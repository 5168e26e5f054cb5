"""What every command shares: settings, CRM options, exit codes and running against the database.

Commands call `common.load_settings()` through this module (not a name imported from it), so a
test can hand every command its settings by patching one attribute.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from pydantic import ValidationError

from crmsync import db, logs
from crmsync.enums import CRM_NAMES, Crm
from crmsync.errors import BadRequest
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


async def upgrade_schema(settings: Settings) -> None:
    engine = db.engine_for(settings)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


OpsCrm = Annotated[str, typer.Option("--crm", help="The CRM: brevo, hubspot, mautic or n8n.")]


def fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"crmsync: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def exit_codes() -> Iterator[None]:
    """Turn operations errors into a message on stderr and an exit code.

    2 for bad input (unknown CRM or status, an outdated schema); 1 for a request refused for
    safety, or a database that cannot be used.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from crmsync.ops.service import Refused
    from crmsync.runtime import SchemaOutdated

    try:
        yield
    except Refused as exc:
        raise fail(exc.message, 1) from None
    except (BadRequest, SchemaOutdated) as exc:
        raise fail(str(exc), 2) from None
    except (SQLAlchemyError, OSError) as exc:
        # The first line only: SQLAlchemy appends the statement and a link.
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise fail(f"the database could not be used ({type(exc).__name__}: {first})", 1) from None


def run_ops(settings: Settings, action: Callable[[OpsService], Awaitable[T]]) -> T:
    """Run one operations call against DATABASE_URL (after checking its schema version)."""
    from crmsync.ops.service import OpsService
    from crmsync.runtime import check_schema

    # The schema check reads alembic's version table; its INFO lines are noise here.
    logging.getLogger("alembic").setLevel(logging.WARNING)

    async def _run() -> T:
        engine = db.engine_for(settings)
        try:
            await check_schema(engine)
            return await action(OpsService(engine, settings))
        finally:
            await engine.dispose()

    with exit_codes():
        return asyncio.run(_run())


def one_crm(name: str) -> Crm:
    from crmsync.ops.service import parse_crm

    try:
        return parse_crm(name)
    except BadRequest as exc:
        raise fail(exc.message, 2) from None


def read_id_file(path: str) -> list[uuid.UUID]:
    """Contact ids, one per line (blank lines and # comments skipped); "-" reads stdin.

    Any line that is not a UUID fails the whole file, so nothing is changed by half a list.
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
        raise BadRequest(f"{path}: no contact ids in it (one UUID per line)")
    return ids
