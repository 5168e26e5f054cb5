"""The contact list API's filters as command options (`--email-type`, `--brevo-status`, ...).

A command lists these parameters and passes them to `contact_filters`, which validates them
with the API's own model, so a filter means the same on the command line as in a request.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from crmsync.contacts.schemas import ContactFilters
from crmsync.enums import CurationStatus, EmailType, ProcessingStatus, SyncStatus

_PANEL = "Filters (as the list API's; several are ANDed)"


def _status_option(crm: str) -> Any:
    return typer.Option(
        f"--{crm}-status",
        case_sensitive=False,
        help=f"{crm}'s sync status (New = never selected there).",
        rich_help_panel=_PANEL,
    )


CurationOpt = Annotated[
    CurationStatus | None,
    typer.Option(
        "--curation-status",
        case_sensitive=False,
        help="contact_curation_status.",
        rich_help_panel=_PANEL,
    ),
]
ProcessingOpt = Annotated[
    ProcessingStatus | None,
    typer.Option(
        "--processing-status",
        case_sensitive=False,
        help="contact_processing_status.",
        rich_help_panel=_PANEL,
    ),
]
EmailTypeOpt = Annotated[
    EmailType | None,
    typer.Option("--email-type", case_sensitive=False, rich_help_panel=_PANEL),
]
DomainOpt = Annotated[
    uuid.UUID | None, typer.Option("--domain-id", metavar="UUID", rich_help_panel=_PANEL)
]
PageOpt = Annotated[
    uuid.UUID | None, typer.Option("--page-id", metavar="UUID", rich_help_panel=_PANEL)
]
EmailContainsOpt = Annotated[
    str | None,
    typer.Option(
        "--email-contains", metavar="TEXT", help="Case-insensitive.", rich_help_panel=_PANEL
    ),
]
NameContainsOpt = Annotated[
    str | None,
    typer.Option(
        "--name-contains", metavar="TEXT", help="Case-insensitive.", rich_help_panel=_PANEL
    ),
]
GmailOpt = Annotated[
    bool | None,
    typer.Option("--has-gmail/--no-gmail", show_default=False, rich_help_panel=_PANEL),
]
BrevoStatusOpt = Annotated[SyncStatus | None, _status_option("brevo")]
HubspotStatusOpt = Annotated[SyncStatus | None, _status_option("hubspot")]
MauticStatusOpt = Annotated[SyncStatus | None, _status_option("mautic")]
N8nStatusOpt = Annotated[SyncStatus | None, _status_option("n8n")]


def contact_filters(**values: Any) -> ContactFilters:
    """The filters given (None: not given), validated as the API validates them; exit 2 if bad."""
    fields = {
        "contact_curation_status": values.pop("curation_status", None),
        "contact_processing_status": values.pop("processing_status", None),
        **{f"{crm}_sync_status": values.pop(f"{crm}_status", None) for crm in _CRMS},
        **values,
    }
    try:
        return ContactFilters.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'.'.join(str(p) for p in error['loc']).replace('_', '-')}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise typer.BadParameter(problems) from None


_CRMS = ("brevo", "hubspot", "mautic", "n8n")
