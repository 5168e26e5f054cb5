"""Initial schema: contacts, per-CRM sync state (the queue), sync events, CRM pauses, workers.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


SYNC = ("New", "Selected", "Queued", "Processing", "Complete", "Error", "Skipped")
CURATION = ("New", "Queued", "Processing", "Complete", "Error", "Skipped")
PROCESSING = ("Queued", "Processing", "Complete", "Error")
EMAIL_TYPES = ("SERVICE", "CORPORATE", "FREE", "UNKNOWN")
CRMS = ("brevo", "hubspot", "mautic", "n8n")
ACTIVE = "sync_status IN ('Selected', 'Queued', 'Processing')"


def upgrade() -> None:
    op.create_table(
        "contacts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("name", sa.Text()),
        sa.Column("phone_number", sa.Text()),
        sa.Column("email_type", sa.String(16)),
        sa.Column("has_gmail", sa.Boolean()),
        sa.Column("context", sa.Text()),
        sa.Column("source_url", sa.Text()),
        sa.Column("domain_id", sa.Uuid()),
        sa.Column("page_id", sa.Uuid()),
        sa.Column("source_job_id", sa.Uuid()),
        sa.Column("contact_curation_status", sa.String(16), server_default="New", nullable=False),
        sa.Column("contact_processing_status", sa.String(16)),
        sa.Column("contact_processing_error", sa.Text()),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.CheckConstraint(_in("email_type", EMAIL_TYPES), name="ck_contacts_email_type"),
        sa.CheckConstraint(
            _in("contact_curation_status", CURATION), name="ck_contacts_curation_status"
        ),
        sa.CheckConstraint(
            _in("contact_processing_status", PROCESSING), name="ck_contacts_processing_status"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_contacts"),
    )
    op.create_index("uq_contacts_email_lower", "contacts", [sa.text("lower(email)")], unique=True)
    op.create_index("ix_contacts_created_at_id", "contacts", ["created_at", "id"])
    for column in (
        "contact_curation_status",
        "contact_processing_status",
        "email_type",
        "domain_id",
        "page_id",
        "has_gmail",
    ):
        op.create_index(f"ix_contacts_{column}", "contacts", [column])

    op.create_table(
        "crm_sync_state",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("contact_id", sa.Uuid(), nullable=False),
        sa.Column("crm", sa.String(16), nullable=False),
        sa.Column("sync_status", sa.String(16), server_default="New", nullable=False),
        sa.Column("processing_status", sa.String(16)),
        sa.Column("processing_error", sa.Text()),
        sa.Column("external_id", sa.String(255)),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", TS),
        sa.Column("last_attempt_at", TS),
        sa.Column("synced_at", TS),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_token", sa.String(32)),
        sa.Column("lease_expires_at", TS),
        sa.Column("synced_hash", sa.String(32)),
        sa.Column("updated_at", TS, nullable=False),
        sa.CheckConstraint(_in("crm", CRMS), name="ck_crm_sync_state_crm"),
        sa.CheckConstraint(_in("sync_status", SYNC), name="ck_crm_sync_state_sync_status"),
        sa.CheckConstraint(
            _in("processing_status", PROCESSING), name="ck_crm_sync_state_processing_status"
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name="fk_crm_sync_state_contact_id_contacts",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_crm_sync_state"),
        sa.UniqueConstraint("contact_id", "crm", name="uq_crm_sync_state_contact_id_crm"),
    )
    # Status counts and due-now counts per status (health, summary).
    op.create_index(
        "ix_crm_sync_state_queue", "crm_sync_state", ["crm", "sync_status", "next_attempt_at"]
    )
    # The claim: active rows of one CRM in due order. Partial, so that it stays as small as the
    # work waiting (millions of Complete rows never enter it) and a claim reads only what it takes.
    op.create_index(
        "ix_crm_sync_state_due",
        "crm_sync_state",
        ["crm", "next_attempt_at"],
        sqlite_where=sa.text(ACTIVE),
        postgresql_where=sa.text(ACTIVE),
    )
    op.create_index(
        "ix_crm_sync_state_status_contact", "crm_sync_state", ["crm", "sync_status", "contact_id"]
    )

    op.create_table(
        "sync_events",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("contact_id", sa.Uuid(), nullable=False),
        sa.Column("crm", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("http_status", sa.Integer()),
        sa.Column("message", sa.Text()),
        sa.Column("attempt", sa.Integer(), server_default="0", nullable=False),
        sa.Column("duration_ms", sa.Integer(), server_default="0", nullable=False),
        sa.Column("worker", sa.String(128)),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name="fk_sync_events_contact_id_contacts",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_sync_events"),
    )
    op.create_index(
        "ix_sync_events_contact_id_created_at", "sync_events", ["contact_id", "created_at"]
    )
    op.create_index("ix_sync_events_crm_created_at", "sync_events", ["crm", "created_at"])

    op.create_table(
        "crm_control",
        sa.Column("crm", sa.String(16), nullable=False),
        sa.Column("manual_pause", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("paused_until", TS),
        sa.Column("pause_kind", sa.String(16)),
        sa.Column("pause_reason", sa.Text()),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("crm", name="pk_crm_control"),
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("crms", sa.String(64), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("heartbeat_at", TS, nullable=False),
        sa.Column("last_cycle_at", TS),
        sa.Column("stopped_at", TS),
        sa.Column("rows_done", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cycle_seconds", sa.Float()),
        sa.PrimaryKeyConstraint("id", name="pk_workers"),
    )
    if op.get_bind().dialect.name == "postgresql":
        _trigram_indexes()


def _trigram_indexes() -> None:
    """`email_contains` / `name_contains` are ILIKE '%x%': trigram indexes make them fast.

    pg_trgm ships with PostgreSQL but creating it needs privileges a deployment may not grant;
    without it the filters still work, only slower.
    """
    bind = op.get_bind()
    try:
        with bind.begin_nested():
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except sa.exc.DBAPIError:
        return
    op.execute("CREATE INDEX ix_contacts_email_trgm ON contacts USING gin (email gin_trgm_ops)")
    op.execute("CREATE INDEX ix_contacts_name_trgm ON contacts USING gin (name gin_trgm_ops)")


def downgrade() -> None:
    for table in ("workers", "crm_control", "sync_events", "crm_sync_state", "contacts"):
        op.drop_table(table)
