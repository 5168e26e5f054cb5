"""Request and response bodies of the contacts API, with the customer's field names.

`ContactRead` keeps the customer's key order (customer-system 1.3) without the DeBounce keys, and
adds a `sync` object with each CRM's own retry state (their single shared counter was a defect).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic.json_schema import SkipJsonSchema

from crmsync.enums import Crm, CurationStatus, EmailType, ProcessingStatus, SyncStatus

MAX_IDS = 10_000
MAX_BULK = 10_000

# Deliberately loose: one @, something on each side, a dot in the domain. Vendors apply their
# own stricter rules; a contact they reject ends in Error with their message.
_EMAIL = re.compile(r"^[^@\s\x00]+@[^@\s\x00]+\.[^@\s.\x00]+$")


# Characters no column can hold: PostgreSQL refuses NUL in text, and neither driver can encode an
# unpaired UTF-16 surrogate (JSON's "\ud800") as UTF-8. Refused here, as a 422 naming the field,
# so that both databases answer alike instead of PostgreSQL failing the request with a 500.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable(value: str) -> str | None:
    """Why a database cannot store `value`, or None when it can."""
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL character (\\u0000), which cannot be stored: remove it"
    return (
        f"contains an unpaired surrogate (\\u{ord(found.group()):04x}), which is no valid "
        "Unicode text: send the character whole, or remove it"
    )


def _storable(value: str) -> str:
    reason = unstorable(value)
    if reason is not None:
        raise ValueError(reason)
    return value


Storable = AfterValidator(_storable)
# The same rule, for clients reading the OpenAPI document (the validator gives the message).
NO_NUL = Field(json_schema_extra={"pattern": r"^[^\x00]*$"})


def _check_email(value: str) -> str:
    if not _EMAIL.match(value):
        raise ValueError("not a valid email address (expected name@domain.tld)")
    return value


Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=3, max_length=320),
    Storable,
    AfterValidator(_check_email),
    # The same rule, for clients reading the OpenAPI document (the validator gives the message).
    Field(json_schema_extra={"pattern": _EMAIL.pattern, "format": "email"}),
]
# The documented maximum lengths (docs/API.md), in characters.
TEXT_MAX = 10_000
PHONE_MAX = 100
SEARCH_MAX = 320
NAME_MAX = 100  # a CRM name or an action
Text = Annotated[str, StringConstraints(max_length=TEXT_MAX), Storable, NO_NUL]
Phone = Annotated[str, StringConstraints(max_length=PHONE_MAX), Storable, NO_NUL]
Search = Annotated[str, StringConstraints(min_length=1, max_length=SEARCH_MAX), Storable, NO_NUL]
Word = Annotated[str, StringConstraints(max_length=NAME_MAX), Storable, NO_NUL]


class ContactBase(BaseModel):
    email: Email
    email_type: EmailType | None = None
    has_gmail: bool | None = None
    context: Text | None = None
    source_url: Text | None = None
    name: Text | None = None
    phone_number: Phone | None = None
    domain_id: uuid.UUID | None = None
    page_id: uuid.UUID | None = None
    source_job_id: uuid.UUID | None = None


# What a person may set a CRM status to; Processing, Complete and Error belong to the engine.
SettableSyncStatus = Literal["New", "Selected", "Queued", "Skipped"]
CRM_STATUS_KEYS: tuple[str, ...] = tuple(f"{crm.value}_sync_status" for crm in Crm)


class ContactCreate(ContactBase):
    """POST body and each row of `/bulk`.

    `{crm}_sync_status` goes through the same state machine as in `ContactUpdate` (Selected or
    Queued queues the contact); it is not a contact column, so `contact_values` leaves it out.
    """

    contact_curation_status: CurationStatus = CurationStatus.New
    hubspot_sync_status: SettableSyncStatus | None = None
    brevo_sync_status: SettableSyncStatus | None = None
    mautic_sync_status: SettableSyncStatus | None = None
    n8n_sync_status: SettableSyncStatus | None = None

    def contact_values(self) -> dict[str, Any]:
        """The contact's columns, enums as their stored strings."""
        values = self.model_dump(mode="python", exclude=set(CRM_STATUS_KEYS))
        values["contact_curation_status"] = self.contact_curation_status.value
        values["email_type"] = self.email_type.value if self.email_type else None
        return values

    def crm_statuses(self) -> dict[Crm, SyncStatus]:
        """The CRM statuses this body sets (a null one is the same as none)."""
        return {
            crm: SyncStatus(status)
            for crm, key in zip(Crm, CRM_STATUS_KEYS, strict=True)
            if (status := getattr(self, key)) is not None
        }


