"""The peer: drt-core 1.2.1 (open-source reverse ETL) pushing the same contacts to the sandbox.

drt is installed in a throwaway virtualenv (default /tmp/crmsync-bench-drt-venv; created on
first use, never a crmsync dependency). Its project is written to a temporary directory:

- source: a `sqlite` profile on the crmsync SQLite database the engine benchmark uses, so both
  read the very same `contacts` rows; the model is a raw SQL query over that table (UUIDs are
  formatted with dashes in SQL, so drt's request bodies equal crmsync's);
- destination: `rest_api` in `body_mode: batch` on the sandbox's HubSpot
  `POST /crm/v3/objects/contacts/batch/upsert`, `max_records_per_request: 100`, bearer auth, a
  Jinja `batch_template` that builds the same inputs crmsync sends (email as id, first/last name,
  phone, the five scrapersky_* properties);
- sync: `batch_size: 1000`, `rate_limit.requests_per_second: 0` (no pacing), `on_error: fail`.

drt keeps no per-row state: it reads the query, sends it, and reports counts. `run()` returns
drt's own `duration_seconds` (from `drt run --output json`, CLI start-up excluded) and the wall
time of the whole command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DRT_VERSION = "1.2.1"
DEFAULT_VENV = Path("/tmp/crmsync-bench-drt-venv")

# 32-hex UUIDs as SQLAlchemy stores them in SQLite, shown the usual 8-4-4-4-12 way.
_DASHED = (
    "substr({c},1,8)||'-'||substr({c},9,4)||'-'||substr({c},13,4)||'-'||"
    "substr({c},17,4)||'-'||substr({c},21,12)"
)
MODEL = (
    "SELECT email, name, phone_number, email_type, has_gmail, source_url, "
    f"{_DASHED.format(c='domain_id')} AS domain_id, {_DASHED.format(c='page_id')} AS page_id "
    "FROM contacts ORDER BY created_at, id"
)

# One HubSpot batch/upsert body for `rows`, as crmsync's HubSpot connector builds it.
BATCH_TEMPLATE = (
    '{"inputs": [{% for row in rows %}{% set n = row.name.split(" ", 1) %}'
    '{"id": {{ row.email | tojson_safe }}, "idProperty": "email", "properties": {'
    '"email": {{ row.email | tojson_safe }}, '
    '"firstname": {{ n[0] | tojson_safe }}, "lastname": {{ n[1] | tojson_safe }}, '
    '"phone": {{ row.phone_number | tojson_safe }}, '
    '"scrapersky_domain_id": {{ row.domain_id | tojson_safe }}, '
    '"scrapersky_page_id": {{ row.page_id | tojson_safe }}, '
    '"scrapersky_email_type": {{ row.email_type | tojson_safe }}, '
    '"scrapersky_source_url": {{ row.source_url | tojson_safe }}, '
    '"scrapersky_has_gmail": {{ ("true" if row.has_gmail else "false") | tojson_safe }}'
    "}}{% if not loop.last %},{% endif %}{% endfor %}]}"
)


def ensure_venv(venv: Path = DEFAULT_VENV) -> Path:
    """The `drt` executable of a throwaway venv holding drt-core==DRT_VERSION (made if missing)."""
    drt = venv / "bin" / "drt"
    pip = venv / "bin" / "pip"
    if drt.exists() and _installed_version(venv) == DRT_VERSION:
        return drt
    if not pip.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run(
        [str(pip), "install", "--quiet", "--disable-pip-version-check", f"drt-core=={DRT_VERSION}"],
        check=True,
    )
    return drt


_PRINT_VERSION = "import importlib.metadata as m; print(m.version('drt-core'))"


def _installed_version(venv: Path) -> str | None:
    result = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('drt-core'))",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or None


def _sync_yaml(url: str) -> str:
    # JSON is valid YAML: it spares us quoting the Jinja template by hand.
    config = {
        "name": "contacts_to_hubspot",
        "model": MODEL,
        "destination": {
            "type": "rest_api",
            "url": url,
            "method": "POST",
            "headers": {"Content-Type": "application/json"},
            "auth": {"type": "bearer", "token_env": "HUBSPOT_TOKEN"},
            "body_mode": "batch",
            "max_records_per_request": 100,
            "batch_template": BATCH_TEMPLATE,
        },
        "sync": {
            "mode": "full",
            "batch_size": 1000,
            "rate_limit": {"requests_per_second": 0},
            "on_error": "fail",
        },
    }
    return json.dumps(config, indent=2)


@dataclass
class DrtRun:
    rows_synced: int
    rows_failed: int
    drt_seconds: float  # drt's own measure of the sync
    wall_seconds: float  # the whole `drt run` command, interpreter start included
    cpu_seconds: float  # CPU time of the whole command


class DrtProject:
    """A drt project (and its HOME with profiles.yml) in `root`, reading `sqlite_path`."""

    def __init__(self, drt: Path, root: Path, sqlite_path: Path, hubspot_url: str, token: str):
        self.drt = drt
        self.home = root / "home"
        self.project = root / "project"
        self.token = token
        (self.home / ".drt").mkdir(parents=True, exist_ok=True)
        (self.project / "syncs").mkdir(parents=True, exist_ok=True)
        (self.home / ".drt" / "profiles.yml").write_text(
            f"bench:\n  type: sqlite\n  database: {sqlite_path}\n"
        )
        (self.project / "drt_project.yml").write_text(
            'name: crmsync_bench\nversion: "0.1"\nprofile: bench\n'
        )
        url = hubspot_url.rstrip("/") + "/crm/v3/objects/contacts/batch/upsert"
        (self.project / "syncs" / "contacts_to_hubspot.yml").write_text(_sync_yaml(url))

    def run(self) -> DrtRun:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.home),  # drt reads ~/.drt/profiles.yml
            "HUBSPOT_TOKEN": self.token,
        }
        started = time.perf_counter()
        children_before = os.times()
        result = subprocess.run(
            [str(self.drt), "run", "--output", "json"],
            cwd=self.project,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - started
        children = os.times()
        cpu = (children.children_user - children_before.children_user) + (
            children.children_system - children_before.children_system
        )
        if result.returncode != 0:
            raise RuntimeError(f"drt run failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        report = json.loads(result.stdout)
        sync = report["syncs"][0]
        return DrtRun(sync["rows_synced"], sync["rows_failed"], sync["duration_seconds"], wall, cpu)
