"""PostgreSQL logs every statement that writes contacts, so a costly list count can be reused
until the contacts change.

Counting the contacts whose email contains "gmail" (200,000 of a million) takes about 280 ms on
PostgreSQL: every match is fetched from the heap and rechecked, and even a scan of a narrow
table of lower-cased emails takes 90 ms with two parallel workers. The list's X-Total-Count paid
that on every page. `crmsync.countcache` keeps such a count with the version of the contacts it
was taken at, and reuses it while the version is the same.

The version is read from `contact_changes`, a log with one row per statement that inserted,
updated, deleted or truncated contacts, written by a statement-level trigger in the writer's
transaction (insert-only: no hot row that would serialise concurrent writers). The version is
(number of rows, highest id) as one snapshot sees them: a commit adds a row, so the pair
changes even when a transaction that took a lower id commits after one that took a higher id.
The worker folds the log into one new row now and then (`counts.compact`), which also changes
the pair (its new id is higher than any before). SQLite has no statement-level triggers, and
keeps no such cache.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = "trg_contacts_changed"
EVENTS = "INSERT OR UPDATE OR DELETE OR TRUNCATE"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_table(
        "contact_changes",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
    )
    op.execute(
        f"CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN INSERT INTO contact_changes DEFAULT VALUES; RETURN NULL; END $$"
    )
    op.execute(
        f"CREATE TRIGGER {FUNCTION} AFTER {EVENTS} ON contacts "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
    )
    op.execute("INSERT INTO contact_changes DEFAULT VALUES")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP TRIGGER {FUNCTION} ON contacts")
    op.execute(f"DROP FUNCTION {FUNCTION}()")
    op.drop_table("contact_changes")
