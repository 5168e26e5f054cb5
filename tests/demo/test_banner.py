"""What the demo prints once the API answers."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from rich.console import Console

from crmsync.auth import verify_token
from crmsync.demo.options import DemoOptions
from crmsync.demo.run import DASHBOARD_PATH, _print_banner, _Started
from crmsync.demo.seed import Seeded
from crmsync.enums import Crm
from crmsync.sandbox import SandboxServer

SECRET = "s" * 48


def _banner(app: FastAPI, started: _Started, tmp_path: Path) -> str:
    console = Console(record=True, width=300)
    options = DemoOptions(port=8123, db=tmp_path / "demo.db")
    _print_banner(console, options, SandboxServer(port=8999), SECRET, app, started)
    return console.export_text()


def test_the_banner_shows_urls_a_working_token_and_the_selection(tmp_path: Path) -> None:
    started = _Started(
        seeded=Seeded(existing=0, created=500, rejected=0),
        queued={Crm.brevo: 500, Crm.hubspot: 167, Crm.mautic: 334, Crm.n8n: 167},
    )
    text = _banner(FastAPI(), started, tmp_path)
    assert "API        http://127.0.0.1:8123\n" in text
    assert "http://127.0.0.1:8123/docs" in text and "http://127.0.0.1:8999" in text
    token = text.split("export TOKEN=")[1].split()[0]
    assert verify_token(token, SECRET).sub == "demo"
    assert 'curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8123/api/v3/' in text
    assert "Generated 500 contacts." in text
    assert "  hubspot    167  corporate emails" in text
    assert DASHBOARD_PATH not in text  # the app has no dashboard: no link to one


def test_the_dashboard_link_appears_once_the_app_serves_it(tmp_path: Path) -> None:
    app = FastAPI()

    @app.get(DASHBOARD_PATH)
    def login() -> str:
        return "sign in"

    text = _banner(app, _Started(), tmp_path)
    link = text.split("Dashboard  ")[1].split()[0]
    assert link.startswith(f"http://127.0.0.1:8123{DASHBOARD_PATH}#token=")
    assert verify_token(link.split("#token=")[1], SECRET).sub == "demo"


def test_a_restart_says_the_contacts_were_kept(tmp_path: Path) -> None:
    started = _Started(
        seeded=Seeded(existing=500, created=0, rejected=0), queued=dict.fromkeys(Crm, 0)
    )
    text = _banner(FastAPI(), started, tmp_path)
    assert "500 contacts already in the database; none generated." in text
    assert "Generated" not in text
