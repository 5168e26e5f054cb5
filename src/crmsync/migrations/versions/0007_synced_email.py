"""State rows remember the email each CRM last accepted for the contact (`synced_email`).

When a contact's email changes, the connectors update the vendor's record by its id instead of
upserting the new email as a second record (issue 20, section 4); they need to know that the
email changed, and from what. The outcome write of a successful push stores the contact's email.

Existing rows are filled where the answer is certain: a Complete row that holds a payload hash
was synced with the contact's current email (an edit since would have re-selected the row). The
others stay empty, and their next push is an upsert by email, as before.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("crm_sync_state", sa.Column("synced_email", sa.String(320)))
    op.execute(
        "UPDATE crm_sync_state SET synced_email = "
        "(SELECT contacts.email FROM contacts WHERE contacts.id = crm_sync_state.contact_id) "
        "WHERE sync_status = 'Complete' AND synced_hash IS NOT NULL"
    )


def downgrade() -> None:
    # Plain ALTER TABLE: SQLite (3.35+) drops an unindexed column in place.
    op.execute("ALTER TABLE crm_sync_state DROP COLUMN synced_email")
