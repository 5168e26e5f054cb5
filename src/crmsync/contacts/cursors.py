"""The list's paging cursor: where the last page ended, as an opaque string.

`offset` is bounded (reading past a large offset reads every row before it); a client pages
further with `after`, the cursor the previous page gave in `X-Next-Cursor`. It holds the last
contact's place in list order (created_at, id), so a contact added or deleted meanwhile shifts
nothing, and a cursor stays valid even if its contact is deleted.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from typing import Any


def encode(row: Any) -> str:
    created_at: dt.datetime = row["created_at"]
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=dt.UTC)
    raw = f"{created_at.astimezone(dt.UTC).isoformat()}|{row['id']}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    """The place a cursor holds; ValueError (with a message for the client) if it is none."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, contact_id = raw.partition("|")
        when = dt.datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError("no time zone")
        return when, uuid.UUID(contact_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError(
            "not a cursor: pass the X-Next-Cursor value of the previous page as it is"
        ) from None


def check(cursor: str | None) -> str | None:
    """Validation of the `after` parameter (a 422 naming it when it is no cursor)."""
    if cursor is not None:
        decode(cursor)
    return cursor
