"""`crmsync select`: choose contacts for CRMs (or take them back), as the selection API does."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.cli import common
from crmsync.cli import filters as f
from crmsync.cli.app import app
from crmsync.cli.common import exit_codes, fail, read_id_file, run_db
from crmsync.contacts.schemas import MAX_IDS, CrmSelectionResponse, FilteredRequest
from crmsync.contacts.service import ContactService


def crm_list(values: list[str]) -> list[str]:
    """`--crm brevo,hubspot --crm n8n` -> ["brevo", "hubspot", "n8n"] (checked by the service)."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


@app.command(rich_help_panel="Contacts")
def select(
    crm: Annotated[
        list[str],
        typer.Option(
            "--crm",
            metavar="NAMES",
            help="The CRMs: brevo, hubspot, mautic, n8n; comma-separated or repeated.",
            show_default=False,
        ),
    ],
    ids: Annotated[
        str | None,
        typer.Option(
            "--ids",
            metavar="FILE",
            help=f"These contacts: one id (UUID) per line, - reads stdin; at most {MAX_IDS:,}.",
        ),
    ] = None,
    all_contacts: Annotated[
        bool, typer.Option("--all", help="Every contact (instead of --ids or filters).")
    ] = False,
    unselect: Annotated[
        bool,
        typer.Option("--unselect", help="Take them back: status New, not queued, error cleared."),
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Push even contacts the CRM already holds unchanged."),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result as the API returns it.")
    ] = False,
    curation_status: f.CurationOption = None,
    processing_status: f.ProcessingOption = None,
    email_type: f.EmailTypeOption = None,
    domain_id: f.DomainId = None,
    page_id: f.PageId = None,
    email_contains: f.EmailContains = None,
    name_contains: f.NameContains = None,
    has_gmail: f.HasGmail = None,
    brevo_status: f.BrevoStatus = None,
    hubspot_status: f.HubspotStatus = None,
    mautic_status: f.MauticStatus = None,
    n8n_status: f.N8nStatus = None,
) -> None:
    """Select contacts for CRMs: queue them to be pushed (or --unselect them).

    Works like PUT /api/v3/contacts/crm/select (with --ids) and .../crm/select/filtered (with
    --all or filters), with the same counts: selecting sets the CRM's status Selected and queues
    the contact, due now, with a fresh attempt budget; a contact already Complete is pushed
    again only if its data changed since (or with --force). A running worker picks them up.

    \b
    Examples:
      crmsync select --crm brevo,hubspot --email-type CORPORATE --no-gmail
      crmsync select --crm n8n --ids leads.txt
      crmsync failed --crm hubspot --format ids | crmsync select --crm hubspot --unselect --ids -
      crmsync select --crm mautic --all
    """
    filters = f.contact_filters(
        curation_status=curation_status,
        processing_status=processing_status,
        email_type=email_type,
        domain_id=domain_id,
        page_id=page_id,
        email_contains=email_contains,
        name_contains=name_contains,
        has_gmail=has_gmail,
        brevo_status=brevo_status,
        hubspot_status=hubspot_status,
        mautic_status=mautic_status,
        n8n_status=n8n_status,
    )
    modes = [ids is not None, all_contacts, not filters.is_empty()]
    if sum(modes) != 1:
        given = sum(modes) > 1
        raise fail(
            "give one of --ids FILE, --all, or filter options (e.g. --email-type CORPORATE)"
            + ("; --all means every contact, so it takes no filters" if given else ""),
            2,
        )
    if force and unselect:
        raise fail("--force applies to selecting; drop it with --unselect", 2)
    names = crm_list(crm)
    action = "unselect" if unselect else "select"
    settings = common.load_settings()
    with exit_codes(settings):
        contact_ids = read_id_file(ids) if ids is not None else None
    if contact_ids is not None and len(contact_ids) > MAX_IDS:
        raise fail(
            f"{ids}: {len(contact_ids):,} ids; at most {MAX_IDS:,} per call (as in the API). "
            "Split the file, or select by filters",
            2,
        )

    async def _select(engine: AsyncEngine) -> CrmSelectionResponse:
        service = ContactService(engine, settings)
        if contact_ids is not None:
            return await service.select_by_ids(contact_ids, names, action, force)
        request = FilteredRequest(**filters.model_dump(), all=all_contacts)
        return await service.select_filtered(request, names, action, force)

    result = run_db(settings, _select)
    if as_json:
        typer.echo(json.dumps(result.model_dump(mode="json"), indent=2))
        return
    typer.echo(result.message)
    if contact_ids is not None:
        unknown = len(set(contact_ids)) - result.updated_count
        if unknown:
            typer.echo(f"{unknown} listed id(s) are not contacts and were left out", err=True)
