"""Contact use cases: CRUD, bulk upsert, curation status, and CRM selection.

Each public method is one short transaction (or, for an action over a filter, one per range of
contacts). On PostgreSQL a transaction aborted to break a deadlock or a serialization conflict
is run again (`writes.retry_conflicts`), so a client never gets a 500 for it; the writes take
their rows in one global order, so such conflicts come only from the worker's own writes. A
write that changed many rows refreshes the planner's statistics before answering
(`writes.Statistics`). Editing a contact's synced fields re-queues it, in
that same transaction, for every CRM where it was Complete (`CRMSYNC_RESYNC_ON_CHANGE`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import ColumnElement, RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from crmsync import counts, db, writes
from crmsync.clock import Clock, utcnow
from crmsync.contacts import cursors
from crmsync.contacts import repository as repo
from crmsync.contacts.presenter import present, present_many
from crmsync.contacts.schemas import (
    BulkRejected,
    BulkResponse,
    ContactCreate,
    ContactFilters,
    ContactUpdate,
    CrmSelectionResponse,
    FilteredRequest,
    StatusUpdateResponse,
    unstorable,
)
from crmsync.contacts.upsert import Upserted, new_row, synced_fields_changed, upsert_by_email
from crmsync.enums import CRM_NAMES, Crm, CurationStatus, SyncStatus
from crmsync.errors import BadRequest, Conflict, NotFound, Unprocessable
from crmsync.settings import Settings
from crmsync.sync import events, selection, wakeup

ACTIONS = ("select", "unselect")
# Contacts per transaction of a filtered action, and how many such transactions run at once on
# PostgreSQL (see `ContactService._in_chunks`).
CHUNK = 10_000
PARALLEL_RANGES = 2

T = TypeVar("T")


async def _at_most(limit: int, jobs: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run `jobs`, at most `limit` at a time; their results, in order. The first failure
    cancels the jobs still running or waiting and is raised as it is (not as a group), so
    that the API answers it as it would any other (a statement timeout as 503)."""
    slots = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with slots:
            return await job()

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(job)) for job in jobs]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


def _total_from_page(offset: int, limit: int, got: int) -> int | None:
    """The match count when the page itself shows it: a short page is the last one.

    A rare substring is counted by the same index scan that found the page (14 ms each over a
    million contacts), so not counting again halves such a request. None: count it.
    """
    if 0 < got < limit or (got == 0 and offset == 0):
        return offset + got
    return None


def parse_crms(names: Iterable[str]) -> list[Crm]:
    """Validate CRM names (400 on unknown ones); duplicates are dropped, order kept."""
    cleaned = [name.strip().lower() for name in names]
    invalid = sorted({name for name in cleaned if name not in CRM_NAMES})
    if invalid:
        raise BadRequest(f"Invalid CRM names: {invalid}. Valid: {list(CRM_NAMES)}")
    return [Crm(name) for name in dict.fromkeys(cleaned)]


def parse_action(action: str) -> str:
    if action not in ACTIONS:
        raise BadRequest(f"Invalid action {action!r}: use 'select' or 'unselect'")
    return action


def require_filter(request: FilteredRequest) -> list[ColumnElement[bool]]:
    """The WHERE terms of a filtered bulk action; no filter at all needs an explicit `all`."""
    conds = repo.filter_conditions(request)
    if not conds and not request.all:
        raise BadRequest(
            'No filter given: add at least one filter, or send "all": true to act on every contact'
        )
    return conds


@dataclass(frozen=True, slots=True)
class Browsed:
    items: list[dict[str, Any]]
    total: int
    exact: bool  # False: more than `total` contacts match


