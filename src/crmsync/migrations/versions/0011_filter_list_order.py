"""SQLite: the email type, curation and processing filters' indexes hold matches in list order.

`GET /contacts?email_type=FREE&limit=50` read the filter's single-column index and sorted every
match (15,000-25,000 of 50,000 contacts) to return 50: most of the CPU of such a request. With the
list order (created_at, id) after the filter's column, a page is the next limit + offset entries
of one index range, with no sort, and a count of the filter still reads that range alone. Each
of these indexes replaces the single-column one it extends, so a write updates as many indexes
as before. The filters on a domain or a page match few contacts each, whose sort is cheap: their
indexes stay as they are. So does the Gmail flag's: SQLite counts all contacts (the list's
X-Total-Count unfiltered, and for a CRM status of New) by scanning the narrowest index, which is
that one; with the list order in it, the count read the email index instead (6.0 ms against
3.8 at 200,000 contacts).

PostgreSQL keeps its indexes: its planner walks `ix_contacts_created_at_id` in list order and
filters, which meets the list target at a million contacts (bench/README.md, issue 2), and its
B-tree deduplication keeps a single-column index of a low-cardinality column a small fraction of
the size of one that ends in unique keys.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILTERED = ("contact_curation_status", "contact_processing_status", "email_type")


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for column in FILTERED:
        op.create_index(f"ix_contacts_{column}_order", "contacts", [column, "created_at", "id"])
        op.drop_index(f"ix_contacts_{column}", table_name="contacts")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for column in FILTERED:
        op.create_index(f"ix_contacts_{column}", "contacts", [column])
        op.drop_index(f"ix_contacts_{column}_order", table_name="contacts")
