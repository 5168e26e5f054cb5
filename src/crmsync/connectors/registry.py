"""Which connector serves which CRM. Adding a fifth CRM is one module and one line here."""

from __future__ import annotations

import httpx

from crmsync.connectors.base import Connector
from crmsync.enums import Crm
from crmsync.settings import Settings


def create_connector(
    crm: Crm, settings: Settings, client: httpx.AsyncClient | None = None
) -> Connector:
    """A connector for `crm` (the caller checks `settings.crm(crm).missing()` first)."""
    if crm is Crm.brevo:
        from crmsync.connectors.brevo import BrevoConnector

        return BrevoConnector(settings.brevo, client)
    if crm is Crm.hubspot:
        from crmsync.connectors.hubspot import HubSpotConnector

        return HubSpotConnector(settings.hubspot, client)
    if crm is Crm.mautic:
        from crmsync.connectors.mautic import MauticConnector

        return MauticConnector(settings.mautic, client)
    from crmsync.connectors.n8n import N8nConnector

    return N8nConnector(settings.n8n, client)
