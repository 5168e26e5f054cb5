"""State rows carry their contact's `created_at`, so a list filtered on one CRM status reads its
page in list order straight from one index.

The list is ordered by (contacts.created_at, contacts.id). Filtered on one CRM status, the page
had to come either from walking every contact in that order and probing its state row, or from
fetching every matching contact and sorting: for 5,000 HubSpot Error rows among a million
contacts on PostgreSQL that took 34 ms (5,000 primary-key lookups), the request's p95 73 ms.
With `contact_created_at` copied into the state row (a contact's `created_at` never changes),
the index (crm, sync_status, contact_created_at, contact_id) holds the page in order: 1.5 ms.

It replaces `ix_crm_sync_state_status_contact` (crm, sync_status, contact_id), whose other use,
probing one contact's status for combined filters, the unique (contact_id, crm) index serves as
fast (measured), so a status change still moves an entry in as many indexes as before. In a
selection or a sync, rows move in creation order instead of at random contact ids.

The column is NOT NULL on PostgreSQL. SQLite cannot add a NOT NULL column without a default to
an existing table; the selection fills it on both (`sync/selection.py`).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = ("ix_crm_sync_state_status_contact", ["crm", "sync_status", "contact_id"])
NEW = ("ix_crm_sync_state_status_order", ["crm", "sync_status", "contact_created_at", "contact_id"])


def upgrade() -> None:
    op.add_column("crm_sync_state", sa.Column("contact_created_at", sa.DateTime(timezone=True)))
    op.execute(
        "UPDATE crm_sync_state SET contact_created_at = "
        "(SELECT contacts.created_at FROM contacts WHERE contacts.id = crm_sync_state.contact_id)"
    )
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("crm_sync_state", "contact_created_at", nullable=False)
    op.drop_index(OLD[0], table_name="crm_sync_state")
    op.create_index(NEW[0], "crm_sync_state", NEW[1])


def downgrade() -> None:
    op.drop_index(NEW[0], table_name="crm_sync_state")
    op.create_index(OLD[0], "crm_sync_state", OLD[1])
    # Plain ALTER TABLE: SQLite (3.35+) drops an unindexed column in place.
    op.execute("ALTER TABLE crm_sync_state DROP COLUMN contact_created_at")
