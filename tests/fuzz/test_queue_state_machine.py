"""Random sequences of a person's and the workers' actions against the real queue, on a real
database, never reach a state `sync/state.py` forbids and never lose a selection (Hypothesis).

The actions: select (with or without force), unselect and edit through the contact service;
claim and record (ok, retry, fail for good, rate limited) through `sync/queue.py` under leases
of several workers; time passing, so that leases expire and other claims take their rows; the
operator's retry of Error rows. After every step the whole state table is checked:
- each row's status is one the machine knows, its dual `processing_status` mirrors it, a lease
  is held exactly while it is Processing (and it is due again when the lease ends), waiting rows
  are due at some time and settled rows are not, attempts stay within the retry budget;
- every contact a person selected (and did not unselect since) has a live row, and every
  contact unselected is New;
- a contact edited since its last successful push is never Complete: no late result of an
  attempt that pushed older data may settle it (the lease guard);
- a claim with room for every due row leaves no row due: nothing stays stuck after a lease.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select, text

from crmsync import db
from crmsync.connectors.base import Fail, Ok, Retry
from crmsync.contacts.schemas import ContactCreate, ContactUpdate
from crmsync.contacts.service import ContactService
from crmsync.enums import Crm, ProcessingStatus, SyncStatus
from crmsync.settings import Settings
from crmsync.sync import queue, selection, state
from crmsync.sync.backoff import Backoff
from crmsync.tables import crm_sync_state
from tests.conftest import SECRET, TABLES

CRM = Crm.brevo
CONTACTS = 4
MAX_RETRIES = 2
LEASE = dt.timedelta(seconds=60)
POLICY = state.RetryPolicy(MAX_RETRIES, Backoff(5, exponential=False, jitter=0))
# The budget of this test (see `tests/fuzz/conftest.py` for the profiles that scale it).
STATE_MACHINE = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TIMING = queue.Timing("machine", dt.datetime(2025, 1, 1, tzinfo=dt.UTC), 1)

MIRROR = {
    SyncStatus.New.value: None,
    SyncStatus.Skipped.value: None,
    SyncStatus.Selected.value: ProcessingStatus.Queued.value,
    SyncStatus.Queued.value: ProcessingStatus.Queued.value,
    SyncStatus.Processing.value: ProcessingStatus.Processing.value,
    SyncStatus.Complete.value: ProcessingStatus.Complete.value,
    SyncStatus.Error.value: ProcessingStatus.Error.value,
}
WAITING = {SyncStatus.Selected.value, SyncStatus.Queued.value}
LIVE = {*WAITING, SyncStatus.Processing.value, SyncStatus.Complete.value, SyncStatus.Error.value}


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2025, 1, 1, 12, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=dt.UTC)


class QueueMachine(RuleBasedStateMachine):
    # An empty, migrated database for each history (set per database by the test below).
    fresh_database: Callable[[], str]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = Clock()
        url = self.fresh_database()
        self.engine = db.create_engine(url)
        config = Settings(database_url=url, jwt_secret_key=SECRET, _env_file=None)  # type: ignore[call-arg]
        self.service = ContactService(self.engine, config, self.clock)
        self.ids: list[uuid.UUID] = []
        self.selected: dict[uuid.UUID, bool] = {}
        self.version: dict[uuid.UUID, int] = {}  # edits so far
        self.pushed: dict[uuid.UUID, int | None] = {}  # the version last settled as Complete
        # Batches in flight: token -> rows claimed under it, with each contact's version then.
        self.in_flight: dict[str, list[tuple[state.Claimed, int]]] = {}

    def run(self, coro: object) -> object:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    def teardown(self) -> None:
        self.run(self.engine.dispose())
        self.loop.close()

    @initialize()
    def contacts(self) -> None:
        if self.engine.dialect.name == "postgresql":
            self.run(self._truncate())
        for i in range(CONTACTS):
            row = self.run(self.service.create(ContactCreate(email=f"c{i}@example.com")))
            contact_id = row["id"]  # type: ignore[index]
            self.ids.append(contact_id)
            self.selected[contact_id] = False
            self.version[contact_id] = 0
            self.pushed[contact_id] = None

    async def _truncate(self) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))

    def _pick(self, picks: list[int]) -> list[uuid.UUID]:
        return sorted({self.ids[i] for i in picks})

    # -- a person -------------------------------------------------------------------------------

    @rule(
        picks=st.lists(st.integers(0, CONTACTS - 1), min_size=1, max_size=CONTACTS),
        force=st.booleans(),
    )
    def select(self, picks: list[int], force: bool) -> None:
        ids = self._pick(picks)
        self.run(self.service.select_by_ids(ids, [CRM.value], "select", force))
        for contact_id in ids:
            self.selected[contact_id] = True

    @rule(picks=st.lists(st.integers(0, CONTACTS - 1), min_size=1, max_size=CONTACTS))
    def unselect(self, picks: list[int]) -> None:
        ids = self._pick(picks)
        self.run(self.service.select_by_ids(ids, [CRM.value], "unselect", False))
        for contact_id in ids:
            self.selected[contact_id] = False

    @rule(pick=st.integers(0, CONTACTS - 1))
    def edit(self, pick: int) -> None:
        contact_id = self.ids[pick]
        self.version[contact_id] += 1
        name = f"Name {self.version[contact_id]}"
        self.run(self.service.update(contact_id, ContactUpdate(name=name)))

    @rule(picks=st.lists(st.integers(0, CONTACTS - 1), min_size=1, max_size=CONTACTS))
    def operator_retry(self, picks: list[int]) -> None:
        self.run(self._retry(self._pick(picks)))

    async def _retry(self, ids: list[uuid.UUID]) -> None:
        async with self.engine.begin() as conn:
            await selection.retry_failed(conn, CRM, self.clock(), ids)

    # -- workers and time -----------------------------------------------------------------------

    @rule(limit=st.integers(1, CONTACTS))
    def claim(self, limit: int) -> None:
        self._claim(limit)

    def _claim(self, limit: int) -> list[state.Claimed]:
        token = uuid.uuid4().hex
        now = self.clock()
        rows = self.run(queue.claim(self.engine, CRM, limit, "worker", token, now, now + LEASE))
        assert isinstance(rows, list)
        if rows:
            self.in_flight[token] = [(row, self.version[row.contact_id]) for row in rows]
        return rows

    @precondition(lambda self: bool(self.in_flight))
    @rule(data=st.data(), outcome=st.sampled_from(["ok", "retry", "fail", "rate_limited"]))
    def record(self, data: st.DataObject, outcome: str) -> None:
        token = data.draw(st.sampled_from(sorted(self.in_flight)))
        batch = self.in_flight.pop(token)
        now = self.clock()
        updates = []
        for row, _ in batch:
            if outcome == "ok":
                update = state.apply_result(row, Ok("ext"), f"hash-{now}", POLICY, now)
            elif outcome == "retry":
                update = state.apply_result(row, Retry("503"), "", POLICY, now)
            elif outcome == "fail":
                update = state.apply_result(row, Fail("invalid email"), "", POLICY, now)
            else:
                update = state.release(
                    row, state.Outcome.rate_limited, now + dt.timedelta(seconds=30)
                )
            updates.append(update)
        recorded = self.run(queue.record(self.engine, CRM, token, updates, now, TIMING))
        assert isinstance(recorded, queue.Recorded)
        if outcome == "ok":
            lost = set(recorded.lost)
            for row, version in batch:
                if row.state_id not in lost:
                    self.pushed[row.contact_id] = version

    @rule(seconds=st.sampled_from([1, 10, 59, 61, 120, 600]))
    def time_passes(self, seconds: int) -> None:
        self.clock.now += dt.timedelta(seconds=seconds)

    @rule()
    def claim_everything_due(self) -> None:
        """A claim with room for every row: afterwards nothing is due (no row stuck)."""
        self._claim(CONTACTS)
        due = [
            r
            for r in self._rows()
            if r.sync_status in WAITING | {SyncStatus.Processing.value}
            and _aware(r.next_attempt_at) <= self.clock()  # type: ignore[operator]
        ]
        assert not due, due

    # -- what must always hold ------------------------------------------------------------------

    def _rows(self) -> list[object]:
        return self.run(self._read())  # type: ignore[return-value]

    async def _read(self) -> list[object]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(select(crm_sync_state))).all())

    @invariant()
    def nothing_forbidden_and_no_selection_lost(self) -> None:
        if not self.ids:
            return
        rows = {r.contact_id: r for r in self._rows()}  # type: ignore[attr-defined]
        for contact_id in self.ids:
            row = rows.get(contact_id)
            status = row.sync_status if row is not None else SyncStatus.New.value
            if self.selected[contact_id]:
                assert status in LIVE, (contact_id, status)
            else:
                assert status == SyncStatus.New.value, (contact_id, status)
            if row is None:
                continue
            assert row.crm == CRM.value and status in MIRROR
            assert row.processing_status == MIRROR[status], row
            leased = (row.lease_owner, row.lease_token, row.lease_expires_at)
            if status == SyncStatus.Processing.value:
                assert all(value is not None for value in leased), row
                assert _aware(row.next_attempt_at) == _aware(row.lease_expires_at), row
            else:
                assert all(value is None for value in leased), row
            if status in WAITING:
                assert row.next_attempt_at is not None, row
            elif status != SyncStatus.Processing.value:
                assert row.next_attempt_at is None, row
            assert 0 <= row.attempts <= MAX_RETRIES + 1, row
            if status == SyncStatus.Complete.value:
                assert row.attempts == 0 and row.processing_error is None, row
                # Only a push of the contact's latest data may settle it.
                assert self.pushed[contact_id] == self.version[contact_id], (
                    contact_id,
                    self.pushed[contact_id],
                    self.version[contact_id],
                )
            if status == SyncStatus.New.value:
                assert row.processing_error is None and row.next_attempt_at is None, row


def test_random_queue_histories_keep_the_state_machine(
    db_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if db_url.startswith("sqlite"):
        template: Path = request.getfixturevalue("sqlite_template")

        def fresh_sqlite() -> str:
            path = tmp_path / f"{uuid.uuid4().hex}.db"
            shutil.copy(template, path)
            return f"sqlite+aiosqlite:///{path}"

        QueueMachine.fresh_database = staticmethod(fresh_sqlite)  # type: ignore[assignment]
    else:
        # One database; `contacts` empties it at the start of each history.
        QueueMachine.fresh_database = staticmethod(lambda: db_url)  # type: ignore[assignment]
    run_state_machine_as_test(QueueMachine, settings=settings(STATE_MACHINE))
