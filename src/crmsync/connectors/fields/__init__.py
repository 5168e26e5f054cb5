"""The vendor fields crmsync writes, and how to check and create them.

Brevo silently drops a contact attribute that does not exist in the account, Mautic drops an
unknown contact field, and HubSpot refuses a whole request that names an unknown property
(crm-apis.md; the sandbox does the same). A sync into an account without crmsync's custom
fields would therefore mark contacts Complete with their data missing (Brevo, Mautic) or fail
every row (HubSpot). So:

- `missing_fields(api)`: one cheap read call (the vendor's list of fields) and the fields crmsync
  writes that are not in it. The worker runs it when it starts and when a CRM resumes, and
  pauses the CRM with `missing_reason(...)` instead of syncing; `crmsync check` runs it too.
- `set_up(api)`: creates what is missing (`crmsync setup CRM`); idempotent: it lists first and
  creates only what the list lacks.

Each vendor implements `FieldApi` in a module of this package; a connector hands one out with
`field_api()` (so it shares the connector's HTTP client, credentials and secret redaction).
n8n has no fields: its connector has no `field_api`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from crmsync.enums import Crm

FieldKind = Literal["text", "boolean"]
FieldStatus = Literal["created", "exists"]

# What each vendor calls its fields, for messages.
FIELD_NOUN = {Crm.brevo: "attribute", Crm.hubspot: "property", Crm.mautic: "field"}
FIELD_NOUN_PLURAL = {Crm.brevo: "attributes", Crm.hubspot: "properties", Crm.mautic: "fields"}
VENDOR_NAME = {Crm.brevo: "Brevo", Crm.hubspot: "HubSpot", Crm.mautic: "Mautic", Crm.n8n: "n8n"}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field crmsync writes: the vendor's name for it, a label, its kind and its setting."""

    name: str
    label: str
    kind: FieldKind = "text"
    # The setting that names the field (HUBSPOT_CUSTOM_PROPERTY_DOMAIN_ID), if one does.
    setting: str | None = None


@dataclass(frozen=True, slots=True)
class FieldResult:
    field: FieldSpec
    status: FieldStatus


class FieldApi(Protocol):
    """One vendor's field list and field creation, for one account."""

    crm: Crm

    def wanted(self) -> list[FieldSpec]:
        """The fields crmsync writes with the current settings."""
        ...

    async def names(self) -> set[str]:
        """The names of the fields the account has (raises the connector errors of base.py)."""
        ...

    async def create(self, field: FieldSpec) -> FieldStatus:
        """Create `field`: "created", or "exists" when the vendor says it appeared meanwhile."""
        ...


@runtime_checkable
class HasFields(Protocol):
    """A connector whose vendor has fields to check (every one but n8n)."""

    def field_api(self) -> FieldApi: ...


async def missing_fields(api: FieldApi) -> list[FieldSpec]:
    """The wanted fields the account lacks, in `wanted()` order (one read call)."""
    wanted = api.wanted()
    if not wanted:
        return []
    have = {_key(api.crm, name) for name in await api.names()}
    return [field for field in wanted if _key(api.crm, field.name) not in have]


async def set_up(api: FieldApi) -> list[FieldResult]:
    """Create every wanted field the account lacks; one result per wanted field, in order."""
    wanted = api.wanted()
    if not wanted:
        return []
    have = {_key(api.crm, name) for name in await api.names()}
    results: list[FieldResult] = []
    for field in wanted:
        if _key(api.crm, field.name) in have:
            results.append(FieldResult(field, "exists"))
        else:
            results.append(FieldResult(field, await api.create(field)))
    return results


def missing_reason(crm: Crm, missing: Sequence[FieldSpec]) -> str:
    """E.g. "Brevo attribute DOMAIN_ID does not exist: run crmsync setup brevo"."""
    names = ", ".join(field.name for field in missing)
    if len(missing) == 1:
        what = f"{VENDOR_NAME[crm]} {FIELD_NOUN[crm]} {names} does not exist"
    else:
        what = f"{VENDOR_NAME[crm]} {FIELD_NOUN_PLURAL[crm]} {names} do not exist"
    reason = f"{what}: run crmsync setup {crm.value}"
    settings = [field.setting for field in missing if field.setting]
    if settings:
        reason += f" (or set {', '.join(settings)} to an existing one, or empty to leave it out)"
    return reason


def _key(crm: Crm, name: str) -> str:
    # Brevo attribute names are upper-case whatever the request said; the others are exact.
    return name.upper() if crm is Crm.brevo else name


__all__ = [
    "FIELD_NOUN_PLURAL",
    "VENDOR_NAME",
    "FieldApi",
    "FieldResult",
    "FieldSpec",
    "HasFields",
    "missing_fields",
    "missing_reason",
    "set_up",
]
