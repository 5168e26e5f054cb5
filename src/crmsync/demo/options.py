"""The demo's command-line options (light: `crmsync --help` imports this, not the demo)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_DB = Path("crmsync-demo.db")


@dataclass(frozen=True)
class DemoOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    sandbox_port: int = 8900
    db: Path = DEFAULT_DB
    contacts: int = 500

    @property
    def db_path(self) -> Path:
        return self.db.expanduser().resolve()

    @property
    def database_url(self) -> str:
        return f"sqlite+aiosqlite:///{self.db_path}"

    @property
    def state_dir(self) -> Path:
        """The demo's JWT secret lives next to its database, apart from the service's."""
        return self.db_path.parent / ".crmsync-demo"

    @property
    def api_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"
