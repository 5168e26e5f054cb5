"""The few places where SQLite and PostgreSQL need different SQLAlchemy constructs."""

from __future__ import annotations

import datetime as dt
import operator
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast

from sqlalchemy import ClauseElement, Dialect, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import SQLCompiler


def upsert_insert(conn: AsyncConnection, table: Table) -> Any:
    """`INSERT` that supports `ON CONFLICT` on the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    """Split a parameter list so that no statement exceeds the drivers' bind-parameter limits."""
    return [items[i : i + size] for i in range(0, len(items), size)]


class Compiled:
    """A Core statement compiled once per dialect, executed many times with plain tuples.

    SQLAlchemy's executemany builds and type-processes a parameter dict per row, which costs
    more than the SQL itself on the hot paths (measured: ~35 us per row). Here the statement is
    still written in Core, compiled once, and each row is a tuple of values already in the
    driver's form (see `DriverValues`).
    """

    def __init__(self, stmt: ClauseElement, row_keys: Sequence[str]) -> None:
        self.stmt = stmt
        self.row_keys = tuple(row_keys)
        self._by_dialect: dict[str, tuple[str, tuple[Any, ...], Callable[[Any], Any]]] = {}

    def _compile(self, dialect: Dialect) -> tuple[str, tuple[Any, ...], Callable[[Any], Any]]:
        cached = self._by_dialect.get(dialect.name)
        if cached is None:
            compiled = cast(SQLCompiler, self.stmt.compile(dialect=dialect))
            order = compiled.positiontup or ()
            # Each parameter comes from the row, or is a constant of the statement: pick them
            # from `row + constants` with one itemgetter (C speed, no per-value Python).
            constants = tuple(compiled.params[name] for name in order)
            width = len(self.row_keys)
            positions = [
                self.row_keys.index(name) if name in self.row_keys else width + i
                for i, name in enumerate(order)
            ]
            if len(positions) < 2:  # itemgetter of one index returns a value, not a tuple
                raise ValueError("Compiled needs a statement with at least two parameters")
            pick: Callable[[Any], Any] = operator.itemgetter(*positions)
            cached = (compiled.string, constants, pick)
            self._by_dialect[dialect.name] = cached
        return cached

    def fetchall(self, conn: Connection, row: tuple[Any, ...]) -> list[Any]:
        """Run the statement once with `row`'s values; the driver's own result rows."""
        sql, constants, pick = self._compile(conn.dialect)
        return list(conn.exec_driver_sql(sql, pick(row + constants)).fetchall())

    def executemany(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> int:
        """Run the statement once per row; the number of rows it changed in all."""
        if not rows:
            return 0
        sql, constants, pick = self._compile(conn.dialect)
        params = [pick(row + constants) for row in rows]
        return int(conn.exec_driver_sql(sql, params).rowcount)


_new_object = object.__new__
_set_slot = object.__setattr__
_UNKNOWN = uuid.SafeUUID.unknown


def uuid_from_hex(value: str) -> uuid.UUID:
    """A UUID from the 32 hex digits SQLite stores, about 6x cheaper than `uuid.UUID(value)`.

    The claim converts four ids per row on the sync hot path; `UUID.__init__` parses every
    accepted spelling (braces, dashes, URN) and costs about 4 us each. This sets the two slots
    `UUID` has (`int`, `is_safe`) directly, from a value the database wrote (the `Uuid` type).
    """
    result = _new_object(uuid.UUID)
    _set_slot(result, "int", int(value, 16))
    _set_slot(result, "is_safe", _UNKNOWN)
    return result


class DriverValues:
    """Python values in the form each driver stores them, as SQLAlchemy's types would bind them.

    SQLite: UUIDs as 32 hex digits, timestamps as naive UTC text `YYYY-MM-DD HH:MM:SS.ffffff`
    (what `Uuid` and `UTCDateTime` write, so comparisons and reads stay consistent).
    PostgreSQL (asyncpg): native UUID and timezone-aware datetime objects.
    """

    def __init__(self, dialect_name: str) -> None:
        self.sqlite = dialect_name == "sqlite"

    def uuid(self, value: uuid.UUID | None) -> Any:
        if value is None or not self.sqlite:
            return value
        return value.hex

    def ts(self, value: dt.datetime | None) -> Any:
        if value is None or not self.sqlite:
            return value
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
