"""PostgreSQL: the rows held under a lease are found by their token, not among dead index entries.

Recording a batch's outcome reads the rows still held under its lease (`lease_token = :token AND
sync_status = 'Processing'`, locked until commit) and updates them behind the same guard. The
planner answered both through `ix_crm_sync_state_queue` (crm, sync_status, next_attempt_at): a
bitmap scan of every 'Processing' entry, then the token as a filter. Every claim adds such an
entry and the outcome leaves it behind, dead, until a vacuum; a bitmap scan never marks entries
dead, so each record read all of them: 25,800 entries for the 400 live rows halfway through
50,000 contacts (5 ms a statement, two statements per batch), the record's cost growing with the
number of contacts synced since the last vacuum.

A partial index on the token of the Processing rows holds one entry per held row (a claim adds
it, an outcome's update leaves it as every other index's), and a token's lookup reads only its
batch. Measured with `bench/pg_queue_cycle.py` (50,000 contacts, 4 lanes of 100): PostgreSQL CPU
per 10,000 contacts 0.77 s against 1.08 s (bench/README.md). SQLite records optimistically
without that read and updates each row by its id: nothing changes there.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEASE_INDEX = "ix_crm_sync_state_lease"
HELD = "sync_status = 'Processing'"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_index(LEASE_INDEX, "crm_sync_state", ["lease_token"], postgresql_where=sa.text(HELD))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index(LEASE_INDEX, table_name="crm_sync_state")
