"""The `crmsync` command: thin wrappers that read settings and call the library.

Each module registers its commands on the apps in `cli.app`; importing them here builds the
whole command.
"""

from __future__ import annotations

import sys

from crmsync.cli.app import app

# Importing a command module registers its commands; --help lists them in this order.
from crmsync.cli import demo, service, contacts, selection, failures  # isort: skip
from crmsync.cli import vendors, setup, ops, configuration, database  # isort: skip

__all__ = ["app", "main"]
_COMMANDS = (
    demo,
    service,
    contacts,
    selection,
    failures,
    vendors,
    setup,
    ops,
    configuration,
    database,
)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive interrupt
        sys.exit(130)
