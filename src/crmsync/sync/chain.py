"""A lane's chain: record one batch's outcome and claim the next, in one transaction.

A busy sync pays per transaction and per statement: on SQLite a hand-off to the writer, BEGIN
IMMEDIATE, COMMIT; on PostgreSQL a round trip per statement (BEGIN, each outcome kind's UPDATE,
the history INSERT, the claim, COMMIT), each costing the worker and the server more than most
of the statements' own work. A lane whose batch came full therefore writes its outcome and
claims its next batch together (`record_then_claim`), and each stays what it is alone:

- the outcome is written the optimistic way (`record.py`): the guarded UPDATE locks each row it
  changes until the commit, so when it changed every row, every row was still ours; if it finds
  a lease lost, the transaction rolls back and the two run apart, the careful way;
- the claim is `claim.py`'s, after the outcome.

On PostgreSQL the outcome UPDATEs, the history INSERT and the claim are one statement
(`_PgChain`): the writes as data-modifying CTEs, the claim's UPDATE last, answering the claimed
rows and how many outcome rows changed. All of it sees one snapshot, which changes nothing here:
the rows being recorded are Processing under this lane's token, the claim takes waiting rows and
expired leases of other tokens (`claim.py` leaves the recording token's rows alone).
"""

from __future__ import annotations

import datetime as dt
import functools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from sqlalchemy import func, literal_column, select, true
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import writer_process
from crmsync.db import Transaction
from crmsync.enums import Crm
from crmsync.sqlutil import ArrayRows, Compiled
from crmsync.sync import claim as claim_step
from crmsync.sync import events
from crmsync.sync.claim import RawClaim, claim_work, from_postgresql
from crmsync.sync.events import Timing
from crmsync.sync.record import (
    ARRAY_COLUMNS,
    OUTCOME_VALUES,
    Recorded,
    _LeaseLost,
    _record_and_claim,
    _record_work,
    guarded,
    record,
)
from crmsync.sync.state import Claimed, RowUpdate
from crmsync.tables import crm_sync_state

__all__ = ["NextClaim", "record_then_claim"]

s = crm_sync_state.c


@dataclass(frozen=True, slots=True)
class NextClaim:
    """What `record_then_claim` claims after recording: `claim`'s arguments but the engine."""

    crm: Crm
    limit: int
    owner: str
    token: str
    now: dt.datetime
    lease_until: dt.datetime


async def record_then_claim(
    engine: AsyncEngine,
    crm: Crm,
    token: str,
    updates: Sequence[RowUpdate],
    now: dt.datetime,
    timing: Timing,
    then: NextClaim,
) -> tuple[Recorded, list[Claimed]]:
    """`record`, then `claim` the next batch, both in one transaction (see the docstring)."""
    name = engine.dialect.name
    claim = claim_work(
        name, then.crm, then.limit, then.owner, then.token, then.now, then.lease_until
    )
    if updates:
        if name == "postgresql" and then.now == now:
            both = Transaction(_pg_chain, crm, token, list(updates), now, timing, then)
        else:
            optimistic = _record_work(name, crm, token, updates, now, timing, True)
            both = Transaction(_record_and_claim, optimistic, claim)
        try:
            recorded, raw = await writer_process.write(engine, both)
            return recorded, raw.claimed()
        except _LeaseLost:
            # The optimistic write already failed: go to the careful one, not through it again.
            careful = _record_work(name, crm, token, updates, now, timing, False)
            recorded = await writer_process.write(engine, careful)
    else:
        recorded = await record(engine, crm, token, updates, now, timing)
    return recorded, (await writer_process.write(engine, claim)).claimed()


Values = Callable[[Any], dict[str, Any]]
# The outcome statements' row-values functions, in a fixed order (kinds sharing one share it).
_KINDS: tuple[Values, ...] = tuple(sorted(set(OUTCOME_VALUES.values()), key=attrgetter("__name__")))
_CLAIM_KEYS = ("claim_crm", "owner", "token", "until", "limit")


class _PgChain:
    """One statement per set of outcome kinds present in a batch, built and compiled once."""

    def __init__(self, kinds: tuple[Values, ...]) -> None:
        self.arrays = [ArrayRows(ARRAY_COLUMNS, prefix=f"_k{i}_") for i in range(len(kinds))]
        done = [
            guarded(kind, arrays).returning(s.id).cte(f"done_{i}")
            for i, (kind, arrays) in enumerate(zip(kinds, self.arrays, strict=True))
        ]
        history = events.pg_insert().cte("history")
        claimed = claim_step.pg_claim(but_token=True).cte("claimed")
        counts = [select(func.count()).select_from(d).scalar_subquery() for d in done]
        changed = functools.reduce(operator.add, counts)
        # One row even when nothing was claimed: it carries the count.
        one = select(literal_column("1").label("one")).subquery("one")
        stmt = (
            select(changed.label("changed"), *claimed.c)
            .select_from(one.outerjoin(claimed, true()))
            .add_cte(*done, history)
        )
        self.keys = (
            *(p for arrays in self.arrays for p in arrays.params),
            *events.PG_PARAMS,
            "_token",
            "now",
            *_CLAIM_KEYS,
        )
        self.compiled = Compiled(stmt, self.keys)


_CHAINS: dict[tuple[Values, ...], _PgChain] = {}


def _pg_chain(
    crm: Crm,
    token: str,
    updates: list[RowUpdate],
    now: dt.datetime,
    timing: Timing,
    then: NextClaim,
    conn: Connection,
) -> tuple[Recorded, RawClaim]:
    """Record `updates` the optimistic way and claim `then`, in one statement (PostgreSQL)."""
    groups: dict[Values, list[Any]] = {}
    # In the primary key's order, as the writes of a person's take their rows (fewer deadlocks).
    for u in sorted(updates, key=attrgetter("state_id")):
        groups.setdefault(OUTCOME_VALUES[u.outcome], []).append(
            (u.state_id, u.message, u.attempts, u.next_attempt_at, u.external_id,
             u.synced_hash, u.synced_email)
        )  # fmt: skip
    kinds = tuple(kind for kind in _KINDS if kind in groups)
    chain = _CHAINS.get(kinds) or _CHAINS.setdefault(kinds, _PgChain(kinds))
    columns = [list(column) for kind in kinds for column in zip(*groups[kind], strict=True)]
    history = events.pg_arrays(crm, updates, {u.state_id for u in updates}, now, timing)
    claim = (then.crm.value, then.owner, then.token, then.lease_until, then.limit)
    rows = chain.compiled.fetchall(conn, (*columns, *history, token, now, *claim))
    if rows[0][0] != len(updates):
        raise _LeaseLost
    claimed = [row[1:] for row in rows if row[1] is not None]
    return Recorded(len(updates), []), RawClaim(claimed, from_postgresql)
