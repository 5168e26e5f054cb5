"""Driver-level helpers of the hot paths behave like the library types they stand in for."""

from __future__ import annotations

import pickle
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine

from crmsync.sqlutil import Compiled, uuid_from_hex, uuid_from_int


@given(st.uuids())
def test_uuid_from_hex_equals_the_parsed_uuid(value: uuid.UUID) -> None:
    made = uuid_from_hex(value.hex)
    assert made == value and hash(made) == hash(value)
    assert str(made) == str(value) and repr(made) == repr(value)
    assert made.is_safe is uuid.SafeUUID.unknown
    assert pickle.loads(pickle.dumps(made)) == value
    assert {made: 1}[value] == 1


def _numbers(path: Path) -> tuple[Engine, Compiled, Compiled]:
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE numbers (n INTEGER PRIMARY KEY, label TEXT NOT NULL)")
    table = sa.table("numbers", sa.column("n"), sa.column("label"))
    insert = Compiled(
        sa.insert(table).values(n=sa.bindparam("n"), label=sa.bindparam("label")), ("n", "label")
    )
    read = Compiled(
        sa.select(table.c.n, table.c.label).where(
            table.c.n >= sa.bindparam("low"), table.c.label != sa.bindparam("not")
        ),
        ("low", "not"),
    )
    return engine, insert, read


def test_compiled_runs_on_sqlite_in_the_open_transaction(tmp_path: Path) -> None:
    engine, insert, read = _numbers(tmp_path / "n.db")
    with engine.begin() as conn:
        assert insert.execute(conn, (1, "one")) == 1
        assert insert.execute(conn, (2, "two")) == 1
        assert read.fetchall(conn, (2, "")) == [(2, "two")]
    with engine.connect() as conn:
        assert read.fetchall(conn, (0, "")) == [(1, "one"), (2, "two")]


def test_compiled_errors_on_sqlite_are_sqlalchemy_errors_and_roll_back(tmp_path: Path) -> None:
    engine, insert, read = _numbers(tmp_path / "n.db")
    with pytest.raises(sa.exc.IntegrityError, match="UNIQUE constraint failed"):
        with engine.begin() as conn:
            insert.execute(conn, (1, "one"))
            insert.execute(conn, (1, "again"))
    with pytest.raises(sa.exc.IntegrityError, match="NOT NULL"):
        with engine.begin() as conn:
            insert.execute(conn, (3, None))
    with engine.connect() as conn:
        assert read.fetchall(conn, (0, "")) == []  # the first insert was rolled back with the rest


@given(st.uuids())
def test_uuid_from_int_equals_the_uuid(value: uuid.UUID) -> None:
    made = uuid_from_int(value.int)
    assert made == value and hash(made) == hash(value) and str(made) == str(value)
    assert made.is_safe is uuid.SafeUUID.unknown
    assert pickle.loads(pickle.dumps(made)) == value
