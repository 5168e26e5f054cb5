"""`crmsync check`: each configured CRM's credentials and fields, with one cheap read call each.

- Brevo `GET /contacts/attributes`, HubSpot `GET /crm/v3/properties/contacts`, Mautic
  `GET /api/fields/contact` (after its OAuth2 token request, with client credentials): the call
  succeeds only with good credentials, and its answer lists the fields, so one call checks both.
- n8n: a webhook has no read call, and any POST runs the workflow. crmsync sends a GET, which a
  webhook that listens for POST answers 404 "not registered for GET requests": the URL reaches
  n8n and the webhook is registered (its workflow is active). The webhook's credentials cannot be
  checked that way (n8n looks the webhook up before it checks them): the first sync shows them.

Each check gives rows of `Finding` (ok, problem, or not checked) with the fix for a problem.
Nothing here writes to a vendor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import httpx

from crmsync.connectors.base import (
    AuthFailed,
    ConnectorError,
    Misconfigured,
    RateLimited,
)
from crmsync.connectors.fields import FIELD_NOUN_PLURAL, VENDOR_NAME, HasFields, missing_fields
from crmsync.connectors.httputil import describe, json_body
from crmsync.connectors.registry import create_connector
from crmsync.enums import Crm
from crmsync.settings import Settings

Verdict = Literal["ok", "problem", "not checked"]


@dataclass(frozen=True, slots=True)
class Finding:
    subject: str  # "settings", "database", "brevo", ...
    item: str  # "credentials", "fields", "webhook", ...
    verdict: Verdict
    detail: str
    fix: str = ""


async def check_crm(crm: Crm, settings: Settings, client: httpx.AsyncClient) -> list[Finding]:
    """What one cheap read call says about `crm` (which must be configured)."""
    connector = create_connector(crm, settings, client)
    try:
        if not isinstance(connector, HasFields):
            n8n_url = settings.n8n.webhook_url or ""
            return await _check_n8n(client, n8n_url)
        return await _check_fields(crm, connector)
    finally:
        await connector.aclose()


async def _check_fields(crm: Crm, connector: HasFields) -> list[Finding]:
    vendor = VENDOR_NAME[crm]
    nouns = FIELD_NOUN_PLURAL[crm]
    try:
        api = connector.field_api()
        missing = await missing_fields(api)
    except AuthFailed as exc:
        return [
            Finding(crm.value, "credentials", "problem", exc.message, _fix_auth(crm)),
            Finding(crm.value, nouns, "not checked", "needs working credentials"),
        ]
    except (Misconfigured, RateLimited, ConnectorError) as exc:
        fix = (
            "try again in a moment"
            if isinstance(exc, RateLimited)
            else f"check the {crm.value.upper()}_ settings, and that {vendor} is up"
        )
        return [
            Finding(crm.value, "connection", "problem", exc.message, fix),
            Finding(crm.value, nouns, "not checked", f"{vendor} could not be read"),
        ]
    found = [
        Finding(crm.value, "credentials", "ok", f"{vendor} accepted them (listed its {nouns})")
    ]
    wanted = ", ".join(field.name for field in api.wanted()) or "none configured"
    if missing:
        names = ", ".join(field.name for field in missing)
        found.append(
            Finding(
                crm.value,
                nouns,
                "problem",
                f"missing: {names} (data sent to them would be lost)",
                f"crmsync setup {crm.value}",
            )
        )
    else:
        found.append(Finding(crm.value, nouns, "ok", f"all exist: {wanted}"))
    return found


def _fix_auth(crm: Crm) -> str:
    return {
        Crm.brevo: "set BREVO_API_KEY to a valid API key (Brevo > SMTP & API > API keys)",
        Crm.hubspot: "set HUBSPOT_ACCESS_TOKEN to the private app's token, with the scopes "
        "crm.objects.contacts.read/write and crm.schemas.contacts.read/write",
        Crm.mautic: "check MAUTIC_USERNAME / MAUTIC_PASSWORD (or MAUTIC_CLIENT_ID / "
        "MAUTIC_CLIENT_SECRET), and that the API and basic auth are enabled in Mautic",
    }.get(crm, "check the credentials")


async def _check_n8n(client: httpx.AsyncClient, url: str) -> list[Finding]:
    not_checked = Finding(
        "n8n",
        "credentials",
        "not checked",
        "a webhook has no read call, and n8n looks the webhook up before its credentials; "
        "the first sync shows whether N8N_WEBHOOK_SECRET / N8N_AUTH_HEADER_* are accepted",
    )
    try:
        response = await client.get(url, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        return [
            Finding(
                "n8n",
                "webhook",
                "problem",
                f"n8n could not be reached: {describe(exc)}",
                "check N8N_WEBHOOK_URL and that n8n is up",
            ),
            not_checked,
        ]
    data = json_body(response)
    message = str(data.get("message", "")) if isinstance(data, dict) else ""
    status = response.status_code
    if status == 404 and "not registered for GET" in message:
        found = Finding("n8n", "webhook", "ok", "registered (n8n answered it listens for POST)")
    elif status == 404:
        found = Finding(
            "n8n",
            "webhook",
            "problem",
            f"n8n has no webhook at N8N_WEBHOOK_URL: {message or 'HTTP 404'}",
            "activate the workflow (a production /webhook/ URL), or correct N8N_WEBHOOK_URL",
        )
    elif 200 <= status < 300:
        found = Finding(
            "n8n",
            "webhook",
            "ok",
            "registered, and it answers GET too: this check started the workflow once "
            "(crmsync itself only POSTs)",
        )
    else:
        found = Finding("n8n", "webhook", "ok", f"reachable (a GET answered {status})")
    return [found, not_checked]
