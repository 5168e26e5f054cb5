"""Alembic migrations: a fresh database upgrades to head, and down and up again cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import func, inspect, select
from sqlalchemy.engine import Connection, make_url
from typer.testing import CliRunner, Result

from crmsync import cli, counts, db
from crmsync.migrate import alembic_config, current_revision, revisions, upgrade
from crmsync.settings import Settings
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


def _foreign_keys(conn: Connection) -> set[str]:
    """The tables whose rows a foreign key ties to `contacts`."""
    found = inspect(conn)
    return {
        table
        for table in ("crm_sync_state", "sync_events")
        if any(key["referred_table"] == "contacts" for key in found.get_foreign_keys(table))
    }


async def _roundtrip(url: str) -> None:
    engine = db.create_engine(url)
    try:
        await upgrade(engine)
        assert await current_revision(engine) == "0013"
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
            "ix_crm_sync_state_due",
            "ix_crm_sync_state_status_order",
            "ix_contacts_created_at_id",
            "ix_sync_events_contact_id_created_at",
            "ix_crm_sync_state_errors",
        } <= indexes
        # PostgreSQL (0012): no foreign key ties state rows and history to their contact (locks
        # and a delete trigger do); SQLite keeps both keys.
        async with engine.connect() as conn:
            keys = await conn.run_sync(_foreign_keys)
        pg = engine.dialect.name == "postgresql"
        assert keys == (set() if pg else {"sync_events", "crm_sync_state"})
        # PostgreSQL only (0010): the rows held under a lease, by token, for the record's read.
        assert ("ix_crm_sync_state_lease" in indexes) == (engine.dialect.name == "postgresql")
        # PostgreSQL (0013): the rows in flight by lease end, in place of the index of every
        # row by status; SQLite keeps that one.
        assert ("ix_crm_sync_state_expiry" in indexes) == pg
        assert ("ix_crm_sync_state_queue" in indexes) == (not pg)
        # SQLite (0011): a low-cardinality list filter's index holds its matches in list order,
        # in place of its single-column index; PostgreSQL keeps the single-column ones.
        filtered = ("contact_curation_status", "contact_processing_status", "email_type")
        ordered = {f"ix_contacts_{column}_order" for column in filtered}
        single = {f"ix_contacts_{column}" for column in filtered}
        if engine.dialect.name == "sqlite":
            assert ordered <= indexes and not single & indexes
        else:
            assert single <= indexes and not ordered & indexes
        # Unchanged: few matches each, and the narrow index SQLite counts all contacts with.
        assert {"ix_contacts_domain_id", "ix_contacts_page_id", "ix_contacts_has_gmail"} <= indexes

        def _down(connection: Connection) -> None:
            cfg = alembic_config()
            cfg.attributes["connection"] = connection
            command.downgrade(cfg, "base")

        async with engine.begin() as conn:
            await conn.run_sync(_down)
        assert await current_revision(engine) is None
        await upgrade(engine)  # and back up on the emptied database
        assert await current_revision(engine) == "0013"
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


async def _synced_email_filled_where_certain(url: str) -> None:
    """0007 fills `synced_email` for Complete rows with a payload hash only; it downgrades."""
    engine = db.create_engine(url)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ids = [uuid.uuid4() for _ in range(3)]
    try:
        await upgrade(engine, "0006")
        async with engine.begin() as conn:
            await conn.execute(
                contacts.insert(),
                [
                    {"id": cid, "email": f"c{n}@example.com", "created_at": now, "updated_at": now}
                    for n, cid in enumerate(ids)
                ],
            )
            states = [("Complete", "h0"), ("Complete", None), ("Selected", "h2")]
            await conn.execute(
                crm_sync_state.insert(),
                [
                    {
                        "contact_id": cid,
                        "crm": "brevo",
                        "sync_status": status,
                        "synced_hash": digest,
                        "updated_at": now,
                        "contact_created_at": now,
                    }
                    for cid, (status, digest) in zip(ids, states, strict=True)
                ],
            )
        await upgrade(engine)
        async with engine.connect() as conn:
            query = select(crm_sync_state.c.contact_id, crm_sync_state.c.synced_email)
            filled = dict((await conn.execute(query)).all())
        assert filled == {ids[0]: "c0@example.com", ids[1]: None, ids[2]: None}

        def _down(connection: Connection) -> None:
            cfg = alembic_config()
            cfg.attributes["connection"] = connection
            command.downgrade(cfg, "0006")

        async with engine.begin() as conn:
            await conn.run_sync(_down)
        async with engine.connect() as conn:
            columns = await conn.run_sync(
                lambda c: {col["name"] for col in inspect(c).get_columns("crm_sync_state")}
            )
        assert "synced_email" not in columns and "synced_hash" in columns
    finally:
        await engine.dispose()


# -- the CLI: db current, db downgrade, step by step with data --------------------------------


def _cli(url: str, *args: str, input: str | None = None) -> Result:
    """`crmsync ARGS` in-process against `url` (settings injected, like the ops tests do)."""
    settings = Settings(database_url=url, _env_file=None)  # type: ignore[call-arg]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli.common, "load_settings", lambda: settings)
        return CliRunner().invoke(cli.app, list(args), input=input)


async def _contacts_and_states(url: str) -> tuple[int, int]:
    engine = db.create_engine(url)
    try:
        async with engine.connect() as conn:
            n = (await conn.execute(select(func.count()).select_from(contacts))).scalar_one()
            m = (await conn.execute(select(func.count()).select_from(crm_sync_state))).scalar_one()
        return int(n), int(m)
    finally:
        await engine.dispose()


async def test_sqlite_synced_email_filled_where_certain(tmp_path: Path) -> None:
    await _synced_email_filled_where_certain(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")


async def test_postgres_synced_email_filled_where_certain() -> None:
    async with _scratch_postgres() as url:
        await _synced_email_filled_where_certain(url)


async def _control_rows_survive_0008(url: str) -> None:
    """0008 adds the outage and budget columns to a populated `crm_control` and removes them."""
    engine = db.create_engine(url)
    try:
        await upgrade(engine, "0007")
        async with engine.begin() as conn:
            await conn.exec_driver_sql(
                "INSERT INTO crm_control (crm, manual_pause, pause_kind, updated_at) "
                "VALUES ('hubspot', true, 'auth', '2026-12-05 10:00:00')"
            )
        await upgrade(engine)
        async with engine.connect() as conn:
            row = (
                await conn.exec_driver_sql(
                    "SELECT manual_pause, pause_kind, outage_failures, outage_since, "
                    "outage_probes, budget_used FROM crm_control"
                )
            ).one()
        assert tuple(row) == (True, "auth", 0, None, 0, 0)

        def _down(connection: Connection) -> None:
            cfg = alembic_config()
            cfg.attributes["connection"] = connection
            command.downgrade(cfg, "0007")

        async with engine.begin() as conn:
            await conn.run_sync(_down)
            columns = {c["name"] for c in await conn.run_sync(_control_columns)}
            kept = (await conn.exec_driver_sql("SELECT crm, pause_kind FROM crm_control")).one()
        assert "outage_since" not in columns and "budget_used" not in columns
        assert tuple(kept) == ("hubspot", "auth")
    finally:
        await engine.dispose()


def _control_columns(conn: Connection) -> list[dict[str, object]]:
    return list(inspect(conn).get_columns("crm_control"))  # type: ignore[arg-type]


async def test_sqlite_control_rows_survive_0008(tmp_path: Path) -> None:
    await _control_rows_survive_0008(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")


async def test_postgres_control_rows_survive_0008() -> None:
    async with _scratch_postgres() as url:
        await _control_rows_survive_0008(url)


async def _cli_steps_down_and_up(url: str) -> None:
    """Every migration's downgrade runs on a database with rows in it, one step at a time, and
    the upgrade after it brings the same rows back to the latest schema."""
    heads = [rev for rev, _ in revisions()]
    await _state_rows_keep_created_at(url)  # at head, 3 contacts with 6 state rows
    assert await _contacts_and_states(url) == (3, 6)
    current = await asyncio.to_thread(_cli, url, "db", "current")
    assert current.exit_code == 0 and f": {heads[-1]} (latest)" in current.stdout

    for expected in reversed(heads[:-1]):
        step = await asyncio.to_thread(_cli, url, "db", "downgrade", "-1", "--yes")
        assert step.exit_code == 0, step.output
        assert f"database schema is at {expected}" in step.stdout
        now = await asyncio.to_thread(_cli, url, "db", "current")
        assert now.exit_code == 0 and f": {expected}: " in now.stdout
        assert "`crmsync db upgrade` would apply" in now.stdout
        assert await _contacts_and_states(url) == (3, 6)  # rows survive every step down

    up = await asyncio.to_thread(_cli, url, "db", "upgrade")
    assert up.exit_code == 0, up.output
    engine = db.create_engine(url)
    try:
        assert await current_revision(engine) == heads[-1]
        async with engine.connect() as conn:
            assert await counts.per_status(conn) == (3, {("brevo", "New"): 3, ("n8n", "New"): 3})
    finally:
        await engine.dispose()

    declined = await asyncio.to_thread(_cli, url, "db", "downgrade", "base", input="n\n")
    assert declined.exit_code == 1 and "ALL contacts" in declined.stdout
    assert await _contacts_and_states(url) == (3, 6)
    gone = await asyncio.to_thread(_cli, url, "db", "downgrade", "base", input="y\n")
    assert gone.exit_code == 0, gone.output
    empty = await asyncio.to_thread(_cli, url, "db", "current")
    assert "no crmsync schema" in empty.stdout
    assert (await asyncio.to_thread(_cli, url, "db", "upgrade")).exit_code == 0


async def test_sqlite_cli_downgrade_step_by_step(tmp_path: Path) -> None:
    await _cli_steps_down_and_up(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")


async def test_postgres_cli_downgrade_step_by_step() -> None:
    async with _scratch_postgres() as url:
        await _cli_steps_down_and_up(url)


@pytest.mark.parametrize(
    ("rev", "message"),
    [
        ("0099", "unknown revision '0099'"),
        ("-7", "-7: only 4 migration(s) to undo"),
    ],
)
async def test_cli_downgrade_refuses_unknown_targets(
    tmp_path: Path, rev: str, message: str
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    nothing = await asyncio.to_thread(_cli, url, "db", "downgrade", "0001", "--yes")
    assert nothing.exit_code == 2 and "has no crmsync schema" in nothing.output
    engine = db.create_engine(url)
    await upgrade(engine, "0004")
    await engine.dispose()
    result = await asyncio.to_thread(_cli, url, "db", "downgrade", rev, "--yes")
    assert result.exit_code == 2 and message in result.stderr
    above = await asyncio.to_thread(_cli, url, "db", "downgrade", "0005", "--yes")
    assert above.exit_code == 2 and "use `crmsync db upgrade`" in above.stderr


async def test_cli_db_current_on_a_schema_from_a_newer_release(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    engine = db.create_engine(url)
    await upgrade(engine)
    async with engine.begin() as conn:
        await conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0099'")
    await engine.dispose()
    current = await asyncio.to_thread(_cli, url, "db", "current")
    assert current.exit_code == 1
    assert "at revision 0099, which this version of crmsync does not know" in current.stderr
    down = await asyncio.to_thread(_cli, url, "db", "downgrade", "0001", "--yes")
    assert down.exit_code == 2 and "unknown to this version" in down.stderr
