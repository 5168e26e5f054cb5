"""The emails an import has already read, in 16 to 32 bytes each.

Counting duplicates across a whole file needs every email seen so far. A Python set of the
strings costs well over 100 bytes per email (a million-row file would hold more than the rest
of the import together); this keeps a 64-bit hash of each in an open-addressing table of
machine integers instead. The hash is Python's own (SipHash, seeded per process: fine, the table
lives in one process). Two different emails with the same hash (odds about 1 in 10^7 in a file
of a million) only miscount one row as a duplicate: the row is still written.
"""

from __future__ import annotations

from array import array

_BITS = (1 << 64) - 1


class EmailSet:
    def __init__(self, capacity: int = 1024) -> None:
        self._table = array("Q", bytes(8 * capacity))  # 0 marks a free slot
        self._mask = capacity - 1
        self._count = 0
        assert capacity & self._mask == 0, "capacity must be a power of two"

    def __len__(self) -> int:
        return self._count

    def add(self, key: str) -> bool:
        """Add `key`; True if it was not there yet."""
        value = (hash(key) & _BITS) or 1
        if not self._insert(value):
            return False
        self._count += 1
        if self._count * 2 > len(self._table):
            self._grow()
        return True

    def _insert(self, value: int) -> bool:
        table, mask = self._table, self._mask
        slot = value & mask
        while True:
            found = table[slot]
            if found == 0:
                table[slot] = value
                return True
            if found == value:
                return False
            slot = (slot + 1) & mask

    def _grow(self) -> None:
        old = self._table
        self._table = array("Q", bytes(16 * len(old)))
        self._mask = len(self._table) - 1
        for value in old:
            if value:
                self._insert(value)
