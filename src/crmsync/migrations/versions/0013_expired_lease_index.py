"""PostgreSQL: expired leases are found through an index of the rows in flight only.

`ix_crm_sync_state_queue` (crm, sync_status, next_attempt_at) held an entry for every state row.
On PostgreSQL each write that changes a row's status adds an entry to every index whose
predicate the new row version meets, so that index took one entry per selected row, per claim
and per outcome. What read it there: the claim's look for leases that ran out (Processing rows
due again) and the due count of the health view. Status counts come from the trigger-kept
deltas (migration 0003), the lists and the operator's actions by status from
`ix_crm_sync_state_status_order` (crm, sync_status, ...), waiting rows from
`ix_crm_sync_state_due`.

In its place, `ix_crm_sync_state_expiry` (crm, next_attempt_at) WHERE sync_status =
'Processing': a claim adds an entry, as before, but a selection and an outcome add none. Each
row's trip through the queue writes two index entries fewer (bench/README.md, issue 24).

SQLite keeps `ix_crm_sync_state_queue`: its status counts read it as a covering index, and
there a status change moves one entry rather than adding one to every index.

Upgrading builds the new index from the rows in flight (a few hundred) and drops the old one:
instant. Downgrading builds `ix_crm_sync_state_queue` again, which reads every state row once
and blocks writes to the table meanwhile.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EXPIRY_INDEX = "ix_crm_sync_state_expiry"
QUEUE_INDEX = "ix_crm_sync_state_queue"
IN_FLIGHT = "sync_status = 'Processing'"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_index(
        EXPIRY_INDEX,
        "crm_sync_state",
        ["crm", "next_attempt_at"],
        postgresql_where=sa.text(IN_FLIGHT),
    )
    op.drop_index(QUEUE_INDEX, table_name="crm_sync_state")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_index(QUEUE_INDEX, "crm_sync_state", ["crm", "sync_status", "next_attempt_at"])
    op.drop_index(EXPIRY_INDEX, table_name="crm_sync_state")
