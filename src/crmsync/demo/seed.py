"""The demo's data: generated contacts on first start, and one segment selected per CRM.

Both steps can run on every start. Contacts are generated only into an empty database, and a
segment selects only the contacts never selected for that CRM, so a restart queues nothing
twice (and a start interrupted between the two steps finishes the job the next time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crmsync.contacts.schemas import MAX_BULK, ContactFilters, FilteredRequest
from crmsync.contacts.service import ContactService
from crmsync.demo.config import INVALID_EVERY
from crmsync.demo.contacts import realistic_contacts
from crmsync.enums import Crm, EmailType, SyncStatus


@dataclass(frozen=True)
class Segment:
    description: str
    filters: dict[str, Any]


# What a team would send where: everyone gets the newsletter, sales gets the people at
# companies, marketing automation gets the non-Gmail addresses, a workflow routes info@ boxes.
SEGMENTS: dict[Crm, Segment] = {
    Crm.brevo: Segment("every contact", {}),
    Crm.hubspot: Segment("corporate emails", {"email_type": EmailType.CORPORATE}),
    Crm.mautic: Segment("addresses not on Gmail", {"has_gmail": False}),
    Crm.n8n: Segment("service addresses: info@, hello@", {"email_type": EmailType.SERVICE}),
}


@dataclass(frozen=True)
class Seeded:
    existing: int  # contacts the database already held (then none were generated)
    created: int
    rejected: int


async def seed_contacts(service: ContactService, count: int) -> Seeded:
    """Generate `count` contacts into an empty database; leave a non-empty one alone."""
    _, existing, _ = await service.page(ContactFilters(), limit=1, offset=0)
    if existing:
        return Seeded(existing=existing, created=0, rejected=0)
    rows = realistic_contacts(count, invalid_every=INVALID_EVERY)
    created = rejected = 0
    for start in range(0, len(rows), MAX_BULK):
        result = await service.bulk_upsert(rows[start : start + MAX_BULK])
        created += result.created_count
        rejected += result.rejected_count
    return Seeded(existing=0, created=created, rejected=rejected)


async def select_segments(service: ContactService) -> dict[Crm, int]:
    """Queue each CRM's segment, skipping contacts ever selected there; rows queued per CRM."""
    queued: dict[Crm, int] = {}
    for crm, segment in SEGMENTS.items():
        never_selected = {f"{crm.value}_sync_status": SyncStatus.New}
        request = FilteredRequest(**segment.filters, **never_selected)
        result = await service.select_filtered(request, [crm.value], "select", force=False)
        queued[crm] = result.queued_count
    return queued
