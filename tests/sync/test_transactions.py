"""Every write transaction the sync core sends to SQLite's writer process is a `db.Transaction`
that survives pickling: a module-level function and plain arguments, never a closure."""

from __future__ import annotations

import datetime as dt
import pickle
import uuid

import pytest
from sqlalchemy.engine import Connection

from crmsync.db import Transaction
from crmsync.enums import Crm
from crmsync.sync import claim, events, lease, record
from crmsync.sync.state import Outcome, RowUpdate

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
TIMING = events.Timing("w1", NOW, 12)
UPDATES = [
    RowUpdate(1, uuid.uuid4(), Outcome.ok, 0, None, external_id="e1", synced_hash="h"),
    RowUpdate(2, uuid.uuid4(), Outcome.retry, 1, "later", next_attempt_at=NOW),
]


def _bodies(dialect: str) -> list[Transaction[object]]:
    claim_work = claim.claim_work(dialect, Crm.hubspot, 100, "w1", "tok", NOW, NOW)
    careful = record._record_work(dialect, Crm.hubspot, "tok", UPDATES, NOW, TIMING, False)
    return [
        claim_work,
        careful,
        Transaction(record._record_and_claim, careful, claim_work),
        Transaction(lease._renew_rows, ["hubspot"], ["tok"], NOW),
        Transaction(lease._release_rows, Crm.hubspot, "tok", NOW, TIMING),
    ]


@pytest.mark.parametrize("dialect", sorted(claim.DIALECTS))
def test_the_sync_transactions_pickle_as_themselves(dialect: str) -> None:
    for body in _bodies(dialect):
        again = pickle.loads(pickle.dumps(body, pickle.HIGHEST_PROTOCOL))
        assert _same(again, body)


def _same(a: object, b: object) -> bool:
    if isinstance(a, Transaction) and isinstance(b, Transaction):
        return (
            type(a) is type(b)
            and a.func is b.func
            and len(a.args) == len(b.args)
            and all(_same(x, y) for x, y in zip(a.args, b.args, strict=True))
        )
    return a == b


def _nested() -> object:
    def work(conn: Connection) -> None:
        return None

    return work


def test_a_closure_or_lambda_is_refused_when_the_transaction_is_built() -> None:
    with pytest.raises(TypeError, match="module-level function"):
        Transaction(lambda conn: None)
    with pytest.raises(TypeError, match="module-level function"):
        Transaction(_nested())  # type: ignore[arg-type]
