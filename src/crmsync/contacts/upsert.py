"""Upsert contacts by email (case-insensitive) inside the caller's transaction.

Shared by `POST /contacts/bulk` and `crmsync import`, so that both decide "new, changed or
unchanged" the same way. A row updates only the fields it carries (`model_fields_set`, an
explicit null included) and leaves the others as they are.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from crmsync.connectors.mapping import SYNCED_FIELDS
from crmsync.contacts import repository as repo
from crmsync.contacts.schemas import ContactCreate
from crmsync.sync import selection


@dataclass
class Upserted:
    """What an upsert did, per lower-cased email: the contact's id and how it was touched."""

    ids: dict[str, uuid.UUID] = field(default_factory=dict)
    created: set[str] = field(default_factory=set)
    changed: set[str] = field(default_factory=set)
    unchanged: set[str] = field(default_factory=set)


async def upsert_by_email(
    conn: AsyncConnection,
    rows: Mapping[str, ContactCreate],
    now: dt.datetime,
    *,
    resync_on_change: bool,
    dry_run: bool = False,
) -> Upserted:
    """Create the contacts whose email is new, update the others; `rows` keyed by email.lower().

    With `resync_on_change`, a contact whose synced fields changed is queued again wherever it
    was Complete or in flight. With `dry_run`, nothing is written: the counts say what would be
    (and `ids` holds only the contacts that exist).
    """
    done = Upserted()
    existing = await repo.existing_by_email(conn, rows)
    fresh = [new_row(contact, now) for key, contact in rows.items() if key not in existing]
    if dry_run:
        inserted = {row["email"].lower() for row in fresh}
    else:
        inserted = await repo.insert_new(conn, fresh)
        done.ids.update((row["email"].lower(), row["id"]) for row in fresh)
    done.created = inserted
    lost_race = [key for key in rows if key not in existing and key not in inserted]
    if lost_race:
        # Another writer inserted these emails between our read and our insert: update them.
        existing.update(await repo.existing_by_email(conn, lost_race))
    changes: dict[frozenset[str], list[dict[str, Any]]] = {}
    requeue: list[uuid.UUID] = []
    for key, contact in rows.items():
        if key in inserted:
            continue
        before = existing[key]
        done.ids[key] = before["id"]
        values = changed_values(contact, before)
        if not values:
            done.unchanged.add(key)
            continue
        done.changed.add(key)
        values["updated_at"] = now
        changes.setdefault(frozenset(values), []).append({"id": before["id"], **values})
        if synced_fields_changed(before, values):
            requeue.append(before["id"])
    if dry_run:
        return done
    for same_columns in changes.values():
        await repo.update_many(conn, same_columns)
    if resync_on_change:
        await selection.requeue_after_edit(conn, requeue, now)
    return done


def new_row(contact: ContactCreate, now: dt.datetime | None) -> dict[str, Any]:
    return {**contact.contact_values(), "id": uuid.uuid4(), "created_at": now, "updated_at": now}


def changed_values(contact: ContactCreate, before: Mapping[Any, Any]) -> dict[str, Any]:
    """The fields this row carries whose value differs from the stored contact."""
    candidate = contact.contact_values()
    return {
        key: candidate[key]
        for key in contact.model_fields_set
        if key in candidate and candidate[key] != before[key]
    }


def synced_fields_changed(before: Mapping[Any, Any], values: Mapping[str, Any]) -> bool:
    return any(key in SYNCED_FIELDS and values[key] != before[key] for key in values)
