"""The queue's surface: the steps of a row's life, each in a module of its own.

- `claim.py`: take due rows under a new lease (expired leases first);
- `record.py`: write outcomes behind the lease (fencing) and their history;
- `lease.py`: renew a lease in flight, release it on shutdown; how expiry works.

The state machine those steps move a row through is in `state.py`'s docstring. Every write is a
short transaction with no network call inside it: claim and commit, push, record and commit.
"""

from __future__ import annotations

from crmsync.sync.claim import claim
from crmsync.sync.events import NOT_APPLIED, Timing
from crmsync.sync.lease import release as release_lease
from crmsync.sync.lease import renew
from crmsync.sync.record import NextClaim, Recorded, record, record_then_claim
from crmsync.sync.state import Claimed, RowUpdate

__all__ = [
    "NOT_APPLIED",
    "Claimed",
    "NextClaim",
    "Recorded",
    "RowUpdate",
    "Timing",
    "claim",
    "record",
    "record_then_claim",
    "release_lease",
    "renew",
]
