"""Contact files as text, streamed: encodings, the CSV delimiter, records with their line numbers.

Encodings: a byte-order mark says UTF-8, UTF-16 or UTF-32. Without one the file is read as
UTF-8, and any byte sequence that is not UTF-8 is read as Windows-1252 (what Excel on Windows
writes as "CSV"): a real Windows-1252 export is read correctly (its accented letters are never
valid UTF-8), and a UTF-8 file with one stray byte loses nothing else. A file is never held in
memory: the decoder sees 64 KiB at a time.
"""

from __future__ import annotations

import codecs
import contextlib
import contextvars
import csv
import io
import itertools
from collections.abc import Iterator
from typing import IO, Any

from crmsync.contacts.columns import ImportFileError

BLOCK = 64 * 1024
DELIMITERS = (",", ";", "\t")
_BOMS = (  # longest first: UTF-32-LE's mark starts with UTF-16-LE's
    (codecs.BOM_UTF32_LE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF8, "utf-8-sig", "UTF-8 with BOM"),
    (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
    (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"),
)

# Bytes the decoder read as Windows-1252, counted for the file being read: the error handler is
# process-wide, so each read of a file says where to count (`TextFile.counting`).
_FALLBACKS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "crmsync_cp1252_fallbacks", default=None
)


def _cp1252(error: UnicodeError) -> tuple[str, int]:
    assert isinstance(error, UnicodeDecodeError)
    bad = error.object[error.start : error.end]
    # The five bytes Windows-1252 leaves undefined become the same code point, as browsers do.
    text = "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in bad)
    counter = _FALLBACKS.get()
    if counter is not None:
        counter[0] += len(bad)
    return text, error.end


codecs.register_error("crmsync-cp1252", _cp1252)


class _CountingReader(io.RawIOBase):
    """The caller's binary stream (file, upload, stdin) with a prefix put back and bytes counted."""

    def __init__(self, stream: IO[bytes], prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._prefix:
            data, self._prefix = self._prefix[: len(view)], self._prefix[len(view) :]
        else:
            data = self._stream.read(len(view)) or b""
        view[: len(data)] = data
        self.bytes_read += len(data)
        return len(data)


class TextFile:
    """A binary stream decoded as text (newlines untranslated, as the csv module wants)."""

    def __init__(self, stream: IO[bytes]) -> None:
        head = stream.read(4) or b""
        if head.startswith(b"PK\x03\x04"):
            raise ImportFileError(
                "this is a zip file, such as an Excel workbook: save it as CSV UTF-8 first"
            )
        self.encoding = "UTF-8"
        codec, errors = "utf-8", "crmsync-cp1252"
        for bom, name, label in _BOMS:
            if head.startswith(bom):
                codec, errors, self.encoding = name, "strict", label
                break
        self._raw = _CountingReader(stream, head)
        self._fallbacks = [0]
        buffered = io.BufferedReader(self._raw, BLOCK)
        self.text = io.TextIOWrapper(buffered, encoding=codec, errors=errors, newline="")

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        """Count this file's Windows-1252 bytes while reading from it in this block."""
        token = _FALLBACKS.set(self._fallbacks)
        try:
            yield
        finally:
            _FALLBACKS.reset(token)

    @property
    def bytes_read(self) -> int:
        return self._raw.bytes_read

    def describe_encoding(self) -> str:
        if self._fallbacks[0]:
            return "Windows-1252"
        return self.encoding


def first_line(text: IO[str]) -> tuple[str, int]:
    """The first line that is not blank, and its line number; ImportFileError for an empty file."""
    for number in itertools.count(1):
        try:
            line = text.readline()
        except UnicodeDecodeError as exc:
            raise ImportFileError(f"cannot decode the file: {exc}") from None
        if not line:
            raise ImportFileError("the file is empty: expected a header row, e.g. email,name")
        if line.strip():
            return line, number
    raise AssertionError("unreachable")


def sniff_delimiter(header: str) -> str:
    """The candidate that splits the header into the most columns (ties: comma, then ; then tab)."""
    best, widest = ",", 1
    for candidate in DELIMITERS:
        width = len(next(csv.reader([header], delimiter=candidate), []))
        if width > widest:
            best, widest = candidate, width
    return best


# What a csv module error usually means in a contact file.
_CSV_HINTS = {"field limit": "an unclosed quote?"}


class CsvRecords:
    """The header and then each non-blank row of a CSV file, with the line the row starts on."""

    def __init__(self, text: IO[str], delimiter: str | None) -> None:
        header, number = first_line(text)
        if "\x00" in header:
            raise ImportFileError(
                "the header holds NUL characters: UTF-16 without a byte-order mark? "
                "Save the file as CSV UTF-8"
            )
        self.delimiter = delimiter or sniff_delimiter(header)
        self._reader = csv.reader(itertools.chain([header], text), delimiter=self.delimiter)
        self._skipped = number - 1  # blank lines before the header
        self.headers: list[str] = self._next() or []

    def _next(self) -> list[str] | None:
        try:
            return next(self._reader, None)
        except csv.Error as exc:
            line = self._skipped + self._reader.line_num
            hints = {
                "field limit": "an unclosed quote?",
                "NUL": "UTF-16 without a byte-order mark?",
            }
            hint = next((f" ({h})" for key, h in hints.items() if key in str(exc)), "")
            raise ImportFileError(f"line {line}: {exc}{hint}") from None
        except UnicodeDecodeError as exc:
            raise ImportFileError(f"cannot decode the file: {exc}") from None

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        while True:
            start = self._skipped + self._reader.line_num + 1
            cells = self._next()
            if cells is None:
                return
            # Blank lines, and rows of delimiters only (spreadsheets' trailing rows), are no rows.
            if any(cell.strip() for cell in cells):
                yield start, cells


def jsonl_lines(text: IO[str]) -> Iterator[tuple[int, str]]:
    """Each non-blank line of a JSON Lines file, with its number."""
    try:
        for number, line in enumerate(text, start=1):
            if line.strip():
                yield number, line
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"cannot decode the file: {exc}") from None