@dataclass
class ContactService:
    engine: AsyncEngine
    settings: Settings
    clock: Clock = utcnow
    # Called after a selection commits, to wake this process's idle workers at once.
    on_queued: Callable[[Sequence[Crm]], None] | None = None
    read_engine: AsyncEngine = field(init=False)
    statistics: writes.Statistics = field(init=False)
    # Substring counts of this process, reused until the contacts change (PostgreSQL).
    kept_counts: counts.ContactCounts = field(init=False, default_factory=counts.ContactCounts)

    def __post_init__(self) -> None:
        self.read_engine = db.read_only(self.engine)
        self.statistics = writes.Statistics(self.engine)

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, contact_id: uuid.UUID) -> dict[str, Any]:
        async with self.read_engine.connect() as conn:
            row = await repo.get(conn, contact_id)
            if row is None:
                raise NotFound(f"Contact {contact_id} not found")
            return present(row, await repo.states_for(conn, [contact_id]))

    async def page(
        self, filters: ContactFilters, limit: int, offset: int, after: str | None = None
    ) -> tuple[list[dict[str, Any]], int, str | None]:
        """A page of contacts, the number matching in all, and the cursor of the next page
        (None after the last one): pass it as `after` to go on past any offset."""
        cursor = cursors.decode(after) if after is not None else None
        async with self.read_engine.connect() as conn:
            total = await self._count_first(conn, filters)
            rows = await self._rows(conn, filters, limit, offset, cursor, total)
            if total is None and cursor is None:
                total = _total_from_page(offset, limit, len(rows))
            if total is None:
                total = await repo.count_filtered(conn, filters, self.kept_counts)
            states = await repo.states_for(conn, [row["id"] for row in rows])
        following = cursors.encode(rows[-1]) if len(rows) == limit else None
        return present_many(rows, states), total, following

    async def browse(
        self, filters: ContactFilters, limit: int, offset: int, count_cap: int
    ) -> Browsed:
        """A page as `page` reads it, with a total that is exact unless knowing it would mean
        visiting more than `count_cap` matches (`repo.count_bounded`): for the dashboard."""
        async with self.read_engine.connect() as conn:
            total = await self._count_first(conn, filters)
            rows = await self._rows(conn, filters, limit, offset, total=total)
            if total is None:
                total = _total_from_page(offset, limit, len(rows))
            exact = True
            if total is None:
                total, exact = await repo.count_bounded(conn, filters, self.kept_counts, count_cap)
            states = await repo.states_for(conn, [row["id"] for row in rows])
        return Browsed(present_many(rows, states), total, exact)

    async def _rows(
        self,
        conn: AsyncConnection,
        filters: ContactFilters,
        limit: int,
        offset: int,
        cursor: repo.Cursor | None = None,
        total: int | None = None,
    ) -> Sequence[RowMapping]:
        """The page; `total`, when known, is the number of matches, which bounds the walk."""
        if total is not None:
            if total == 0 or (cursor is None and total <= offset):
                return []
            if cursor is None:
                # The page ends at the last match: the walk stops there, not at the table's end.
                limit = min(limit, total - offset)
        single = repo.single_crm_status(filters)
        if single is not None and single[1] is not SyncStatus.New:
            # One CRM status: its state rows hold the page in list order (one index).
            return await repo.list_page_by_state(conn, *single, limit, offset, cursor)
        return await repo.list_page(conn, repo.filter_conditions(filters), limit, offset, cursor)

    async def _count_first(self, conn: AsyncConnection, filters: ContactFilters) -> int | None:
        """The match count before the page, where it bounds the page's walk; else None.

        A CRM status of New alone has no index of its own: its page walks the contacts in list
        order and leaves out each one that has a state row in another status, so when few are
        New (a selection of everything) it walks the whole table to fill a page it never fills
        (SQLite, 50,000 contacts all selected: most of a 33 ms request). Its count is a count of
        contacts less one of state rows (`counts.with_status`), the X-Total-Count the full page
        needs anyway, and with it a page past the last match is not walked at all and one that
        ends early stops at its last match. SQLite only: there the reads of a request share one
        snapshot (a deferred transaction), so the count is exactly what the walk will find;
        PostgreSQL's reads are separate snapshots and its planner answers New by an anti-join.
        """
        single = repo.single_crm_status(filters)
        if single is None or single[1] is not SyncStatus.New or conn.dialect.name != "sqlite":
            return None
        return await repo.count_filtered(conn, filters, self.kept_counts)

    async def count(self, filters: ContactFilters) -> int:
        """The number of contacts matching `filters` (as the list's X-Total-Count)."""
        async with self.read_engine.connect() as conn:
            return await repo.count_filtered(conn, filters, self.kept_counts)

    async def sync_statuses(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, dict[str, str]]:
        """Each contact's sync status per CRM (New where it has no state row); unknown ids are
        left out."""
        async with self.read_engine.connect() as conn:
            found = await repo.existing_ids(conn, ids)
            states = await repo.states_for(conn, list(found))
        statuses = {cid: {crm.value: SyncStatus.New.value for crm in Crm} for cid in found}
        for state in states:
            statuses[state["contact_id"]][state["crm"]] = state["sync_status"]
        return statuses

    async def history(self, contact_id: uuid.UUID, limit: int, offset: int) -> list[dict[str, Any]]:
        async with self.read_engine.connect() as conn:
            if await repo.get(conn, contact_id) is None:
                raise NotFound(f"Contact {contact_id} not found")
            rows = await events.history(conn, contact_id, limit, offset)
        return [dict(row) for row in rows]

    # -- single contact ------------------------------------------------------------------------

    async def create(self, body: ContactCreate) -> dict[str, Any]:
        now = self.clock()
        crm_changes = body.crm_statuses()

        async def write() -> tuple[RowMapping, Sequence[RowMapping]]:
            async with self.engine.begin() as conn:
                await self._ensure_email_free(conn, body.email)
                row = await repo.insert(conn, new_row(body, now))
                await self._apply_crm_statuses(conn, crm_changes, repo.by_ids([row["id"]]))
                states = await repo.states_for(conn, [row["id"]]) if crm_changes else ()
            return row, states

        row, states = await writes.retry_conflicts(write, "create contact")
        self._wake(_queueing(crm_changes))
        return present(row, states)

    async def update(self, contact_id: uuid.UUID, body: ContactUpdate) -> dict[str, Any]:
        sent = body.model_dump(mode="json", exclude_unset=True)
        crm_changes = {
            crm: SyncStatus(sent.pop(f"{crm.value}_sync_status"))
            for crm in Crm
            if sent.get(f"{crm.value}_sync_status") is not None
        }
        for crm in Crm:
            sent.pop(f"{crm.value}_sync_status", None)
        for required in ("email", "contact_curation_status"):
            if required in sent and sent[required] is None:
                raise Unprocessable(f"{required} cannot be null")
        values = {key: getattr(body, key) for key in sent}
        for key in ("email_type", "contact_curation_status", "contact_processing_status"):
            if values.get(key) is not None:
                values[key] = values[key].value
        now = self.clock()

        async def write() -> tuple[RowMapping, Sequence[RowMapping]]:
            async with self.engine.begin() as conn:
                before = await repo.get(conn, contact_id)
                if before is None:
                    raise NotFound(f"Contact {contact_id} not found")
                if "email" in values and values["email"].lower() != before["email"].lower():
                    await self._ensure_email_free(conn, values["email"])
                row = await repo.update_one(conn, contact_id, {**values, "updated_at": now})
                assert row is not None
                if self.settings.resync_on_change and synced_fields_changed(before, values):
                    await selection.requeue_after_edit(conn, [contact_id], now)
                await self._apply_crm_statuses(conn, crm_changes, repo.by_ids([contact_id]))
                states = await repo.states_for(conn, [contact_id])
            return row, states

        row, states = await writes.retry_conflicts(write, "edit contact")
        self._wake(_queueing(crm_changes))
        return present(row, states)

    async def delete(self, contact_id: uuid.UUID) -> None:
        async def write() -> None:
            async with self.engine.begin() as conn:
                if not await repo.delete_one(conn, contact_id):
                    raise NotFound(f"Contact {contact_id} not found")

        await writes.retry_conflicts(write, "delete contact")

    async def _ensure_email_free(self, conn: AsyncConnection, email: str) -> None:
        existing = await repo.find_by_email(conn, email)
        if existing is not None:
            raise Conflict(
                f"A contact with email {email!r} already exists (id {existing['id']})",
                existing_id=str(existing["id"]),
            )

    async def _apply_crm_statuses(
        self,
        conn: AsyncConnection,
        changes: dict[Crm, SyncStatus],
        where: ColumnElement[bool],
    ) -> None:
        now = self.clock()
        for crm, status in sorted(changes.items()):
            if status in (SyncStatus.Selected, SyncStatus.Queued):
                await selection.select_contacts(conn, crm, where, now)
            elif status is SyncStatus.New:
                await selection.unselect_contacts(conn, crm, where, now)
            elif status is SyncStatus.Skipped:
                await selection.skip_contacts(conn, crm, where, now)
        await wakeup.announce(conn, changes)

    # -- many contacts -------------------------------------------------------------------------

    async def bulk_upsert(self, raw_rows: Sequence[Any]) -> BulkResponse:
        """Upsert by email. Valid rows are written even when others are rejected.

        A row updates the fields it carries (an explicit null included) and leaves the rest; its
        `{crm}_sync_status`, if any, then goes through the state machine as in PUT.
        """
        rejected: list[BulkRejected] = []
        valid: dict[str, tuple[int, ContactCreate]] = {}
        for index, raw in enumerate(raw_rows):
            email = raw.get("email") if isinstance(raw, dict) else None
            # Echoed back only when it is text the answer can carry (no lone surrogate).
            shown = email if isinstance(email, str) and unstorable(email) is None else None
            try:
                contact = ContactCreate.model_validate(raw)
            except ValidationError as exc:
                rejected.append(BulkRejected(index=index, email=shown, reason=_reason(exc)))
                continue
            key = contact.email.lower()
            if key in valid:
                first = valid[key][0]
                reason = f"duplicate email: same as row {first} of this request"
                rejected.append(BulkRejected(index=index, email=shown, reason=reason))
                continue
            valid[key] = (index, contact)

        rows = {key: contact for key, (_, contact) in valid.items()}
        now = self.clock()
        # Rows that set the same CRM to the same status move together, in one statement.
        by_status: dict[tuple[Crm, SyncStatus], list[uuid.UUID]] = {}

        async def write() -> Upserted:
            by_status.clear()
            async with self.engine.begin() as conn:
                done = await upsert_by_email(
                    conn, rows, now, resync_on_change=self.settings.resync_on_change
                )
                for key, contact in rows.items():
                    for crm, status in contact.crm_statuses().items():
                        by_status.setdefault((crm, status), []).append(done.ids[key])
                for (crm, status), ids in sorted(by_status.items()):
                    await self._apply_crm_statuses(conn, {crm: status}, repo.by_ids(ids))
            return done

        done = await writes.retry_conflicts(write, "bulk upsert")
        await self.statistics.wrote(["contacts"], len(done.created) + len(done.changed))
        await self.statistics.wrote(["crm_sync_state"], sum(map(len, by_status.values())))
        self._wake(sorted({crm for crm, status in by_status if status is not SyncStatus.New}))
        return BulkResponse(
            created_count=len(done.created),
            updated_count=len(done.changed) + len(done.unchanged),
            rejected_count=len(rejected),
            rejected=rejected,
        )

    async def set_status(
        self, contact_ids: Sequence[uuid.UUID], status: CurationStatus
    ) -> StatusUpdateResponse:
        if not contact_ids:
            return StatusUpdateResponse(updated_count=0, queued_count=0)
        return await self._set_status(repo.by_ids(contact_ids), status)

    async def set_status_filtered(
        self, request: FilteredRequest, status: CurationStatus
    ) -> StatusUpdateResponse:
        where = repo.where(require_filter(request))
        now = self.clock()

        async def update(conn: AsyncConnection, cond: ColumnElement[bool]) -> tuple[int, int]:
            return await repo.set_curation_status(conn, cond, status, now), 0

        count, _ = await self._in_chunks(where, update)
        return _status_response(count, status)

    async def _set_status(
        self, cond: ColumnElement[bool], status: CurationStatus
    ) -> StatusUpdateResponse:
        async def write() -> int:
            async with self.engine.begin() as conn:
                return await repo.set_curation_status(conn, cond, status, self.clock())

        count = await writes.retry_conflicts(write, "set curation status")
        return _status_response(count, status)

    async def _in_chunks(
        self,
        where: ColumnElement[bool],
        work: Callable[[AsyncConnection, ColumnElement[bool]], Awaitable[tuple[int, int]]],
    ) -> tuple[int, int]:
        """Run `work(conn, cond)` over the contacts matching `where`, as consecutive id ranges
        of at most `CHUNK` contacts (`cond` is `where` within one), each in its own transaction;
        the sums of the pairs of counts `work` returned for the ranges committed.

        An action over every contact that matches a filter ("all": true over a million) runs
        range by range, so that no transaction holds SQLite's write lock (which every other
        writer waits for) or runs a statement for long; the ranges walk the primary key, so the
        whole action reads each contact once, whatever the filter. Each range commits on its
        own: an action stopped half-way has done some of the ranges, and sending it again
        finishes it (every filtered action is idempotent). The first range's transaction finds
        the ends of them all; on PostgreSQL the others then run `PARALLEL_RANGES` at a time, on
        as many connections (disjoint ranges write disjoint rows, so they never wait for each
        other), and SQLite runs them one by one, as it has one writer.
        """
        ends: list[uuid.UUID | None] = []

        async def one_range(index: int) -> tuple[int, int]:
            async with self.engine.begin() as conn:
                if not ends:
                    ends.extend(await repo.range_ends(conn, CHUNK))
                start = ends[index - 1] if index else None
                return await work(conn, repo.in_range(conn, where, start, ends[index]))

        async def run(index: int) -> tuple[int, int]:
            return await writes.retry_conflicts(lambda: one_range(index), "filtered action")

        done = [await run(0)]
        parallel = 1 if db.is_sqlite(self.engine) else PARALLEL_RANGES
        done += await _at_most(parallel, [partial(run, i) for i in range(1, len(ends))])
        return sum(one for one, _ in done), sum(two for _, two in done)

    # -- CRM selection -------------------------------------------------------------------------

    async def select_by_ids(
        self, contact_ids: Sequence[uuid.UUID], crm_names: list[str], action: str, force: bool
    ) -> CrmSelectionResponse:
        crms = parse_crms(crm_names)
        action = parse_action(action)
        if not contact_ids:
            return _empty(crms, action, "No contact IDs provided")
        if not crms:
            return _empty(crms, action, "No CRMs specified")
        return await self._select(repo.by_ids(contact_ids), crms, action, force, by_ids=True)

    async def select_filtered(
        self, request: FilteredRequest, crm_names: list[str], action: str, force: bool
    ) -> CrmSelectionResponse:
        crms = parse_crms(crm_names)
        action = parse_action(action)
        where = repo.where(require_filter(request))
        if not crms:
            return _empty(crms, action, "No CRMs specified")

        async def apply(conn: AsyncConnection, cond: ColumnElement[bool]) -> tuple[int, int]:
            return await self._select_rows(conn, cond, crms, action, force)

        matched, queued = await self._in_chunks(where, apply)
        await self.statistics.wrote(["crm_sync_state"], matched * len(crms))
        if action == "select" and matched:
            self._wake(crms)
        return self._selection_response(crms, action, matched, queued)

    async def _select(
        self,
        where: ColumnElement[bool],
        crms: list[Crm],
        action: str,
        force: bool,
        *,
        by_ids: bool,
    ) -> CrmSelectionResponse:
        async def write() -> tuple[int, int]:
            async with self.engine.begin() as conn:
                matched, queued = await self._select_rows(conn, where, crms, action, force)
                if matched == 0 and by_ids:
                    raise NotFound("No contacts found with provided IDs")
            return matched, queued

        matched, queued = await writes.retry_conflicts(write, f"{action} contacts")
        await self.statistics.wrote(["crm_sync_state"], matched * len(crms))
        if action == "select" and matched:
            self._wake(crms)
        return self._selection_response(crms, action, matched, queued)

    async def _select_rows(
        self,
        conn: AsyncConnection,
        where: ColumnElement[bool],
        crms: list[Crm],
        action: str,
        force: bool,
    ) -> tuple[int, int]:
        """Select or unselect the matching contacts in this transaction: (matched, queued)."""
        now = self.clock()
        matched = await repo.count(conn, [where])
        if matched == 0:
            return 0, 0
        if action != "select":
            await selection.unselect_contacts(conn, crms, where, now)
            return matched, 0
        queued = await selection.select_contacts(conn, crms, where, now, force=force)
        await wakeup.announce(conn, crms)
        return matched, queued

    def _selection_response(
        self, crms: list[Crm], action: str, matched: int, queued: int
    ) -> CrmSelectionResponse:
        return CrmSelectionResponse(
            updated_count=matched,
            queued_count=queued,
            crms=[crm.value for crm in crms],
            action=action,
            message=self._selection_message(action, matched, crms, queued),
        )

    def _selection_message(self, action: str, matched: int, crms: list[Crm], queued: int) -> str:
        if action == "unselect":
            return f"Unselected {matched} contacts for {len(crms)} CRM(s)"
        message = (
            f"Selected {matched} contacts for {len(crms)} CRM(s), {queued} queued for processing"
        )
        idle = [(crm, self.settings.crm(crm).missing()) for crm in crms]
        notes = [f"{crm.value} is not configured ({why})" for crm, why in idle if why]
        if notes and queued:
            message += ". " + "; ".join(notes) + ": its contacts stay Queued until it is configured"
        return message

    def _wake(self, crms: Sequence[Crm]) -> None:
        if self.on_queued is not None and crms:
            self.on_queued(crms)


def _status_response(count: int, status: CurationStatus) -> StatusUpdateResponse:
    queued = count if status is CurationStatus.Queued else 0
    return StatusUpdateResponse(updated_count=count, queued_count=queued)


def _empty(crms: list[Crm], action: str, message: str) -> CrmSelectionResponse:
    return CrmSelectionResponse(
        updated_count=0,
        queued_count=0,
        crms=[crm.value for crm in crms],
        action=action,
        message=message,
    )


def _queueing(changes: dict[Crm, SyncStatus]) -> list[Crm]:
    """The CRMs these status changes give new work (workers to wake)."""
    return [crm for crm, status in changes.items() if status is not SyncStatus.New]


def _reason(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "row"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
