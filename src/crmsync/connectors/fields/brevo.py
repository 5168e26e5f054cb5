"""Brevo contact attributes: `GET /contacts/attributes`, `POST /contacts/attributes/normal/{name}`.

crmsync writes FIRSTNAME, LASTNAME and SMS (a new account has them) and its own DOMAIN_ID,
PAGE_ID, EMAIL_TYPE, SOURCE_URL (text) and HAS_GMAIL (boolean). Attribute names are upper-case.
What Brevo answers when the attribute already exists is not documented (the swagger lists 201 and
400): after a 400 the list is read again, and an attribute that is there now counts as existing.
"""

from __future__ import annotations

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
from crmsync.enums import Crm

ATTRIBUTES_PATH = "/contacts/attributes"
FIELDS = [
    FieldSpec("FIRSTNAME", "First name"),
    FieldSpec("LASTNAME", "Last name"),
    FieldSpec("SMS", "Mobile phone"),
    FieldSpec("DOMAIN_ID", "ScraperSky domain ID"),
    FieldSpec("PAGE_ID", "ScraperSky page ID"),
    FieldSpec("EMAIL_TYPE", "ScraperSky email type"),
    FieldSpec("SOURCE_URL", "ScraperSky source URL"),
    FieldSpec("HAS_GMAIL", "ScraperSky has Gmail", "boolean"),
]
FIXES = Fixes(
    "Brevo",
    credentials="Check BREVO_API_KEY",
    permissions="The account or the key may not be allowed this (Brevo's message says why)",
    url="Check BREVO_API_BASE_URL (https://api.brevo.com/v3)",
)


class BrevoFields:
    crm = Crm.brevo

    def __init__(self, client: PacedClient, base: str, api_key: str, scrub: Scrub) -> None:
        self._client = client
        self._base = base
        self._headers = {"api-key": api_key, "accept": "application/json"}
        self._scrub = scrub

    def wanted(self) -> list[FieldSpec]:
        return list(FIELDS)

    async def names(self) -> set[str]:
        action = "list the contact attributes"
        response = await send(
            self._client.get(self._base + ATTRIBUTES_PATH, headers=self._headers),
            FIXES,
            action,
            self._scrub,
        )
        raise_for(response, FIXES, action, self._scrub)
        data = json_body(response)
        attributes = data.get("attributes") if isinstance(data, dict) else None
        if not isinstance(attributes, list):
            raise unreadable(FIXES, action)
        return {
            str(item["name"]).upper()
            for item in attributes
            if isinstance(item, dict) and item.get("name")
        }

    async def create(self, field: FieldSpec) -> FieldStatus:
        action = f"create the attribute {field.name}"
        response = await send(
            self._client.post(
                f"{self._base}{ATTRIBUTES_PATH}/normal/{field.name}",
                content=orjson.dumps({"type": field.kind}),
                headers={**self._headers, "content-type": "application/json"},
            ),
            FIXES,
            action,
            self._scrub,
        )
        if response.status_code == 400 and field.name in await self.names():
            return "exists"
        raise_for(response, FIXES, action, self._scrub)
        return "created"
