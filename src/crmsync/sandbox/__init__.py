"""Local fakes of the four vendor APIs (Brevo, HubSpot, Mautic, n8n) with fault injection.

Public surface: `create_app`, `SandboxConfig`, `parse_faults`, `serve`, `SandboxServer`,
`sandbox_env`, `auth_headers`, `ManualClock`, and `envfile` (writing the sandbox's settings).
See `app.py` for the URL layout and `control.py` for `/_sandbox`.
"""

from crmsync.sandbox.app import Sandbox, create_app
from crmsync.sandbox.common import ManualClock
from crmsync.sandbox.config import SandboxConfig, parse_faults
from crmsync.sandbox.server import SandboxServer, auth_headers, sandbox_env, serve

__all__ = [
    "ManualClock",
    "Sandbox",
    "SandboxConfig",
    "SandboxServer",
    "auth_headers",
    "create_app",
    "envfile",
    "parse_faults",
    "sandbox_env",
    "serve",
]
