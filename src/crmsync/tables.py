"""The schema, as SQLAlchemy Core tables (Alembic migrations create it; these describe it).

- `contacts`: the customer's contact columns (customer-system 2.1, without DeBounce/enrichment).
- `crm_sync_state`: one row per (contact, CRM) that was ever selected. It is the work queue: a
  selection and its queue entry are one commit (a transactional outbox, no dual write). A contact
  with no row for a CRM is "New" there.
- `sync_events`: append-only history of every attempt, pruned by age.
- `crm_control`: per-CRM pauses (rate limit, auth, configuration, operator, daily budget), the
  vendor outage breaker and the daily request count, which every worker sees.
- `workers`: heartbeats of running workers, for health.
- `contact_count_deltas`, `state_count_deltas` (PostgreSQL only): exact row counts as sums of
  per-statement deltas written by triggers (migration 0003; `crmsync.counts` reads them).
- `contact_changes`, `contact_change_images` (PostgreSQL only): one row per statement that wrote
  contacts, with its transaction id, and the (email, name) values it added and removed, by
  trigger (migrations 0005, 0006): kept substring counts are brought up to date from them.
- `sync_event_minutes` (PostgreSQL only): synced and failed attempts per (CRM, minute), added
  by trigger for each statement that inserts events (migration 0009): the dashboard's
  contacts per minute.

Statuses are stored as short strings with CHECK constraints: portable between SQLite and
PostgreSQL, and no database enum types to migrate (the customer lost days to enum type names).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    literal_column,
)
from sqlalchemy.types import TypeDecorator, UserDefinedType

from crmsync.enums import CRM_NAMES, CurationStatus, EmailType, ProcessingStatus, SyncStatus


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on both databases.

    SQLite has no time zone type; values are stored as UTC text of fixed width, so comparisons
    stay correct. The customer's system wrote naive local times into timestamptz and was 8 h off.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: crmsync stores timezone-aware UTC only")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


# SQLite only aliases rowid for INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit key.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def _in(column: str, values: Any) -> str:
    listed = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({listed})"


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

contacts = Table(
    "contacts",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("email", String(320), nullable=False),
    Column("name", Text),
    Column("phone_number", Text),
    Column("email_type", String(16)),
    Column("has_gmail", Boolean),
    Column("context", Text),
    Column("source_url", Text),
    Column("domain_id", Uuid),
    Column("page_id", Uuid),
    Column("source_job_id", Uuid),
    Column("contact_curation_status", String(16), nullable=False, server_default="New"),
    Column("contact_processing_status", String(16)),
    Column("contact_processing_error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint(_in("email_type", EmailType), name="email_type"),
    CheckConstraint(_in("contact_curation_status", CurationStatus), name="curation_status"),
    CheckConstraint(_in("contact_processing_status", ProcessingStatus), name="processing_status"),
    Index("ix_contacts_created_at_id", "created_at", "id"),
    # On SQLite, migration 0011 makes the first three (column, created_at, id), named
    # `ix_contacts_<column>_order`: a filter's page is then read in list order without a sort.
    Index("ix_contacts_contact_curation_status", "contact_curation_status"),
    Index("ix_contacts_contact_processing_status", "contact_processing_status"),
    Index("ix_contacts_email_type", "email_type"),
    Index("ix_contacts_has_gmail", "has_gmail"),
    Index("ix_contacts_domain_id", "domain_id"),
    Index("ix_contacts_page_id", "page_id"),
)

# One contact per email, whatever its case.
Index("uq_contacts_email_lower", func.lower(contacts.c.email), unique=True)

crm_sync_state = Table(
    "crm_sync_state",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    # PostgreSQL drops this foreign key and the history's (migration 0012): the selection locks
    # the contacts it inserts rows for, and a trigger on `contacts` deletes a deleted contact's
    # state rows and history.
    Column("contact_id", Uuid, ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False),
    Column("crm", String(16), nullable=False),
    Column("sync_status", String(16), nullable=False, server_default="New"),
    Column("processing_status", String(16)),
    Column("processing_error", Text),
    Column("external_id", String(255)),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime),
    Column("last_attempt_at", UTCDateTime),
    Column("synced_at", UTCDateTime),
    # Lease: which worker holds the row and until when; the token fences late writers.
    Column("lease_owner", String(128)),
    Column("lease_token", String(32)),
    Column("lease_expires_at", UTCDateTime),
    # Hash of the payload the CRM last accepted: an unchanged contact is not sent again.
    Column("synced_hash", String(32)),
    # The email the CRM last accepted: after a change, the vendor's record is updated by its id
    # (migration 0007).
    Column("synced_email", String(320)),
    Column("updated_at", UTCDateTime, nullable=False),
    # A copy of the contact's `created_at` (which never changes), written by the selection: a
    # list filtered on one CRM status reads its page in list order from one index (migration
    # 0004). NOT NULL on PostgreSQL; SQLite could not add it as such.
    Column("contact_created_at", UTCDateTime, nullable=False),
    UniqueConstraint("contact_id", "crm"),
    CheckConstraint(_in("crm", CRM_NAMES), name="crm"),
    CheckConstraint(_in("sync_status", SyncStatus), name="sync_status"),
    CheckConstraint(_in("processing_status", ProcessingStatus), name="processing_status"),
    # A page of the list filtered on one CRM status, in list order; the failed list; on
    # PostgreSQL also the operator's actions on the rows of one status.
    Index(
        "ix_crm_sync_state_status_order", "crm", "sync_status", "contact_created_at", "contact_id"
    ),
)

# SQLite only: status counts (a covering index), the rows of one status, and expired leases.
# PostgreSQL dropped it (migration 0013): there every status change adds an entry to each index,
# and its status counts come from trigger-kept deltas.
Index(
    "ix_crm_sync_state_queue",
    crm_sync_state.c.crm,
    crm_sync_state.c.sync_status,
    crm_sync_state.c.next_attempt_at,
).ddl_if(dialect="sqlite")

# PostgreSQL also has `ix_crm_sync_state_lease` (lease_token) WHERE sync_status = 'Processing'
# (migration 0010, not declared here: SQLite never reads rows by token): a record finds the rows
# of its batch by token instead of among every dead 'Processing' entry of an index of them.

# Rows in these states wait for their turn in the queue (Processing: in flight).
WAITING_STATUSES = (SyncStatus.Selected.value, SyncStatus.Queued.value)
# The partial indexes' predicates below, which queries must write the same way to use those
# indexes: with the statuses inline, not as bound parameters (the generic plan of a prepared
# statement cannot prove a parameter matches a predicate, and reads every due row instead).
IS_WAITING = crm_sync_state.c.sync_status.in_(
    [literal_column(f"'{status}'") for status in WAITING_STATUSES]
)
IN_FLIGHT = crm_sync_state.c.sync_status == literal_column(f"'{SyncStatus.Processing.value}'")
# The claim reads this: rows of one CRM waiting for their turn, in due order (migration 0002).
# Processing rows stay out, so a claim removes a row from it and an outcome does not touch it.
Index(
    "ix_crm_sync_state_due",
    crm_sync_state.c.crm,
    crm_sync_state.c.next_attempt_at,
    sqlite_where=IS_WAITING,
    postgresql_where=IS_WAITING,
)
# PostgreSQL: rows in flight, in lease-end order (migration 0013): the claim finds the leases
# that ran out (a worker died) here. SQLite reads them from `ix_crm_sync_state_queue`.
Index(
    "ix_crm_sync_state_expiry",
    crm_sync_state.c.crm,
    crm_sync_state.c.next_attempt_at,
    postgresql_where=IN_FLIGHT,
).ddl_if(dialect="postgresql")

# A failure as the dashboard's Failed page groups it: the first 500 characters of its message,
# "" for none. Rows in Error are indexed by it (migration 0009), so a group, its count and its
# latest contacts are read from the index. Queries must use these very expressions, with their
# constants inline (a bound parameter would not match the index or its predicate). 500 characters
# keep an entry within the B-tree's size limit whatever the script of the message.
ERROR_KEY = func.coalesce(
    func.substr(crm_sync_state.c.processing_error, literal_column("1"), literal_column("500")),
    literal_column("''"),
)
IN_ERROR = crm_sync_state.c.sync_status == literal_column(f"'{SyncStatus.Error.value}'")
Index(
    "ix_crm_sync_state_errors",
    crm_sync_state.c.crm,
    ERROR_KEY,
    crm_sync_state.c.last_attempt_at,
    crm_sync_state.c.id,
    sqlite_where=IN_ERROR,
    postgresql_where=IN_ERROR,
)

sync_events = Table(
    "sync_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("contact_id", Uuid, ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False),
    Column("crm", String(16), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("http_status", Integer),
    Column("message", Text),
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("duration_ms", Integer, nullable=False, server_default="0"),
    Column("worker", String(128)),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_sync_events_contact_id_created_at", "contact_id", "created_at"),
    # Time windows (health, pruning) read this with `crm IN (every CRM)`: one index less to
    # maintain on the hottest insert than a separate one on created_at.
    Index("ix_sync_events_crm_created_at", "crm", "created_at"),
)

crm_control = Table(
    "crm_control",
    metadata,
    Column("crm", String(16), primary_key=True),
    # Set by an operator (`crmsync pause`); only `crmsync resume` clears it.
    Column("manual_pause", Boolean, nullable=False, server_default="0"),
    # Set by workers after a 429, an auth failure or a configuration failure.
    Column("paused_until", UTCDateTime),
    Column("pause_kind", String(16)),
    Column("pause_reason", Text),
    Column("updated_at", UTCDateTime, nullable=False),
    # The vendor outage circuit breaker (sync/outage.py; migration 0008).
    Column("outage_failures", Integer, nullable=False, server_default="0"),
    Column("outage_since", UTCDateTime),
    Column("outage_reason", Text),
    Column("outage_probes", Integer, nullable=False, server_default="0"),
    Column("next_probe_at", UTCDateTime),
    Column("probe_owner", String(128)),
    # Requests sent in the vendor's current day (sync/budget.py; migration 0008).
    Column("budget_day", String(10)),
    Column("budget_used", Integer, nullable=False, server_default="0"),
)

workers = Table(
    "workers",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("crms", String(64), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    Column("last_cycle_at", UTCDateTime),
    Column("stopped_at", UTCDateTime),
    Column("rows_done", BigInteger, nullable=False, server_default="0"),
    Column("cycle_seconds", Float),
)

# PostgreSQL only (migration 0003): triggers insert one delta per statement; `counts` sums them.
contact_count_deltas = Table(
    "contact_count_deltas",
    metadata,
    Column("email_type", String(16)),
    Column("has_gmail", Boolean),
    Column("contact_curation_status", String(16)),
    Column("contact_processing_status", String(16)),
    Column("delta", BigInteger, nullable=False),
)

state_count_deltas = Table(
    "state_count_deltas",
    metadata,
    Column("crm", String(16), nullable=False),
    Column("sync_status", String(16), nullable=False),
    Column("delta", BigInteger, nullable=False),
    Index("ix_state_count_deltas_crm_status", "crm", "sync_status"),
)


class Xid8(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id (`pg_current_xact_id()`)."""

    cache_ok = True

    def get_col_spec(self, **_kw: Any) -> str:
        return "xid8"


# PostgreSQL only (migrations 0005, 0006): triggers add a row per statement that writes
# contacts (`folded`: one that stands for changes whose images are gone), and that statement's
# (email, name) images, +1 added and -1 removed.
contact_changes = Table(
    "contact_changes",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("xid", Xid8, nullable=False, index=True),
    Column("folded", Boolean, nullable=False),
)

contact_change_images = Table(
    "contact_change_images",
    metadata,
    Column("change_id", BigInteger, nullable=False, index=True),
    Column("email", String(320)),
    Column("name", Text),
    Column("delta", Integer, nullable=False),
)


# PostgreSQL only (migration 0009): per statement that inserts events, its attempts per (CRM,
# minute); summed by minute for the dashboard, folded and trimmed by `counts.compact`.
sync_event_minutes = Table(
    "sync_event_minutes",
    metadata,
    Column("crm", String(16), nullable=False),
    Column("minute", UTCDateTime, nullable=False),
    Column("synced", BigInteger, nullable=False),
    Column("failed", BigInteger, nullable=False),
    Index("ix_sync_event_minutes_minute", "minute"),
)
