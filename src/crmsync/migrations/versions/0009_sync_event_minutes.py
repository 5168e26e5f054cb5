"""The dashboard's reads: attempts per CRM and minute (PostgreSQL), and failures by message.

Failures by message (both databases): the Failed page groups the rows in Error by CRM and
message, counts each group and shows its latest contacts. With many failures (150,000 of a
million contacts) grouping and ranking them took 1.3 s; a partial index on the rows in Error,
by CRM, the first 500 characters of the message, and last attempt, reads a group's latest
contacts directly and groups without sorting. Only rows in Error are in it, so the sync's writes
touch it only when a row enters or leaves Error.

Attempts per minute (PostgreSQL only): the dashboard's sparkline shows contacts synced per minute
over the last hour, refreshed every few seconds. Counting them from `sync_events` reads every event
of the hour: at full speed that is millions of rows (the outcome is not in any index). A statement-
level trigger now adds, per statement that inserts events (one per batch), one row per (CRM,
minute) with the synced and failed attempts it recorded. Like the count deltas of migration 0003
these rows are inserted, never updated (no hot row between workers), and folded together now and
then (`crmsync.counts.compact`), which also drops minutes older than a day. SQLite has no
statement-level triggers; it counts the hour's events directly.

Only inserts are counted: pruning old events or deleting a contact does not take back the work
that was done in that minute. TRUNCATE of `sync_events` empties the table too.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# What counts as synced and as failed: as the health view's outcome windows (ops/repository.py).
SYNCED = "outcome IN ('ok', 'unchanged')"
FAILED = "outcome IN ('retry', 'error')"


def _per_minute(rows: str) -> str:
    return (
        "INSERT INTO sync_event_minutes (crm, minute, synced, failed) "
        f"SELECT crm, date_trunc('minute', created_at), count(*) FILTER (WHERE {SYNCED}), "
        f"count(*) FILTER (WHERE {FAILED}) FROM {rows} "
        f"WHERE {SYNCED} OR {FAILED} GROUP BY 1, 2"
    )


_TRIGGERS = (
    ("trg_sync_events_minutes_insert", "INSERT", "NEW TABLE AS new_rows", _per_minute("new_rows")),
    ("trg_sync_events_minutes_truncate", "TRUNCATE", None, "DELETE FROM sync_event_minutes"),
)


ERRORS_INDEX = "ix_crm_sync_state_errors"
ERROR_KEY = "coalesce(substr(processing_error, 1, 500), '')"
IN_ERROR = "sync_status = 'Error'"


def upgrade() -> None:
    op.create_index(
        ERRORS_INDEX,
        "crm_sync_state",
        ["crm", sa.text(ERROR_KEY), "last_attempt_at", "id"],
        sqlite_where=sa.text(IN_ERROR),
        postgresql_where=sa.text(IN_ERROR),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_table(
        "sync_event_minutes",
        sa.Column("crm", sa.String(16), nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("synced", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_sync_event_minutes_minute", "sync_event_minutes", ["minute"])
    for name, event, referencing, body in _TRIGGERS:
        op.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN {body}; RETURN NULL; END $$"
        )
        transition = f" REFERENCING {referencing}" if referencing else ""
        op.execute(
            f"CREATE TRIGGER {name} AFTER {event} ON sync_events{transition} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {name}()"
        )
    # The last day of history, so the sparkline is right from the start (the triggers lock out
    # writers until this commits: no overlap, no gap).
    op.execute(
        _per_minute(
            "(SELECT * FROM sync_events WHERE crm IN ('brevo', 'hubspot', 'mautic', 'n8n') "
            "AND created_at >= now() - interval '1 day') AS recent"
        )
    )


def downgrade() -> None:
    op.drop_index(ERRORS_INDEX, table_name="crm_sync_state")
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, *_ in _TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON sync_events")
        op.execute(f"DROP FUNCTION {name}()")
    op.drop_table("sync_event_minutes")
