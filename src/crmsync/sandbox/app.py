"""The sandbox ASGI app: four vendor fakes under their own prefix, plus `/_sandbox` control.

| prefix | fake | crmsync setting |
|---|---|---|
| `/brevo/v3` | Brevo API v3 (`brevo.py`) | `BREVO_API_BASE_URL=<base>/brevo/v3` |
| `/hubspot` | HubSpot CRM v3 (`hubspot.py`) | `HUBSPOT_API_BASE_URL=<base>/hubspot` |
| `/mautic` | Mautic REST API (`mautic.py`) | `MAUTIC_BASE_URL=<base>/mautic` |
| `/n8n` | n8n webhooks (`n8n.py`) | `N8N_WEBHOOK_URL=<base>/n8n/webhook/crmsync` |
| `/_sandbox` | control and inspection (`control.py`) | - |

Plain Starlette (no FastAPI, no pydantic) and orjson keep the per-request cost low enough that
the sandbox is never the bottleneck of a sync benchmark.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Mount, Router

from crmsync.sandbox.brevo import BrevoFake
from crmsync.sandbox.common import Vendor
from crmsync.sandbox.config import SandboxConfig
from crmsync.sandbox.control import control_routes
from crmsync.sandbox.hubspot import HubSpotFake
from crmsync.sandbox.mautic import MauticFake, MauticVersionHeader
from crmsync.sandbox.n8n import N8nFake


class Sandbox:
    """The four fakes' state. Lives on one event loop: the app's (`app.state.sandbox`)."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.brevo = BrevoFake(config)
        self.hubspot = HubSpotFake(config)
        self.mautic = MauticFake(config)
        self.n8n = N8nFake(config)
        self.vendors: dict[str, Vendor] = {
            "brevo": self.brevo,
            "hubspot": self.hubspot,
            "mautic": self.mautic,
            "n8n": self.n8n,
        }

    def reset(self, *, faults: bool = False) -> None:
        for vendor in self.vendors.values():
            vendor.reset(faults=faults)


def create_app(config: SandboxConfig | None = None) -> Starlette:
    """Build the sandbox app. `app.state.sandbox` gives in-process access to its state."""
    sandbox = Sandbox(config or SandboxConfig())
    mautic = MauticVersionHeader(
        Router(routes=sandbox.mautic.routes()), sandbox.config.mautic_version
    )
    app = Starlette(
        routes=[
            # HubSpot first: its batch upsert is the hottest route in benchmarks.
            Mount("/hubspot", routes=sandbox.hubspot.routes()),
            Mount("/brevo/v3", routes=sandbox.brevo.routes()),
            Mount("/mautic", app=mautic),
            Mount("/n8n", routes=sandbox.n8n.routes()),
            Mount("/_sandbox", routes=control_routes(sandbox)),
        ]
    )
    app.state.sandbox = sandbox
    return app
