"""Mautic contact fields: `GET /api/fields/contact`, `POST /api/fields/contact/new`.

crmsync writes Mautic's core email, firstname, lastname and phone (core fields cannot be
deleted) and the custom fields named by `MAUTIC_FIELD_*`: text fields, and a boolean (Yes/No)
for has_gmail, which takes the 1 / 0 the connector sends.

The list is paged like every Mautic list (30 by default): it is read with a large `limit`, page
after page until `total` is reached. Mautic derives a new field's alias itself: it cleans it,
cuts it to 25 characters and appends a number when the alias is taken (`FieldModel`), so an alias
that would not survive that is refused before anything is created, and a field created under
another alias is reported as an error naming the alias Mautic chose.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from crmsync.connectors.base import ConnectorError, Misconfigured
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

FIELDS_PATH = "/api/fields/contact"
PAGE_SIZE = 200
MAX_PAGES = 50
# What survives Mautic's alias cleaning unchanged.
_CLEAN_ALIAS = re.compile(r"[a-z][a-z0-9_]{0,24}")
FIXES = Fixes(
    "Mautic",
    credentials="Check MAUTIC_USERNAME / MAUTIC_PASSWORD (or MAUTIC_CLIENT_ID / "
    "MAUTIC_CLIENT_SECRET), and that the API is enabled",
    permissions="The API user needs permission to view and manage custom fields",
    url="Check MAUTIC_BASE_URL (the site root) and that the API is enabled",
)


def wanted_fields(aliases: dict[str, str]) -> list[FieldSpec]:
    """The custom fields for `aliases` (a `CUSTOM_FIELDS` key -> configured alias)."""
    return [
        FieldSpec(
            alias,
            CUSTOM_FIELDS[field],
            "boolean" if field == "has_gmail" else "text",
            f"MAUTIC_FIELD_{field.upper()}",
        )
        for field, alias in aliases.items()
    ]


def definition(field: FieldSpec) -> dict[str, Any]:
    """The `POST /api/fields/contact/new` body for `field`."""
    body: dict[str, Any] = {
        "label": field.label,
        "alias": field.name,
        "type": field.kind,
        "group": "core",
        "object": "lead",
    }
    if field.kind == "boolean":
        body["properties"] = {"no": "No", "yes": "Yes"}
    return body


class MauticFields:
    crm = Crm.mautic

    def __init__(
        self,
        client: PacedClient,
        base: str,
        authorization: Callable[[], Awaitable[str]],
        aliases: dict[str, str],
        scrub: Scrub,
    ) -> None:
        self._client = client
        self._base = base
        self._authorization = authorization
        self._aliases = aliases
        self._scrub = scrub

    def wanted(self) -> list[FieldSpec]:
        return wanted_fields(self._aliases)

    async def _headers(self) -> dict[str, str]:
        return {
            "Authorization": await self._authorization(),
            "Content-Type": "application/json",
            "Accept": "application/json",
        }

    async def names(self) -> set[str]:
        action = "list the contact fields"
        found: set[str] = set()
        for page in range(MAX_PAGES):
            response = await send(
                self._client.get(
                    self._base + FIELDS_PATH,
                    params={"start": page * PAGE_SIZE, "limit": PAGE_SIZE},
                    headers=await self._headers(),
                ),
                FIXES,
                action,
                self._scrub,
            )
            raise_for(response, FIXES, action, self._scrub)
            data = json_body(response)
            fields = data.get("fields") if isinstance(data, dict) else None
            if isinstance(fields, dict):  # PHP arrays keyed by id come out as objects
                fields = list(fields.values())
            if not isinstance(fields, list):
                raise unreadable(FIXES, action)
            found |= {str(f["alias"]) for f in fields if isinstance(f, dict) and f.get("alias")}
            total = data.get("total") if isinstance(data, dict) else None
            if not fields or not isinstance(total, int) or (page + 1) * PAGE_SIZE >= total:
                break
        return found

    async def create(self, field: FieldSpec) -> FieldStatus:
        if not _CLEAN_ALIAS.fullmatch(field.name):
            raise Misconfigured(
                f"{field.setting}={field.name!r} is not an alias Mautic keeps as it is (a "
                "lower-case letter, then lower-case letters, digits and _, at most 25 "
                "characters): Mautic would create the field under another alias"
            )
        action = f'create the field "{field.name}"'
        response = await send(
            self._client.post(
                self._base + FIELDS_PATH + "/new",
                content=orjson.dumps(definition(field)),
                headers=await self._headers(),
            ),
            FIXES,
            action,
            self._scrub,
        )
        raise_for(response, FIXES, action, self._scrub)
        data = json_body(response)
        created = data.get("field") if isinstance(data, dict) else None
        alias = created.get("alias") if isinstance(created, dict) else None
        if alias is not None and alias != field.name:
            raise ConnectorError(
                f'Mautic created the field as "{alias}", not "{field.name}": set '
                f"{field.setting}={alias}, or delete it in Mautic and choose another alias"
            )
        return "created"
