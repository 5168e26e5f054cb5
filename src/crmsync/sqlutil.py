"""The few places where SQLite and PostgreSQL need different SQLAlchemy constructs."""

from __future__ import annotations

import datetime as dt
import operator
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast

import orjson
from sqlalchemy import (
    ClauseElement,
    ColumnElement,
    Dialect,
    Select,
    Table,
    bindparam,
    func,
    literal,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import SQLCompiler


def upsert_insert(conn: AsyncConnection, table: Table) -> Any:
    """`INSERT` that supports `ON CONFLICT` on the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


async def lock_in_order(
    conn: AsyncConnection,
    table: Table,
    where: Sequence[ColumnElement[bool]],
    order_by: Sequence[ColumnElement[Any]],
) -> int | None:
    """PostgreSQL: lock the rows of `table` matching `where` (`FOR UPDATE`), in `order_by` order.

    A multi-row UPDATE locks its rows in whatever order its plan reads them, so two transactions
    writing overlapping sets could each hold a row the other waits for (a deadlock, which
    PostgreSQL breaks by failing one of them). Taking the locks first, all in one global order
    (the primary key), makes such writers queue instead: the one that locked the first shared row
    goes on, the other waits for it. One statement that answers a single count, so the rows are
    not sent to the client; it is returned. SQLite has one writer at a time: nothing to do
    there, and None is returned.
    """
    if conn.dialect.name != "postgresql":
        return None
    return int((await conn.execute(lock_statement(table, where, order_by))).scalar_one())


def lock_statement(
    table: Table, where: Sequence[ColumnElement[Any]], order_by: Sequence[ColumnElement[Any]]
) -> Any:
    """PostgreSQL: the statement of `lock_in_order`, for synchronous callers (the worker's
    transactions, which run as `db.Transaction`s): it locks the rows and answers their count."""
    rows = select(literal(1)).select_from(table).where(*where).order_by(*order_by)
    return select(func.count()).select_from(rows.with_for_update().subquery())


def for_key_share(stmt: Select[Any], of: Table) -> Select[Any]:
    """PostgreSQL: `stmt` reading the rows of `of` `FOR KEY SHARE`: none of them can be deleted
    (or its key changed) until this transaction commits, while other writes to them go on.
    SQLAlchemy spells it `read=True, key_share=True`; `key_share=True` alone is `FOR NO KEY
    UPDATE`, which holds up a person's edit of those rows and deadlocked with it (the API load
    benchmark, issue 24)."""
    return stmt.with_for_update(read=True, key_share=True, of=of)


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    """Split a parameter list so that no statement exceeds the drivers' bind-parameter limits."""
    return [items[i : i + size] for i in range(0, len(items), size)]


class Compiled:
    """A Core statement compiled once per dialect, executed many times with plain tuples.

    SQLAlchemy's executemany builds and type-processes a parameter dict per row, which costs
    more than the SQL itself on the hot paths (bench/README.md, "Figures behind the code").
    Here the statement is still written in Core, compiled once, and each row is a tuple of
    values already in the driver's form (see `DriverValues`).
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
        if conn.dialect.name == "sqlite":
            return _sqlite_cursor(conn, sql, pick(row + constants)).fetchall()
        return list(conn.exec_driver_sql(sql, pick(row + constants)).fetchall())

    def execute(self, conn: Connection, row: tuple[Any, ...]) -> int:
        """Run the statement once with `row`'s values; the number of rows it changed."""
        sql, constants, pick = self._compile(conn.dialect)
        if conn.dialect.name == "sqlite":
            return int(_sqlite_cursor(conn, sql, pick(row + constants)).rowcount)
        return int(conn.exec_driver_sql(sql, pick(row + constants)).rowcount)


def _sqlite_cursor(conn: Connection, sql: str, params: Sequence[Any]) -> sqlite3.Cursor:
    """Run `sql` on the connection's own sqlite3 connection, in its open transaction.

    The queue's statements run a few times per batch, and SQLAlchemy's per-execution machinery
    (execution context, cursor wrapper, result object) costs several rows' worth of SQLite's
    own work each time (bench/README.md, "Figures behind the code"). Errors still come out as
    SQLAlchemy's exceptions, as `exec_driver_sql` would raise them.
    """
    driver: Any = conn.connection.driver_connection
    try:
        return cast(sqlite3.Cursor, driver.execute(sql, params))
    except sqlite3.Error as exc:
        raise DBAPIError.instance(
            sql, params, exc, sqlite3.Error, hide_parameters=conn.engine.hide_parameters
        ) from exc


