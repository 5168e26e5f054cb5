"""What health's outcome windows cost with many events in the last hour (PostgreSQL).

`/api/v3/crm/health` (and the dashboard that polls it) asks for each CRM's successes and failures
over the last hour and its successes over the last 5 minutes. Counted from `sync_events`, that
reads every event of the hour; on PostgreSQL the trigger-kept minutes of migration 0009 answer
the whole minutes, and only each window's first part-minute is counted from the events
(`ops/repository.py` `outcomes`). This loads `--events` history rows spread over the last hour
(one INSERT per 1,000, so the trigger keeps minutes as a worker's batches do; then folded, as a
running worker folds them every minute), then times both reads interleaved, `--repeats` times
each.

    .venv/bin/python bench/health_outcomes.py [--events 1000000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import time

from sqlalchemy import text

from benchlib import DEFAULT_PG_URL, Databases, environment, migrate, stop_on_sigterm
from crmsync import counts, db
from crmsync.ops import repository as repo

LOAD = """
INSERT INTO sync_events (contact_id, crm, outcome, http_status, attempt, duration_ms, created_at)
SELECT gen_random_uuid(), (ARRAY['brevo','hubspot','mautic','n8n'])[1 + g % 4],
       CASE WHEN g % 50 = 0 THEN 'error' ELSE 'ok' END, 200, 0, 5,
       now() - make_interval(secs => (g % 3600) + random())
FROM generate_series(:start, :start + 999) g
"""


async def run(url: str, events: int, repeats: int) -> dict[str, list[float]]:
    """Load the events, then time both reads: their seconds, by label."""
    engine = db.create_engine(url)
    try:
        async with engine.begin() as conn:
            for start in range(0, events, 1000):
                await conn.execute(text(LOAD), {"start": start})
        async with engine.begin() as conn:
            # As a running worker does every minute: one row per (CRM, minute) is left.
            await counts.compact(conn)
        async with engine.connect() as conn:
            await conn.execute(text("ANALYZE"))
            await conn.commit()
        seconds: dict[str, list[float]] = {"events": [], "kept": []}
        for _ in range(repeats):
            for label, read in (("events", repo.outcomes_counted), ("kept", repo.outcomes)):
                now = dt.datetime.now(dt.UTC)
                async with engine.connect() as conn:
                    started = time.perf_counter()
                    found = await read(
                        conn, now - dt.timedelta(hours=1), now - dt.timedelta(minutes=5)
                    )
                    seconds[label].append(time.perf_counter() - started)
                assert sum(o.successes + o.failures for o in found.values()) > events * 0.9
        return seconds
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    args = parser.parse_args()
    stop_on_sigterm()
    with Databases(args.pg_url) as databases:
        database = databases.create("postgresql", "health")
        asyncio.run(migrate(database))
        seconds = asyncio.run(run(database.url, args.events, args.repeats))
        print(environment())
    print(f"{args.events:,} events in the last hour, {args.repeats} reads each, interleaved")
    for label, times in seconds.items():
        runs = ", ".join(f"{t * 1000:.1f}" for t in times)
        print(f"{label}: median {statistics.median(times) * 1000:.1f} ms ({runs})")


if __name__ == "__main__":
    main()
