"""The documentation stays true: its SQL runs, its commands exist, its settings are real."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.cli import app

ROOT = Path(__file__).resolve().parent.parent
OPERATIONS = (ROOT / "docs" / "OPERATIONS.md").read_text()
SQL_BLOCK = re.compile(r"```sql( postgresql| sqlite)?\n(.*?)```", re.DOTALL)


def _queries(dialect: str) -> list[str]:
    found = []
    for match in SQL_BLOCK.finditer(OPERATIONS):
        only = (match.group(1) or "").strip()
        if not only or only == dialect:
            found.append(match.group(2))
    return found


def test_the_operations_guide_has_queries_for_both_databases() -> None:
    assert len(_queries("sqlite")) >= 7 and len(_queries("postgresql")) >= 7


async def test_every_monitoring_query_runs(engine: AsyncEngine) -> None:
    queries = _queries(engine.dialect.name)
    async with engine.connect() as conn:
        for query in queries:
            await conn.execute(text(query))  # raises on a typo, a wrong column or table


@pytest.mark.parametrize("doc", ["README.md", "docs/OPERATIONS.md", "docs/API.md"])
def test_documented_commands_exist(doc: str) -> None:
    content = (ROOT / doc).read_text()
    registered = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    used = set(re.findall(r"`crmsync ([a-z][a-z-]+)", content))
    assert used, doc
    assert used <= registered, f"{doc} names commands that do not exist: {used - registered}"
