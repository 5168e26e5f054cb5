"""Operations use cases: health, status summary, failed report, retry, reset, pause and resume.

The HTTP routes, `/metrics` and the operator CLI all call this; each method is one short
transaction (writes) or one read connection (views).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import db, writes
from crmsync.clock import Clock, utcnow
from crmsync.contacts.service import parse_crms
from crmsync.enums import Crm, SyncStatus
from crmsync.errors import BadRequest, Conflict
from crmsync.ops import health as rules
from crmsync.ops import overview as dashboard_view
from crmsync.ops import repository as repo
from crmsync.ops import snapshot
from crmsync.ops.schemas import FailedContact, Health, Summary
from crmsync.settings import Settings
from crmsync.sync import control, heartbeat, selection, wakeup

log = logging.getLogger(__name__)

RESET_TARGETS = (SyncStatus.New, SyncStatus.Selected)


class Refused(Conflict):
    """A valid request the service declines for safety (the CLI exits 1 on it)."""


@dataclass(frozen=True, slots=True)
class Resumed:
    was_manual: bool
    cleared_pause: str | None  # the timed pause kind cleared (auth or configuration), if any
    released: int  # rows that pause held back, now due


def parse_crm(name: str) -> Crm:
    """One CRM name, validated like the selection routes (400 "Invalid CRM names: ...")."""
    crms = parse_crms([name])
    return crms[0]


def check_reset(from_statuses: Sequence[SyncStatus], to: SyncStatus, force: bool) -> None:
    """Which resets make sense. Bad input raises BadRequest; a risky one without force, Refused."""
    if to not in RESET_TARGETS:
        raise BadRequest(
            f"cannot reset to {to.value}: use New (forget the selection) or Selected (queue "
            "again); the sync engine sets Queued, Processing, Complete and Error itself"
        )
    if not from_statuses:
        raise BadRequest("give at least one status to reset from")
    if SyncStatus.New in from_statuses:
        raise BadRequest(
            "rows in New are not queued: to queue contacts, select them "
            "(PUT /api/v3/contacts/crm/select or /crm/select/filtered)"
        )
    if to in from_statuses:
        raise BadRequest(f"--from {to.value} and --to {to.value} are the same status")
    if SyncStatus.Processing in from_statuses and not force:
        raise Refused(
            "rows in Processing are being pushed by a worker right now: their late results "
            "would be discarded, but the vendor may already have the contacts. Pause the CRM "
            "and wait for the batches in flight, or pass --force"
        )


@dataclass
class OpsService:
    engine: AsyncEngine
    settings: Settings
    clock: Clock = utcnow
    # Called after a retry or reset commits, to wake this process's idle workers at once.
    on_queued: Callable[[Sequence[Crm]], None] | None = None
    read_engine: AsyncEngine = field(init=False)

    def __post_init__(self) -> None:
        self.read_engine = db.read_only(self.engine)

    # -- views ---------------------------------------------------------------------------------

    async def snapshot(self, *, with_outcomes: bool = True) -> snapshot.Snapshot:
        async with self.read_engine.connect() as conn:
            return await snapshot.take(
                conn, self.clock(), self.settings.lease_seconds, with_outcomes=with_outcomes
            )

    async def health(self, max_lag_seconds: float = rules.DEFAULT_MAX_LAG_SECONDS) -> Health:
        """Never raises for a database failure: that is what health reports (as down)."""
        return (await self.overview(max_lag_seconds))[0]

    async def overview(
        self, max_lag_seconds: float = rules.DEFAULT_MAX_LAG_SECONDS
    ) -> tuple[Health, Summary | None]:
        """Health and the status summary from one snapshot (no summary if the read failed)."""
        try:
            snap = await self.snapshot()
        except Exception as exc:
            # The type only: the message may hold a URL with a password.
            log.warning("health: the database could not be read (%s)", type(exc).__name__)
            return rules.unreadable(self.clock(), self.settings, max_lag_seconds), None
        return rules.assess(snap, self.settings, max_lag_seconds), summarize(snap)

    async def next_waiting(self) -> dict[str, dt.datetime]:
        """Per CRM, when its first row that is not due yet (a retry, a pause) comes due."""
        async with self.read_engine.connect() as conn:
            return await repo.next_waiting(conn, self.clock())

    async def summary(self) -> Summary:
        snap = await self.snapshot(with_outcomes=False)
        return summarize(snap)

    async def dashboard(self) -> dashboard_view.Overview:
        """The dashboard's overview: per CRM its state, counts and contacts per minute."""
        now = self.clock()
        async with self.read_engine.connect() as conn:
            counts = await repo.status_counts(conn)
            live = await repo.live_workers(
                conn, heartbeat.alive_since(now, self.settings.lease_seconds)
            )
            controls = await control.load(conn)
            minutes = await repo.synced_per_minute(conn, dashboard_view.window_start(now))
        return dashboard_view.build(
            now, self.settings, counts.total_contacts, counts.rows, live, controls, minutes
        )

    async def failed_groups(
        self, per_crm: int, per_group: int
    ) -> tuple[list[repo.ErrorGroup], list[FailedContact]]:
        """Contacts in Error grouped by CRM and message (the largest `per_crm` groups of each
        CRM), and the latest `per_group` contacts of every group."""
        crms = list(Crm)
        async with self.read_engine.connect() as conn:
            groups = await repo.failed_groups(conn, crms, per_crm)
            samples = await repo.failed_samples(conn, groups, per_group)
        return groups, [_failed_contact(row) for row in samples]

    async def failed(
        self, crm_name: str | None, limit: int, offset: int, error: str | None = None
    ) -> tuple[list[FailedContact], int]:
        """A page of contacts in Error (of one CRM, or all), newest failure first, and the
        total; with `error`, only those failed with that message ("": none)."""
        crms = [parse_crm(crm_name)] if crm_name and crm_name.strip() else list(Crm)
        async with self.read_engine.connect() as conn:
            rows = await repo.failed_page(conn, crms, limit, offset, error)
            total = await repo.failed_count(conn, crms, error)
        return [_failed_contact(row) for row in rows], total

    # -- actions -------------------------------------------------------------------------------

    async def retry(
        self, crm_name: str, contact_ids: Sequence[uuid.UUID] | None, all_failed: bool
    ) -> int:
        """Error rows back to Selected (attempts reset): the given contacts' or all of them."""
        crm = parse_crm(crm_name)
        if contact_ids is not None and all_failed:
            raise BadRequest('Send either "contact_ids" or "all_failed": true, not both')
        if contact_ids is None and not all_failed:
            raise BadRequest(
                'Nothing to retry: send "contact_ids" (a list of contact ids) or "all_failed": true'
            )
        now = self.clock()

        async def write() -> int:
            async with self.engine.begin() as conn:
                count = await selection.retry_failed(
                    conn, crm, now, None if all_failed else contact_ids
                )
                if count:
                    await wakeup.announce(conn, [crm])
            return count

        count = await writes.retry_conflicts(write, "retry failed contacts")
        if count:
            self._wake([crm])
        return count

    async def retry_group(self, crm_name: str, error: str) -> int:
        """Error rows of one CRM that failed with this message back to Selected."""
        crm = parse_crm(crm_name)
        now = self.clock()

        async def write() -> int:
            async with self.engine.begin() as conn:
                count = await selection.retry_failed(conn, crm, now, error=error)
                if count:
                    await wakeup.announce(conn, [crm])
            return count

        count = await writes.retry_conflicts(write, "retry a group of failures")
        if count:
            self._wake([crm])
        return count

    async def reset_preview(
        self, crm: Crm, from_statuses: Sequence[SyncStatus]
    ) -> dict[SyncStatus, int]:
        async with self.read_engine.connect() as conn:
            return await repo.count_by_status(conn, crm, from_statuses)

    async def reset(
        self, crm: Crm, from_statuses: Sequence[SyncStatus], to: SyncStatus, *, force: bool
    ) -> int:
        check_reset(from_statuses, to, force)

        async def write() -> int:
            async with self.engine.begin() as conn:
                count = await selection.reset_status(conn, crm, from_statuses, to, self.clock())
                if count and to is SyncStatus.Selected:
                    await wakeup.announce(conn, [crm])
            return count

        count = await writes.retry_conflicts(write, "reset statuses")
        if count and to is SyncStatus.Selected:
            self._wake([crm])
        return count

    async def pause(self, crm: Crm) -> None:
        async with self.engine.begin() as conn:
            await control.set_manual(conn, crm, True, self.clock())

    async def resume(self, crm: Crm) -> Resumed:
        """Lift an operator's pause, and an auth or configuration pause with it.

        The rows such a pause held back are made due now: the operator fixed the cause, so the
        CRM is tried at once, not when the pause would have ended. A rate-limit pause stays:
        the vendor asked for that wait.
        """
        now = self.clock()
        async with self.engine.begin() as conn:
            ctl = (await control.load(conn))[crm]
            cleared, released = None, 0
            blocking = ctl.pause_kind in rules.BLOCKING_PAUSES
            if blocking and ctl.paused_until is not None and ctl.paused_until > now:
                released = await selection.release_held(conn, crm, ctl.paused_until, now)
                await control.clear_timed(conn, crm, now)
                cleared = ctl.pause_kind
            await control.set_manual(conn, crm, False, now)
            await wakeup.announce(conn, [crm])
        self._wake([crm])
        return Resumed(ctl.manual_pause, cleared, released)

    def _wake(self, crms: Sequence[Crm]) -> None:
        if self.on_queued is not None:
            self.on_queued(crms)


def _failed_contact(row: RowMapping) -> FailedContact:
    return FailedContact(
        contact_id=row["contact_id"],
        crm=row["crm"],
        email=row["email"],
        name=row["name"],
        error=row["processing_error"],
        attempts=row["attempts"],
        last_attempt_at=row["last_attempt_at"],
    )


def summarize(snap: snapshot.Snapshot) -> Summary:
    return Summary(
        crms={crm.value: snap.queue(crm) for crm in Crm},
        total_contacts=snap.total_contacts,
    )


def parse_status(name: str) -> SyncStatus:
    """A sync status, case-insensitively (`error` is Error)."""
    by_lower = {status.value.lower(): status for status in SyncStatus}
    found = by_lower.get(name.strip().lower())
    if found is None:
        valid = ", ".join(status.value for status in SyncStatus)
        raise BadRequest(f"unknown status {name!r}; valid: {valid}")
    return found
