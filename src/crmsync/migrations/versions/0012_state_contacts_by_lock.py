"""PostgreSQL: a state row's contact is kept by the selection's lock and a delete trigger, not by
a foreign key.

The foreign key `crm_sync_state.contact_id -> contacts.id ON DELETE CASCADE` checked every
inserted state row with a query of its own (PostgreSQL's referential-integrity trigger: an SPI
query and a `FOR KEY SHARE` row lock per row). Selecting 100,000 contacts for four CRMs inserts
400,000 rows, and that check was a third of the backends' time (bench/README.md, issue 24).

What the foreign key guaranteed stays guaranteed, set-based:
- **No state row without its contact.** The only statement that inserts state rows (the
  selection, `sync/selection.py`) reads the contacts it inserts for `FOR KEY SHARE`, in one
  statement: a contact deleted before it commits is skipped; one it read cannot be deleted
  until the selection commits.
- **Deleting a contact deletes its state rows** (what `ON DELETE CASCADE` did): a statement
  trigger on `contacts` deletes the state rows of the deleted contacts, after the deleting
  statement, in its transaction. It runs after any selection holding those contacts has
  committed (the delete waited for its lock), so it sees that selection's rows.
- `TRUNCATE contacts CASCADE` still empties `crm_sync_state` (a trigger on TRUNCATE).

`sync_events` keeps its foreign key (one check per history row, off the selection's path).
SQLite keeps the foreign key: there the check is a cheap index lookup inside SQLite.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FOREIGN_KEY = "fk_crm_sync_state_contact_id_contacts"
# (trigger and function name, event, transition table, body)
TRIGGERS = (
    (
        "trg_contacts_delete_states",
        "DELETE",
        "REFERENCING OLD TABLE AS old_rows",
        "DELETE FROM crm_sync_state WHERE contact_id IN (SELECT id FROM old_rows);",
    ),
    # A DELETE, not a TRUNCATE: a TRUNCATE of both tables at once would already hold the table.
    ("trg_contacts_truncate_states", "TRUNCATE", "", "DELETE FROM crm_sync_state;"),
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_constraint(FOREIGN_KEY, "crm_sync_state", type_="foreignkey")
    for name, event, transition, body in TRIGGERS:
        op.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN {body} RETURN NULL; END $$"
        )
        op.execute(
            f"CREATE TRIGGER {name} AFTER {event} ON contacts {transition} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {name}()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, *_ in TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON contacts")
        op.execute(f"DROP FUNCTION {name}()")
    op.create_foreign_key(
        FOREIGN_KEY, "crm_sync_state", "contacts", ["contact_id"], ["id"], ondelete="CASCADE"
    )
