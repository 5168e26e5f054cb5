"""The few places where SQLite and PostgreSQL need different SQLAlchemy constructs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection


def upsert_insert(conn: AsyncConnection, table: Table) -> Any:
    """`INSERT` that supports `ON CONFLICT` on the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    """Split a parameter list so that no statement exceeds the drivers' bind-parameter limits."""
    return [items[i : i + size] for i in range(0, len(items), size)]