class JsonRows:
    """`json_each(?)` as a table: the per-row values of a batch, read from one JSON parameter.

    Call it with a value's name: a per-row name gives that column of the current row, any other
    name a plain bound parameter (a value shared by the whole batch).
    """

    PARAM = "_rows"

    def __init__(self, per_row: Sequence[str]) -> None:
        self.per_row = tuple(per_row)
        self.table = func.json_each(bindparam(self.PARAM)).table_valued("value").alias("r")

    def __call__(self, name: str) -> Any:
        if name in self.per_row:
            return func.json_extract(self.table.c.value, f"$[{self.per_row.index(name)}]")
        return bindparam(name)


class ArrayRows:
    """`unnest(...)` as a table (PostgreSQL): each per-row column of a batch as one typed array.

    Called like `JsonRows`: a per-row name gives that column of the current row, any other name
    a plain bound parameter.
    """

    def __init__(self, columns: Sequence[tuple[str, Any]]) -> None:
        self.per_row = tuple(name for name, _ in columns)
        self.params = tuple(f"_rows_{name}" for name in self.per_row)
        arrays = (
            bindparam(param, type_=postgresql.ARRAY(type_))
            for param, (_, type_) in zip(self.params, columns, strict=True)
        )
        # `AS r(name, ...)`: unnest's output columns get the per-row names.
        self.table = func.unnest(*arrays).table_valued(*self.per_row).render_derived(name="r")

    def __call__(self, name: str) -> Any:
        if name in self.per_row:
            return self.table.c[name]
        return bindparam(name)


class JsonWrite:
    """SQLite: one write (UPDATE or INSERT) applied to every row of a batch, in one statement.

    The rows travel as one JSON array and the statement reads them through `json_each`
    (`JsonRows`): one statement step for the batch, where an executemany steps once per row,
    releasing and retaking the GIL each time, and builds a parameter tuple per row in Python.
    """

    def __init__(self, stmt: ClauseElement, shared: Sequence[str]) -> None:
        self._compiled = Compiled(stmt, (JsonRows.PARAM, *shared))

    def run(
        self, conn: Connection, rows: Sequence[tuple[Any, ...]], shared: tuple[Any, ...]
    ) -> int:
        """Write `rows` (per-row values) with the batch's `shared` values; rows changed."""
        if not rows:
            return 0
        return self._compiled.execute(conn, (orjson.dumps(rows).decode(), *shared))


class ArrayWrite:
    """PostgreSQL: one write applied to every row of a batch, in one statement.

    The rows travel as one typed array per column and the statement reads them through
    `unnest` (`ArrayRows`). One statement per batch also fires the count triggers of migration
    0003 once per batch instead of once per row, as an executemany would.
    """

    def __init__(self, arrays: ArrayRows, stmt: ClauseElement, shared: Sequence[str]) -> None:
        self._compiled = Compiled(stmt, (*arrays.params, *shared))

    def run(
        self, conn: Connection, rows: Sequence[tuple[Any, ...]], shared: tuple[Any, ...]
    ) -> int:
        """Write `rows` (per-row values) with the batch's `shared` values; rows changed."""
        if not rows:
            return 0
        columns = (list(column) for column in zip(*rows, strict=True))
        return self._compiled.execute(conn, (*columns, *shared))


_new_object = object.__new__
_set_slot = object.__setattr__
_UNKNOWN = uuid.SafeUUID.unknown


def uuid_from_hex(value: str) -> uuid.UUID:
    """A UUID from the 32 hex digits SQLite stores, for about half of `uuid.UUID(value)`'s cost.

    The claim converts four ids per row on the sync hot path; `UUID.__init__` parses every
    accepted spelling (braces, dashes, URN), which this skips. It sets the two slots `UUID` has
    (`int`, `is_safe`) directly, from a value the database wrote (the `Uuid` type).
    """
    result = _new_object(uuid.UUID)  # uuid_from_int's body: a call less on the hot path
    _set_slot(result, "int", int(value, 16))
    _set_slot(result, "is_safe", _UNKNOWN)
    return result


def uuid_from_int(value: int) -> uuid.UUID:
    """`uuid.UUID(int=value)` for a value known to be a UUID's 128 bits, in half the time."""
    result = _new_object(uuid.UUID)
    _set_slot(result, "int", value)
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
