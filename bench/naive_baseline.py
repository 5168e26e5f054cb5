"""BASELINE, NOT CRMSYNC: a naive implementation of the customer's sync design, for comparison.

The customer's scheduler (customer-system 4.7) handled one contact at a time: find a queued
contact, send it to the CRM on its own, write its status, commit, next. This script does exactly
that against crmsync's own tables, with crmsync's database engine settings (so the database
layer is the same and only the design differs):

    loop:
        BEGIN
        SELECT one Selected/Queued hubspot row and its contact
        POST it alone to HubSpot's batch/upsert (one input)
        UPDATE the row Complete (external id, synced_at)
        COMMIT

It is kept in `bench/` only, as the baseline of `sync_throughput.py`; nothing in crmsync uses it.
It prints "ready" once connected, works until `--expect` rows are done, prints "done" and exits
when its standard input closes.

    .venv/bin/python bench/naive_baseline.py --database-url URL --hubspot-url URL \
        --token TOKEN --expect 5000
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from typing import Any

import httpx
import orjson
from sqlalchemy import Row, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from crmsync import db
from crmsync.tables import contacts, crm_sync_state

s = crm_sync_state.c
c = contacts.c
UPSERT_PATH = "/crm/v3/objects/contacts/batch/upsert"

NEXT_ROW = (
    select(
        s.id,
        c.email,
        c.name,
        c.phone_number,
        c.email_type,
        c.has_gmail,
        c.source_url,
        c.domain_id,
        c.page_id,
    )
    .join(contacts, c.id == s.contact_id)
    .where(s.crm == "hubspot", s.sync_status.in_(("Selected", "Queued")))
    .order_by(s.next_attempt_at)
    .limit(1)
)


def body(row: Row[Any]) -> bytes:
    """The same HubSpot input crmsync sends for this contact, as a batch of one."""
    first, _, last = (row.name or "").partition(" ")
    properties = {
        "email": row.email,
        "firstname": first,
        "lastname": last,
        "phone": row.phone_number,
        "scrapersky_domain_id": str(row.domain_id),
        "scrapersky_page_id": str(row.page_id),
        "scrapersky_email_type": row.email_type,
        "scrapersky_source_url": row.source_url,
        "scrapersky_has_gmail": "true" if row.has_gmail else "false",
    }
    return orjson.dumps(
        {"inputs": [{"id": row.email, "idProperty": "email", "properties": properties}]}
    )


async def sync_one(conn: AsyncConnection, client: httpx.AsyncClient, url: str) -> bool:
    """Push the next queued contact and record it; False when nothing is queued."""
    row = (await conn.execute(NEXT_ROW)).first()
    if row is None:
        return False
    picked = dt.datetime.now(dt.UTC)
    response = await client.post(url, content=body(row))
    now = dt.datetime.now(dt.UTC)
    if response.status_code == 200:
        external_id = str(response.json()["results"][0]["id"])
        values: dict[str, Any] = {
            "sync_status": "Complete",
            "processing_status": "Complete",
            "external_id": external_id,
            "synced_at": now,
        }
    else:
        values = {
            "sync_status": "Error",
            "processing_status": "Error",
            "processing_error": f"HTTP {response.status_code}",
        }
    await conn.execute(
        update(crm_sync_state)
        .where(s.id == row.id)
        .values(**values, next_attempt_at=None, last_attempt_at=picked, updated_at=now)
    )
    return True


async def run(database_url: str, hubspot_url: str, token: str, expect: int) -> int:
    engine = db.create_engine(database_url)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    url = hubspot_url.rstrip("/") + UPSERT_PATH
    done = 0
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        async with engine.connect():
            print("ready", flush=True)
        while done < expect:
            async with engine.begin() as conn:  # one transaction, one commit, per contact
                worked = await sync_one(conn, client, url)
            if worked:
                done += 1
            else:
                await asyncio.sleep(0.01)  # nothing queued yet: the selection is coming
        # Stay alive (connection open) until told to go, so the caller can read the CPU time
        # of this process and of its database server process.
        print("done", flush=True)
        await asyncio.to_thread(sys.stdin.read)
    await engine.dispose()
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--hubspot-url", required=True, help="HUBSPOT_API_BASE_URL")
    parser.add_argument("--token", required=True)
    parser.add_argument("--expect", type=int, required=True, help="rows to sync, then exit")
    args = parser.parse_args()
    asyncio.run(run(args.database_url, args.hubspot_url, args.token, args.expect))


if __name__ == "__main__":
    main()
