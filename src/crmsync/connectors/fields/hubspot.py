"""HubSpot contact properties: `GET|POST /crm/v3/properties/contacts`.

crmsync writes HubSpot's own email, firstname, lastname and phone (which every portal has and
nobody can delete) and the custom properties named by `HUBSPOT_CUSTOM_PROPERTY_*`. Created in the
"contactinformation" group: single-line text, and a Yes/No checkbox for has_gmail (crmsync sends
"true" / "false", which both kinds take). A 409 on create means it appeared meanwhile. Both calls
need the private app's scopes `crm.schemas.contacts.read` / `.write`.
"""

from __future__ import annotations

from typing import Any

import orjson

from crmsync.connectors.fields import FieldSpec, FieldStatus
from crmsync.connectors.fields.http import (
    Fixes,
    PacedClient,
    Scrub,
    raise_for,
    send,
    unreadable,
)
from crmsync.connectors.httputil import json_body
from crmsync.connectors.upsert import CUSTOM_FIELDS
from crmsync.enums import Crm

PROPERTIES_PATH = "/crm/v3/properties/contacts"
FIXES = Fixes(
    "HubSpot",
    credentials="Check HUBSPOT_ACCESS_TOKEN",
    permissions="The private app needs the scopes crm.schemas.contacts.read and "
    "crm.schemas.contacts.write",
    url="Check HUBSPOT_API_BASE_URL (https://api.hubapi.com)",
)


def wanted_properties(names: dict[str, str]) -> list[FieldSpec]:
    """The custom properties for `names` (a `CUSTOM_FIELDS` key -> configured property name)."""
    return [
        FieldSpec(
            name,
            CUSTOM_FIELDS[field],
            "boolean" if field == "has_gmail" else "text",
            f"HUBSPOT_CUSTOM_PROPERTY_{field.upper()}",
        )
        for field, name in names.items()
    ]


def definition(field: FieldSpec) -> dict[str, Any]:
    """The `POST /crm/v3/properties/contacts` body for `field`."""
    body: dict[str, Any] = {
        "name": field.name,
        "label": field.label,
        "type": "string",
        "fieldType": "text",
        "groupName": "contactinformation",
        "description": "Set by crmsync",
    }
    if field.kind == "boolean":
        body["type"] = "bool"
        body["fieldType"] = "booleancheckbox"
        body["options"] = [
            {"label": "Yes", "value": "true", "displayOrder": 0},
            {"label": "No", "value": "false", "displayOrder": 1},
        ]
    return body


class HubSpotFields:
    crm = Crm.hubspot

    def __init__(
        self,
        client: PacedClient,
        base: str,
        token: str,
        names: dict[str, str],
        scrub: Scrub,
    ) -> None:
        self._client = client
        self._url = base + PROPERTIES_PATH
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self._names = names
        self._scrub = scrub

    def wanted(self) -> list[FieldSpec]:
        return wanted_properties(self._names)

    async def names(self) -> set[str]:
        action = "list the contact properties"
        response = await send(
            self._client.get(self._url, headers=self._headers), FIXES, action, self._scrub
        )
        raise_for(response, FIXES, action, self._scrub)
        data = json_body(response)
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list):
            raise unreadable(FIXES, action)
        return {
            str(item["name"]) for item in results if isinstance(item, dict) and item.get("name")
        }

    async def create(self, field: FieldSpec) -> FieldStatus:
        action = f'create the property "{field.name}"'
        response = await send(
            self._client.post(
                self._url, content=orjson.dumps(definition(field)), headers=self._headers
            ),
            FIXES,
            action,
            self._scrub,
        )
        if response.status_code == 409:
            return "exists"
        raise_for(response, FIXES, action, self._scrub)
        return "created"
