"""`crmsync sandbox --write-env FILE`: put the settings that point crmsync at the sandbox into a
`.env` file, instead of copying them by hand.

A new file gets the settings alone. An existing file keeps every other line: settings it lacks
are appended, and settings it already has with the same value are left alone. A setting it has
with another value (a real API key, say) is replaced only with `force`; without it nothing is
written, so a real configuration is never overwritten by surprise. The file is replaced in one
step (written beside it, then renamed), so it is never left half-updated.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values, set_key

HEADER = "# Settings for the crmsync sandbox (written by `crmsync sandbox --write-env`).\n"


class EnvConflict(Exception):
    """The file sets some of these settings to other values (names only: values may be secret)."""

    def __init__(self, path: Path, keys: list[str]) -> None:
        self.path = path
        self.keys = keys
        what = "another value" if len(keys) == 1 else "other values"
        super().__init__(
            f"{path} already sets {', '.join(keys)} to {what}; nothing was written. "
            "Pass --force to replace them with the sandbox's, or write another file "
            "(e.g. --write-env .env.sandbox)"
        )


@dataclass
class EnvWritten:
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def describe(self, path: Path) -> str:
        parts = [f"{len(self.added)} added"]
        if self.replaced:
            parts.append(f"{len(self.replaced)} replaced ({', '.join(self.replaced)})")
        if self.unchanged:
            parts.append(f"{len(self.unchanged)} already there")
        return f"sandbox settings written to {path}: " + ", ".join(parts)


def write_env(path: Path, values: dict[str, str], *, force: bool = False) -> EnvWritten:
    """Merge `values` into the .env file at `path` (see the module docstring)."""
    existing = dotenv_values(path) if path.exists() else {}
    different = [key for key, value in values.items() if key in existing and existing[key] != value]
    if different and not force:
        raise EnvConflict(path, different)
    result = EnvWritten()
    todo = {}
    for key, value in values.items():
        if key not in existing:
            result.added.append(key)
        elif existing[key] != value:
            result.replaced.append(key)
        else:
            result.unchanged.append(key)
            continue
        todo[key] = value
    if not todo:
        return result
    draft = path.with_name(f".{path.name}.crmsync-tmp")
    if path.exists():
        shutil.copy2(path, draft)  # keeps the file's mode
    else:
        # Owner-only from the start: this file is where real credentials go later.
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(HEADER)
    try:
        for key, value in todo.items():
            set_key(draft, key, value, quote_mode=_quoting(value))
        os.replace(draft, path)
    finally:
        draft.unlink(missing_ok=True)
    return result


def _quoting(value: str) -> str:
    """Quote only what needs it, so that the file reads like the lines the sandbox prints."""
    plain = value and not any(c.isspace() or c in "#'\"\\" for c in value)
    return "never" if plain else "always"
