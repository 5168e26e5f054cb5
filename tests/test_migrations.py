"""Alembic migrations: a fresh database upgrades to head, and down and up again cleanly."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, select
from sqlalchemy.engine import Connection, make_url

from crmsync import counts, db
from crmsync.migrate import alembic_config, current_revision, upgrade
from crmsync.tables import contacts, crm_sync_state
from tests.conftest import PG_ENV, _async_url, _create_pg_database, _drop_pg_database


def _tables_and_indexes(conn: Connection) -> tuple[set[str], set[str]]:
    tables = set(inspect(conn).get_table_names())
    # Read index names from the catalogue: reflection skips expression indexes with a warning.
    if conn.dialect.name == "sqlite":
        query = "SELECT name FROM sqlite_master WHERE type = 'index'"
    else:
        query = "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
    indexes = {row[0] for row in conn.exec_driver_sql(query)}
    return tables, indexes


async def _roundtrip(url: str) -> None:
    engine = db.create_engine(url)
    try:
        await upgrade(engine)
        assert await current_revision(engine) == "0007"
        async with engine.connect() as conn:
            tables, indexes = await conn.run_sync(_tables_and_indexes)
        assert {"contacts", "crm_sync_state", "sync_events", "crm_control", "workers"} <= tables
        # PostgreSQL only: the trigger-kept counts and the contacts' change log.
        kept = {
            "contact_count_deltas",
            "state_count_deltas",
            "contact_changes",
            "contact_change_images",
            "sync_event_minutes",
        }
        assert kept <= tables if engine.dialect.name == "postgresql" else not kept & tables
        assert {
            "uq_contacts_email_lower",
            "ix_crm_sync_state_queue",
            "ix_crm_sync_state_status_order",
            "ix_contacts_created_at_id",
            "ix_sync_events_contact_id_created_at",
            "ix_crm_sync_state_errors",
        } <= indexes

        def _down(connection: Connection) -> None:
            cfg = alembic_config()
            cfg.attributes["connection"] = connection
            command.downgrade(cfg, "base")

        async with engine.begin() as conn:
            await conn.run_sync(_down)
        assert await current_revision(engine) is None
        await upgrade(engine)  # and back up on the emptied database
        assert await current_revision(engine) == "0007"
    finally:
        await engine.dispose()


async def test_sqlite_roundtrip(tmp_path: Path) -> None:
    await _roundtrip(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")


@contextlib.asynccontextmanager
async def _scratch_postgres() -> AsyncIterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards (skips without one)."""
    raw = os.environ.get(PG_ENV)
    if not raw:
        pytest.skip(f"PostgreSQL variant: set {PG_ENV} to run it")
    admin = _async_url(raw)
    name = f"crmsync_mig_{uuid.uuid4().hex[:8]}"
    await _create_pg_database(admin, name)
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        await _drop_pg_database(admin, name)


async def test_postgres_roundtrip() -> None:
    async with _scratch_postgres() as url:
        await _roundtrip(url)


async def test_postgres_counts_seeded_from_existing_rows() -> None:
    """Upgrading a populated database to 0003 starts the count deltas at the true counts."""
    async with _scratch_postgres() as url:
        engine = db.create_engine(url)
        try:
            await upgrade(engine, "0002")
            async with engine.begin() as conn:
                await conn.exec_driver_sql(
                    "INSERT INTO contacts (id, email, created_at, updated_at) SELECT "
                    "gen_random_uuid(), 'c' || n || '@example.com', now(), now() "
                    "FROM generate_series(1, 7) AS n"
                )
                await conn.exec_driver_sql(
                    "INSERT INTO crm_sync_state (contact_id, crm, sync_status, updated_at) "
                    "SELECT id, 'brevo', 'Complete', now() FROM contacts LIMIT 3"
                )
            await upgrade(engine)
            async with engine.connect() as conn:
                assert await counts.per_status(conn) == (7, {("brevo", "Complete"): 3})
        finally:
            await engine.dispose()


async def _state_rows_keep_created_at(url: str) -> None:
    """Upgrading populated tables to 0004 copies each contact's created_at into its state rows."""
    engine = db.create_engine(url)
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ids = [uuid.uuid4() for _ in range(3)]
    try:
        await upgrade(engine, "0003")
        async with engine.begin() as conn:
            await conn.execute(
                contacts.insert(),
                [
                    {
                        "id": cid,
                        "email": f"c{n}@example.com",
                        "created_at": base + dt.timedelta(hours=n),
                        "updated_at": base,
                    }
                    for n, cid in enumerate(ids)
                ],
            )
            await conn.execute(
                crm_sync_state.insert(),
                [
                    {"contact_id": cid, "crm": crm, "updated_at": base}
                    for cid in ids
                    for crm in ("brevo", "n8n")
                ],
            )
        await upgrade(engine)
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(crm_sync_state.c.contact_id, crm_sync_state.c.contact_created_at)
                )
            ).all()
        expected = {cid: base + dt.timedelta(hours=n) for n, cid in enumerate(ids)}
        assert len(rows) == 6
        assert all(created == expected[cid] for cid, created in rows)
    finally:
        await engine.dispose()


async def test_sqlite_state_rows_keep_created_at(tmp_path: Path) -> None:
    await _state_rows_keep_created_at(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")


async def test_postgres_state_rows_keep_created_at() -> None:
    async with _scratch_postgres() as url:
        await _state_rows_keep_created_at(url)