class ContactUpdate(BaseModel):
    """PUT and PATCH body: only the fields sent are applied (an explicit null is applied).

    `{crm}_sync_status` is accepted for drop-in compatibility and goes through the same state
    machine as `/crm/select`: Selected or Queued queues the contact, New unselects it, Skipped
    parks it. The statuses the sync engine owns (Processing, Complete, Error) are refused (422).
    """

    # Optional to send, but never null (the service answers 422 to an explicit null).
    email: Email | SkipJsonSchema[None] = None
    email_type: EmailType | None = None
    has_gmail: bool | None = None
    context: Text | None = None
    source_url: Text | None = None
    name: Text | None = None
    phone_number: Phone | None = None
    domain_id: uuid.UUID | None = None
    page_id: uuid.UUID | None = None
    source_job_id: uuid.UUID | None = None
    contact_curation_status: CurationStatus | SkipJsonSchema[None] = None
    contact_processing_status: ProcessingStatus | None = None
    contact_processing_error: Text | None = None
    hubspot_sync_status: SettableSyncStatus | None = None
    brevo_sync_status: SettableSyncStatus | None = None
    mautic_sync_status: SettableSyncStatus | None = None
    n8n_sync_status: SettableSyncStatus | None = None


class CrmSync(BaseModel):
    """One CRM's own retry state for a contact."""

    attempts: int = 0
    next_attempt_at: dt.datetime | None = None
    last_attempt_at: dt.datetime | None = None
    synced_at: dt.datetime | None = None


class ContactRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    email: str
    email_type: EmailType | None = None
    has_gmail: bool | None = None
    context: str | None = None
    source_url: str | None = None
    name: str | None = None
    phone_number: str | None = None
    domain_id: uuid.UUID | None = None
    page_id: uuid.UUID | None = None
    source_job_id: uuid.UUID | None = None
    id: uuid.UUID
    created_at: dt.datetime
    updated_at: dt.datetime
    contact_curation_status: CurationStatus
    contact_processing_status: ProcessingStatus | None = None
    contact_processing_error: str | None = None
    hubspot_sync_status: SyncStatus
    hubspot_processing_status: ProcessingStatus | None = None
    hubspot_processing_error: str | None = None
    hubspot_contact_id: str | None = None
    brevo_sync_status: SyncStatus
    brevo_processing_status: ProcessingStatus | None = None
    brevo_processing_error: str | None = None
    brevo_contact_id: str | None = None
    mautic_sync_status: SyncStatus
    mautic_processing_status: ProcessingStatus | None = None
    mautic_processing_error: str | None = None
    mautic_contact_id: str | None = None
    n8n_sync_status: SyncStatus
    n8n_processing_status: ProcessingStatus | None = None
    n8n_processing_error: str | None = None
    n8n_workflow_id: str | None = None
    retry_count: int = 0
    last_retry_at: dt.datetime | None = None
    next_retry_at: dt.datetime | None = None
    last_failed_crm: str | None = None
    sync: dict[str, CrmSync] = Field(default_factory=dict)


class ContactFilters(BaseModel):
    """The list filters (customer-system 1.3), shared by list, status and selection routes."""

    contact_curation_status: CurationStatus | None = None
    contact_processing_status: ProcessingStatus | None = None
    hubspot_sync_status: SyncStatus | None = None
    brevo_sync_status: SyncStatus | None = None
    mautic_sync_status: SyncStatus | None = None
    n8n_sync_status: SyncStatus | None = None
    email_type: EmailType | None = None
    domain_id: uuid.UUID | None = None
    page_id: uuid.UUID | None = None
    email_contains: Search | None = None
    name_contains: Search | None = None
    search: (
        Annotated[
            Search,
            Field(description="The email or the name contains this (case-insensitive)."),
        ]
        | None
    ) = None
    has_gmail: bool | None = None

    def is_empty(self) -> bool:
        return not self.model_dump(exclude_none=True)


class FilteredRequest(ContactFilters):
    # Without any filter a request would touch every contact: that must be said explicitly.
    all: bool = Field(default=False, description="Required (true) when no filter is given.")


class BulkRequest(BaseModel):
    contacts: list[Any] = Field(description=f"Up to {MAX_BULK:,} contacts, upserted by email.")


class BulkRejected(BaseModel):
    index: int
    email: str | None
    reason: str


class BulkResponse(BaseModel):
    created_count: int
    updated_count: int
    rejected_count: int
    rejected: list[BulkRejected]


class StatusUpdateRequest(BaseModel):
    contact_ids: list[uuid.UUID] = Field(max_length=MAX_IDS)
    status: CurationStatus


class FilteredStatusUpdateRequest(FilteredRequest):
    status: CurationStatus


class StatusUpdateResponse(BaseModel):
    updated_count: int
    queued_count: int


class CrmSelectionRequest(BaseModel):
    # `crms` and `action` are checked by the route, not here, so that a bad value answers 400
    # as the work order specifies (the customer's validators turned it into a 422).
    contact_ids: list[uuid.UUID] = Field(max_length=MAX_IDS)
    crms: list[Word] = Field(max_length=NAME_MAX)
    action: Word = "select"
    force: bool = Field(
        default=False, description="Push even if the CRM already holds this exact payload."
    )


class FilteredCrmSelectionRequest(FilteredRequest):
    crms: list[Word] = Field(max_length=NAME_MAX)
    action: Word = "select"
    force: bool = False


class CrmSelectionResponse(BaseModel):
    updated_count: int
    queued_count: int
    crms: list[str]
    action: str
    message: str


class SyncEventRead(BaseModel):
    """One attempt to push a contact to a CRM."""

    id: int
    crm: str
    outcome: str
    http_status: int | None
    message: str | None
    attempt: int
    duration_ms: int
    worker: str | None
    created_at: dt.datetime
