"""What the demo prints once the API answers."""

from __future__ import annotations

from pathlib import Path

import httpx
from rich.console import Console

from crmsync.api.app import create_app
from crmsync.auth import verify_token
from crmsync.demo.options import DemoOptions
from crmsync.demo.run import DASHBOARD_PATH, _print_banner, _Started
from crmsync.demo.seed import Seeded
from crmsync.enums import Crm
from crmsync.sandbox import SandboxServer
from crmsync.settings import Settings

SECRET = "s" * 48


def _banner(started: _Started, tmp_path: Path) -> str:
    console = Console(record=True, width=300)
    options = DemoOptions(port=8123, db=tmp_path / "demo.db")
    _print_banner(console, options, SandboxServer(port=8999), SECRET, started)
    return console.export_text()


def test_the_banner_shows_urls_a_working_token_and_the_selection(tmp_path: Path) -> None:
    started = _Started(
        seeded=Seeded(existing=0, created=500, rejected=0),
        queued={Crm.brevo: 500, Crm.hubspot: 167, Crm.mautic: 334, Crm.n8n: 167},
    )
    text = _banner(started, tmp_path)
    assert "API        http://127.0.0.1:8123\n" in text
    assert "http://127.0.0.1:8123/docs" in text and "http://127.0.0.1:8999" in text
    token = text.split("export TOKEN=")[1].split()[0]
    assert verify_token(token, SECRET).sub == "demo"
    assert 'curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8123/api/v3/' in text
    assert "Generated 500 contacts." in text
    assert "  hubspot    167  corporate emails" in text


async def test_the_dashboard_link_signs_in_to_the_apps_dashboard(tmp_path: Path) -> None:
    text = _banner(_Started(), tmp_path)
    link = text.split("Dashboard  ")[1].split()[0]
    assert link.startswith(f"http://127.0.0.1:8123{DASHBOARD_PATH}#token=")
    assert verify_token(link.split("#token=")[1], SECRET).sub == "demo"
    # The link's page is the app's own sign-in page (the demo's app is `create_app`'s).
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}",
        jwt_secret_key=SECRET,
        _env_file=None,  # type: ignore[call-arg]
    )
    transport = httpx.ASGITransport(app=create_app(settings, SECRET))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        page = await http.get(DASHBOARD_PATH)
    assert page.status_code == 200 and "<form" in page.text


def test_a_restart_says_the_contacts_were_kept(tmp_path: Path) -> None:
    started = _Started(
        seeded=Seeded(existing=500, created=0, rejected=0), queued=dict.fromkeys(Crm, 0)
    )
    text = _banner(started, tmp_path)
    assert "500 contacts already in the database; none generated." in text
    assert "Generated" not in text
