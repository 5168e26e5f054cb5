"""PostgreSQL: a contact's state rows and history are tied to it by locks and a delete trigger,
not by foreign keys.

The foreign keys `crm_sync_state.contact_id` and `sync_events.contact_id -> contacts.id ON
DELETE CASCADE` checked every inserted row with a query of its own (PostgreSQL's
referential-integrity trigger: an SPI query and a `FOR KEY SHARE` lock of the contact per row).
That check was a third of the backends' time when a selection inserts its 400,000 state rows
(100,000 contacts, four CRMs), and 15% of their time in the worker's claim-and-record cycle,
which inserts a history row per attempt (bench/README.md, issue 24).

What the foreign keys guaranteed stays guaranteed, set-based:
- **No row without its contact.** The selection (`sync/selection.py`, the only statement that
  inserts state rows) reads the contacts it inserts rows for `FOR KEY SHARE`, in that INSERT:
  a contact deleted before it commits is skipped; one it read cannot be deleted until it
  commits. A history row is written for a row the worker holds (its lock taken first), whose
  contact's delete must wait for that lock (below); or, for an outcome refused because its row
  is gone, only while its contact exists, read `FOR KEY SHARE` (`sync/events.py`).
- **Deleting a contact deletes its rows** (what `ON DELETE CASCADE` did): a statement trigger
  on `contacts` deletes the deleted contacts' state rows, then their history, in the deleting
  transaction. The state rows first: their delete waits for a worker holding one to commit,
  so the history delete after it (a new snapshot) sees that worker's history row too.
- `TRUNCATE contacts` empties both tables too (a trigger on TRUNCATE).

SQLite keeps both foreign keys: there the check is an index lookup inside SQLite.

Upgrading drops the keys and creates the triggers: instant. Downgrading adds the keys back,
which reads every state and history row once to validate them.

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

TABLES = ("crm_sync_state", "sync_events")  # in the order the trigger deletes from them
# (trigger and function name, event, transition table, body)
TRIGGERS = (
    (
        "trg_contacts_delete_rows",
        "DELETE",
        "REFERENCING OLD TABLE AS old_rows",
        " ".join(
            f"DELETE FROM {table} WHERE contact_id IN (SELECT id FROM old_rows);"
            for table in TABLES
        ),
    ),
    # DELETEs, not a TRUNCATE: a TRUNCATE of these tables with `contacts` would hold them.
    (
        "trg_contacts_truncate_rows",
        "TRUNCATE",
        "",
        " ".join(f"DELETE FROM {table};" for table in TABLES),
    ),
)


def _foreign_key(table: str) -> str:
    return f"fk_{table}_contact_id_contacts"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.drop_constraint(_foreign_key(table), table, type_="foreignkey")
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
    for table in TABLES:
        op.create_foreign_key(
            _foreign_key(table), table, "contacts", ["contact_id"], ["id"], ondelete="CASCADE"
        )
