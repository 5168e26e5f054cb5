"""`crmsync db current` and `crmsync db downgrade` (`db upgrade` is in service.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer

from crmsync.cli import common
from crmsync.cli.app import db_app
from crmsync.cli.common import exit_codes, fail
from crmsync.migrate import current_revision, downgrade, revisions
from crmsync.settings import Settings

BASE = "base"


def _current(settings: Settings) -> str | None:
    # Alembic says which implementation it uses on every connection: noise here.
    logging.getLogger("alembic").setLevel(logging.WARNING)

    async def _read() -> str | None:
        engine = common.open_engine(settings)
        try:
            return await current_revision(engine)
        finally:
            await engine.dispose()

    with exit_codes(settings):
        return asyncio.run(_read())


@db_app.command("current")
def db_current() -> None:
    """Show the schema revision of DATABASE_URL, and what `db upgrade` would apply.

    Exits 0 when the database is readable (whatever its revision), 1 when it is not, or when
    its revision is unknown to this version of crmsync (a newer one migrated it).

    \b
    Example:
      DATABASE_URL=postgresql://crmsync@db/crmsync crmsync db current
    """
    settings = common.load_settings()
    current = _current(settings)
    known = revisions()
    ids = [rev for rev, _ in known]
    head = ids[-1]
    where = common.database_name(settings.database_url)
    if current is None:
        typer.echo(f"{where}: no crmsync schema (empty); `crmsync db upgrade` creates it")
        return
    if current not in ids:
        raise fail(
            f"{where} is at revision {current}, which this version of crmsync does not know "
            f"(its latest is {head}): a newer crmsync migrated it",
            1,
        )
    doc = dict(known)[current]
    if current == head:
        typer.echo(f"{where}: {current} (latest): {doc}")
        return
    pending = ids[ids.index(current) + 1 :]
    typer.echo(f"{where}: {current}: {doc}")
    typer.echo(f"`crmsync db upgrade` would apply {len(pending)} migration(s):")
    for rev in pending:
        typer.echo(f"  {rev}: {dict(known)[rev]}")


# `-1` is a revision here, not an unknown option.
@db_app.command("downgrade", context_settings={"ignore_unknown_options": True})
def db_downgrade(
    revision: Annotated[
        str,
        typer.Argument(
            metavar="REV", help="Target revision: an id (0004), -N (N steps down), or base."
        ),
    ],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Undo schema migrations down to REV, to go back to an older crmsync.

    Stop `serve` and every worker first. Shows what will be undone and asks before changing
    anything. Downgrading to base drops every crmsync table with all contacts in it.

    \b
    Examples:
      crmsync db current
      crmsync db downgrade 0004
      crmsync db downgrade -1 --yes
    """
    settings = common.load_settings()
    ids = [rev for rev, _ in revisions()]
    docs = dict(revisions())
    current = _current(settings)
    if current is None:
        raise fail("the database has no crmsync schema: nothing to downgrade", 2)
    if current not in ids:
        raise fail(f"the database is at {current}, unknown to this version of crmsync", 2)
    at = ids.index(current)
    target = _target(revision, ids, at)
    if target == current:
        typer.echo(f"already at {current}; nothing to do")
        return
    undo = list(reversed(ids[ids.index(target) + 1 if target != BASE else 0 : at + 1]))
    where = common.database_name(settings.database_url)
    typer.echo(f"{where}: {current} -> {target}; undoes:")
    for rev in undo:
        typer.echo(f"  {rev}: {docs[rev]}")
    if target == BASE:
        typer.echo("base drops every crmsync table: ALL contacts and their sync state are deleted")
    if not yes and not typer.confirm(f"Downgrade to {target}?", default=False):
        raise fail("aborted; nothing was changed", 1)

    async def _down() -> None:
        engine = common.open_engine(settings)
        try:
            await downgrade(engine, target)
        finally:
            await engine.dispose()

    with exit_codes(settings):
        asyncio.run(_down())
    typer.echo(
        f"database schema is at {target}; this version of crmsync needs {ids[-1]} and will not "
        "run on it until `crmsync db upgrade`"
    )


def _target(revision: str, ids: list[str], at: int) -> str:
    """REV as a revision id or BASE; exit 2 if it is unknown or not below the current one."""
    text = revision.strip().lower()
    if text == BASE:
        return BASE
    if text.startswith("-") and text[1:].isdigit():
        index = at - int(text[1:])
        if index < -1:
            raise fail(f"{revision}: only {at + 1} migration(s) to undo", 2)
        return BASE if index == -1 else ids[index]
    if revision not in ids:
        raise fail(f"unknown revision {revision!r}; known: {', '.join(ids)}, or base, or -N", 2)
    if ids.index(revision) > at:
        raise fail(
            f"{revision} is above the current revision {ids[at]}: use `crmsync db upgrade`", 2
        )
    return revision
