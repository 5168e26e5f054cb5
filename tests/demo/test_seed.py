"""Seeding and selecting on every start: the second start generates and queues nothing."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.contacts.service import ContactService
from crmsync.demo import seed
from crmsync.demo.config import INVALID_EVERY
from crmsync.demo.contacts import realistic_contacts
from crmsync.enums import Crm
from crmsync.settings import Settings
from crmsync.tables import contacts, crm_sync_state


async def _count(engine: AsyncEngine, table: object, *where: object) -> int:
    async with engine.connect() as conn:
        stmt = select(func.count()).select_from(table).where(*where)  # type: ignore[arg-type]
        return int((await conn.execute(stmt)).scalar_one())


async def test_a_second_start_generates_and_selects_nothing(
    engine: AsyncEngine, settings: Settings
) -> None:
    service = ContactService(engine, settings)
    first = await seed.seed_contacts(service, 120)
    assert (first.existing, first.created, first.rejected) == (0, 120, 0)
    queued = await seed.select_segments(service)
    rows = realistic_contacts(120, invalid_every=INVALID_EVERY)
    expected = {
        Crm.brevo: 120,
        Crm.hubspot: sum(r["email_type"] == "CORPORATE" for r in rows),
        Crm.mautic: sum(r["has_gmail"] is False for r in rows),
        Crm.n8n: sum(r["email_type"] == "SERVICE" for r in rows),
    }
    assert queued == expected
    assert all(n > 0 for n in queued.values())
    states = await _count(engine, crm_sync_state)
    assert states == sum(expected.values())

    again = await seed.seed_contacts(service, 500)
    assert (again.existing, again.created) == (120, 0)
    assert await seed.select_segments(service) == {crm: 0 for crm in Crm}
    assert await _count(engine, contacts) == 120
    assert await _count(engine, crm_sync_state) == states


async def test_a_contact_added_later_is_selected_by_the_next_start(
    engine: AsyncEngine, settings: Settings
) -> None:
    service = ContactService(engine, settings)
    await seed.seed_contacts(service, 10)
    await seed.select_segments(service)
    await service.bulk_upsert(
        [{"email": "new.lead@initech.io", "email_type": "CORPORATE", "has_gmail": False}]
    )
    queued = await seed.select_segments(service)
    assert queued == {Crm.brevo: 1, Crm.hubspot: 1, Crm.mautic: 1, Crm.n8n: 0}
