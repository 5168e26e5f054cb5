"""Issue 21: importing 100,000 rows through the dashboard's Import page, on SQLite and PostgreSQL.

What runs, per database and per run: a fresh migrated database; `crmsync serve --no-worker` as a
subprocess; a browser-like client signs in through `/login` and posts the CSV file of
`import_contacts.py` (`--rows` realistic rows in "Title Case" columns, one row in 1,000 an invalid
email, one in 500 a repeated email in another case) as a multipart upload with the page's CSRF
token, then follows the redirect to the result page. Timed: from the first byte sent to the
result page read (upload, the whole-file check, the import, the summary). Checked: the summary's
counts on the page and the number of contacts in the database. Then the same file again, once
(every row unchanged).

Meanwhile a second client asks `/healthz` every 50 ms: its slowest answer says how long the
server's event loop was kept from answering during the import. The same client's slowest answer
over the 3 s before the upload (the server idle) is reported beside it: the machine's own noise.

    .venv/bin/python bench/import_page.py [--db sqlite postgresql] [--rows 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import threading
import time
from pathlib import Path

import httpx

from benchlib import DEFAULT_PG_URL, Api, Databases, Service, environment, median, migrate, table
from import_contacts import contact_count, write_csv

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')
NONCE = re.compile(r'name="login_csrf" value="([^"]+)"')


def _number(html: str, label: str) -> int:
    found = re.search(rf"<dt>{label}</dt><dd>([\d,]+)</dd>", html)
    if not found:
        raise RuntimeError(f"no {label} on the result page")
    return int(found.group(1).replace(",", ""))


class Poller(threading.Thread):
    """Asks /healthz every `every` seconds; keeps the slowest answer."""

    def __init__(self, url: str, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.url, self.every = url, every
        self.slowest = 0.0
        self.stopping = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as client:
            while not self.stopping.is_set():
                started = time.perf_counter()
                client.get("/healthz")
                self.slowest = max(self.slowest, time.perf_counter() - started)
                self.stopping.wait(self.every)


def idle_stall(api: Api, seconds: float = 3.0) -> float:
    """The slowest /healthz answer while nothing else runs."""
    poller = Poller(api.url)
    poller.start()
    time.sleep(seconds)
    poller.stopping.set()
    poller.join()
    return poller.slowest


def upload(api: Api, service: Service, path: Path) -> tuple[float, float, dict[str, int]]:
    """Sign in, post the file from the Import page: (seconds, slowest /healthz, summary)."""
    with httpx.Client(base_url=api.url, timeout=httpx.Timeout(600.0)) as browser:
        nonce = NONCE.search(browser.get("/login").text)
        assert nonce
        signed = browser.post(
            "/login", data={"token": service.token(), "login_csrf": nonce.group(1)}
        )
        if signed.status_code != 303:
            raise RuntimeError(f"sign-in answered {signed.status_code}")
        csrf = CSRF.search(browser.get("/import").text)
        assert csrf
        poller = Poller(api.url)
        poller.start()
        started = time.perf_counter()
        with path.open("rb") as f:
            posted = browser.post(
                "/import",
                data={"csrf_token": csrf.group(1)},
                files={"file": (path.name, f, "text/csv")},
            )
        if posted.status_code != 303:
            raise RuntimeError(f"upload answered {posted.status_code}: {posted.text[-1000:]}")
        page = browser.get(posted.headers["location"]).text
        seconds = time.perf_counter() - started
        poller.stopping.set()
        poller.join()
    summary = {
        label.lower(): _number(page, label)
        for label in ("Created", "Updated", "Unchanged", "Duplicates", "Rejected")
    }
    return seconds, poller.slowest, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite"])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    args = parser.parse_args()

    rows = []
    with Databases(args.pg_url) as databases:
        path = databases.tmp / "leads.csv"
        invalid, repeated = write_csv(path, args.rows)
        distinct = args.rows - invalid - repeated
        size = path.stat().st_size
        print(f"{args.rows:,} rows, {size / 1e6:.1f} MB", flush=True)
        for kind in args.db:
            times, stalls, idle = [], [], []
            again = (0.0, 0.0)
            for run in range(args.runs):
                database = databases.create(kind, f"page{run}")
                asyncio.run(migrate(database))
                work = databases.tmp / f"work-{kind}-{run}"
                work.mkdir()
                service = Service(database, work)
                api = Api(service, worker=False)
                try:
                    idle.append(idle_stall(api))
                    seconds, stall, summary = upload(api, service, path)
                    expected = {
                        "created": distinct,
                        "updated": 0,
                        "unchanged": 0,
                        "duplicates": repeated,
                        "rejected": invalid,
                    }
                    if summary != expected:
                        raise RuntimeError(f"summary {summary}, expected {expected}")
                    if run == 0:
                        seconds_again, stall_again, summary = upload(api, service, path)
                        if summary["unchanged"] != distinct or summary["created"]:
                            raise RuntimeError(f"again: {summary}")
                        again = (seconds_again, stall_again)
                finally:
                    api.close()
                stored = asyncio.run(contact_count(database.url))
                if stored != distinct:
                    raise RuntimeError(f"{stored} contacts stored, expected {distinct}")
                stalled = f"slowest /healthz {stall * 1000:.0f} ms"
                print(f"{kind} run {run + 1}: {seconds:.1f} s, {stalled}", flush=True)
                times.append(seconds)
                stalls.append(stall)
                databases.drop(database)
            rows.append(
                [
                    database.label,
                    f"{args.rows:,}",
                    ", ".join(f"{t:.1f}" for t in times),
                    f"{median(times):.1f}",
                    f"{args.rows / median(times):,.0f}",
                    f"{max(stalls) * 1000:.0f}",
                    f"{max(idle) * 1000:.0f}",
                    f"{again[0]:.1f}",
                ]
            )
    print(environment(args.pg_url))
    print(
        table(
            [
                "database",
                "rows",
                "seconds (runs)",
                "median s",
                "rows/s",
                "slowest /healthz ms",
                "idle ms",
                "again s",
            ],
            rows,
            right=[1, 3, 4, 5, 6, 7],
        )
    )


if __name__ == "__main__":
    main()
