"""PostgreSQL logs which emails and names each write to contacts added and removed, so a kept
substring count is brought up to date instead of counted again.

With migration 0005 a kept count (email contains "gmail") was good only until any statement
wrote contacts; the next list paid the whole scan again (about 250 ms at 200,000 matches among
a million contacts). Now:

- Each `contact_changes` row also holds the writer's transaction id (`xid`), and `folded` marks
  rows that stand for changes whose detail is gone (a fold of the log, a TRUNCATE).
- `contact_change_images` holds, per logged statement, the (email, name) values it added
  (+1) or removed (-1), grouped, with pairs that cancel out dropped. An update that leaves
  email and name as they were (a status change, a touch of `updated_at`) adds none.
- A kept count stores the snapshot it was taken in (`pg_current_snapshot()`). Later, the log
  rows that snapshot did not see are exactly the writes since; the count plus their image
  deltas that match the filter is the count now. A folded row among them means: count again.

SQLite has no statement-level triggers, and keeps no such counts.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_FUNCTION = "trg_contacts_changed"
IMAGED = "email, name"
# One log row per statement, then its images. Transition tables need one trigger per event.
_LOGGED = "WITH change AS (INSERT INTO contact_changes DEFAULT VALUES RETURNING id) "


def _images(rows: str) -> str:
    return (
        f"{_LOGGED}INSERT INTO contact_change_images (change_id, {IMAGED}, delta) "
        f"SELECT change.id, {IMAGED}, sum(d) FROM change, ({rows}) AS moved "
        f"GROUP BY change.id, {IMAGED} HAVING sum(d) <> 0;"
    )


# (trigger, event, transition tables, function body)
_TRIGGERS = (
    (
        "trg_contacts_changed_insert",
        "INSERT",
        "NEW TABLE AS new_rows",
        _images(f"SELECT {IMAGED}, 1 AS d FROM new_rows"),
    ),
    (
        "trg_contacts_changed_update",
        "UPDATE",
        "OLD TABLE AS old_rows NEW TABLE AS new_rows",
        _images(
            f"SELECT {IMAGED}, -1 AS d FROM old_rows UNION ALL SELECT {IMAGED}, 1 FROM new_rows"
        ),
    ),
    (
        "trg_contacts_changed_delete",
        "DELETE",
        "OLD TABLE AS old_rows",
        _images(f"SELECT {IMAGED}, -1 AS d FROM old_rows"),
    ),
    (
        "trg_contacts_changed_truncate",
        "TRUNCATE",
        None,
        "INSERT INTO contact_changes (folded) VALUES (true);",
    ),
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP TRIGGER {OLD_FUNCTION} ON contacts")
    op.execute(f"DROP FUNCTION {OLD_FUNCTION}()")
    # Rows logged before this revision have no images: mark them folded.
    op.execute(
        "ALTER TABLE contact_changes "
        "ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id(), "
        "ADD COLUMN folded boolean NOT NULL DEFAULT false"
    )
    op.execute("UPDATE contact_changes SET folded = true")
    op.create_index("ix_contact_changes_xid", "contact_changes", ["xid"])
    op.create_table(
        "contact_change_images",
        sa.Column("change_id", sa.BigInteger(), nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("delta", sa.Integer(), nullable=False),
    )
    op.create_index("ix_contact_change_images_change_id", "contact_change_images", ["change_id"])
    for name, event, tables, body in _TRIGGERS:
        op.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN {body} RETURN NULL; END $$"
        )
        referencing = f"REFERENCING {tables} " if tables else ""
        op.execute(
            f"CREATE TRIGGER {name} AFTER {event} ON contacts {referencing}"
            f"FOR EACH STATEMENT EXECUTE FUNCTION {name}()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, _event, _tables, _body in _TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON contacts")
        op.execute(f"DROP FUNCTION {name}()")
    op.drop_table("contact_change_images")
    op.drop_index("ix_contact_changes_xid", table_name="contact_changes")
    op.execute("ALTER TABLE contact_changes DROP COLUMN xid, DROP COLUMN folded")
    op.execute(
        f"CREATE FUNCTION {OLD_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN INSERT INTO contact_changes DEFAULT VALUES; RETURN NULL; END $$"
    )
    op.execute(
        f"CREATE TRIGGER {OLD_FUNCTION} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON contacts "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {OLD_FUNCTION}()"
    )
