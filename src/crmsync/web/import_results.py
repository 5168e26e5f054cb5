"""What an upload on the Import page leaves for its result page: the summary and the rejected rows.

An import's result is kept on the server, for `KEEP` (an hour), in files of a private directory
(mode 0700, under the system's temporary directory by default), and found again by a random id
that only the session which imported the file can use:

- the id (`secrets.token_urlsafe`, 128 bits) is the only thing in a URL (`/import?result=ID`,
  `/import/rejects/ID`): no contact data, no file name;
- the files are named by a hash of the id *and* the session's CSRF token (an HMAC of the session
  cookie under the signing secret), so another session, even with the id, finds nothing (404);
  so does this browser after signing in again, or once the files expire;
- the rejected rows are streamed by the importer straight to their file, never held in memory.

Files on disk (not process memory), so that several server processes on one host share them.
Behind a load balancer spreading one browser over several hosts, the download may land on a host
without them: it then says so, and importing the same file again gives them again (rows already
imported count as unchanged).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

KEEP = 3600.0  # seconds a result stays downloadable
_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")


def default_directory() -> Path:
    return Path(tempfile.gettempdir()) / f"crmsync-imports-{os.getuid()}"


@dataclass(frozen=True, slots=True)
class Result:
    summary: dict[str, Any]
    rejects: Path | None  # None: no row was rejected


class ResultStore:
    def __init__(self, directory: Path | None = None, keep: float = KEEP) -> None:
        self.directory = directory or default_directory()
        self.keep = keep

    def _ready(self) -> Path:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = self.directory.lstat()
        if not self.directory.is_dir() or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise PermissionError(f"{self.directory} must be a directory only this user reads")
        return self.directory

    def _key(self, result_id: str, owner: str) -> str:
        return hashlib.sha256(f"crmsync-import\0{owner}\0{result_id}".encode()).hexdigest()

    @contextlib.contextmanager
    def writing(self, owner: str) -> Iterator[tuple[str, IO[str]]]:
        """A new result id and the text file its rejected rows go to (CSV, as the importer
        writes them); `save` then keeps them under that id. Left unsaved, nothing remains."""
        self.sweep()
        result_id = secrets.token_urlsafe(16)
        fd, name = tempfile.mkstemp(dir=self._ready(), prefix=".upload-", suffix=".csv")
        temporary = Path(name)
        try:
            with open(fd, "w", encoding="utf-8", newline="") as stream:
                yield result_id, stream
            final = self._ready() / f"{self._key(result_id, owner)}.csv"
            if temporary.stat().st_size:
                temporary.replace(final)
        finally:
            temporary.unlink(missing_ok=True)

    def save(self, result_id: str, owner: str, summary: dict[str, Any]) -> None:
        key = self._key(result_id, owner)
        path = self._ready() / f"{key}.json"
        partial = path.with_suffix(".json.part")
        partial.write_text(json.dumps(summary), encoding="utf-8")
        partial.replace(path)

    def find(self, result_id: str, owner: str) -> Result | None:
        """The result this owner saved under this id, unless it expired."""
        if not _ID.match(result_id):
            return None
        key = self._key(result_id, owner)
        summary_path = self.directory / f"{key}.json"
        try:
            if time.time() - summary_path.stat().st_mtime > self.keep:
                return None
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        rejects = self.directory / f"{key}.csv"
        return Result(summary, rejects if rejects.is_file() else None)

    def sweep(self) -> None:
        """Delete the results older than `keep` (and uploads abandoned for as long)."""
        if not self.directory.is_dir():
            return
        cutoff = time.time() - self.keep
        for path in self.directory.iterdir():
            with contextlib.suppress(OSError):
                if path.lstat().st_mtime < cutoff:
                    path.unlink()
