"""The list API's filters as command-line options (`GET /api/v3/contacts` has them as query
parameters): a command declares the options it takes with these types and builds the same
`ContactFilters` model the API validates, so the two cannot drift apart."""

from __future__ import annotations

import uuid
from typing import Annotated

import typer
from pydantic import ValidationError

from crmsync.contacts.schemas import ContactFilters
from crmsync.enums import CurationStatus, EmailType, ProcessingStatus, SyncStatus


def _status(crm: str) -> object:
    return typer.Option(
        f"--{crm}-status",
        case_sensitive=False,
        help=f"Only contacts with this {crm} sync status, e.g. Complete.",
        rich_help_panel="Filters",
    )


EmailTypeOption = Annotated[
    EmailType | None,
    typer.Option(
        "--email-type",
        case_sensitive=False,
        help="Only this email type.",
        rich_help_panel="Filters",
    ),
]
BrevoStatus = Annotated[SyncStatus | None, _status("brevo")]
HubspotStatus = Annotated[SyncStatus | None, _status("hubspot")]
MauticStatus = Annotated[SyncStatus | None, _status("mautic")]
N8nStatus = Annotated[SyncStatus | None, _status("n8n")]
CurationOption = Annotated[
    CurationStatus | None,
    typer.Option(
        "--curation-status",
        case_sensitive=False,
        help="Only this contact_curation_status.",
        rich_help_panel="Filters",
    ),
]
ProcessingOption = Annotated[
    ProcessingStatus | None,
    typer.Option(
        "--processing-status",
        case_sensitive=False,
        help="Only this contact_processing_status.",
        rich_help_panel="Filters",
    ),
]
EmailContains = Annotated[
    str | None,
    typer.Option(help="Only emails containing this text (any case).", rich_help_panel="Filters"),
]
NameContains = Annotated[
    str | None,
    typer.Option(help="Only names containing this text (any case).", rich_help_panel="Filters"),
]
DomainId = Annotated[
    uuid.UUID | None, typer.Option(help="Only this domain_id.", rich_help_panel="Filters")
]
PageId = Annotated[
    uuid.UUID | None, typer.Option(help="Only this page_id.", rich_help_panel="Filters")
]
HasGmail = Annotated[
    bool | None,
    typer.Option(
        "--has-gmail/--no-gmail",
        help="Only contacts with (or without) has_gmail.",
        show_default=False,
        rich_help_panel="Filters",
    ),
]


def contact_filters(
    *,
    email_type: EmailType | None = None,
    brevo_status: SyncStatus | None = None,
    hubspot_status: SyncStatus | None = None,
    mautic_status: SyncStatus | None = None,
    n8n_status: SyncStatus | None = None,
    curation_status: CurationStatus | None = None,
    processing_status: ProcessingStatus | None = None,
    email_contains: str | None = None,
    name_contains: str | None = None,
    domain_id: uuid.UUID | None = None,
    page_id: uuid.UUID | None = None,
    has_gmail: bool | None = None,
) -> ContactFilters:
    """The options' values as the API's filter model (a usage error if the model refuses one)."""
    try:
        return ContactFilters(
            email_type=email_type,
            brevo_sync_status=brevo_status,
            hubspot_sync_status=hubspot_status,
            mautic_sync_status=mautic_status,
            n8n_sync_status=n8n_status,
            contact_curation_status=curation_status,
            contact_processing_status=processing_status,
            email_contains=email_contains,
            name_contains=name_contains,
            domain_id=domain_id,
            page_id=page_id,
            has_gmail=has_gmail,
        )
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        option = "--" + str(first["loc"][0]).replace("_", "-")
        raise typer.BadParameter(str(first["msg"]), param_hint=option) from None
