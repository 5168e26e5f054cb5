"""Per-CRM vendor outage state (circuit breaker) and daily request budget, in `crm_control`.

Every worker on every host reads and writes them, like the pauses already there:

- `outage_failures`: batches in a row that failed on the vendor's side (reset by a good one).
- `outage_since`, `outage_reason`: set while the CRM is in an outage (the breaker is open).
- `outage_probes`: probes that failed in this outage (the probe interval doubles with each).
- `next_probe_at`, `probe_owner`: when the next probe may go, and the worker sending one (it
  holds the probe until `next_probe_at`, a lease, so a dead prober is replaced).
- `budget_day`, `budget_used`: requests sent in the vendor's current day (its date there).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
COLUMNS = (
    "outage_failures",
    "outage_since",
    "outage_reason",
    "outage_probes",
    "next_probe_at",
    "probe_owner",
    "budget_day",
    "budget_used",
)


def upgrade() -> None:
    with op.batch_alter_table("crm_control") as batch:
        batch.add_column(
            sa.Column("outage_failures", sa.Integer(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("outage_since", TS))
        batch.add_column(sa.Column("outage_reason", sa.Text()))
        batch.add_column(
            sa.Column("outage_probes", sa.Integer(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("next_probe_at", TS))
        batch.add_column(sa.Column("probe_owner", sa.String(128)))
        batch.add_column(sa.Column("budget_day", sa.String(10)))
        batch.add_column(sa.Column("budget_used", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("crm_control") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
