"""What the dashboard's overview says about each CRM: its state in words, counts and activity.

A CRM is in one of these states, checked in this order:

- `disabled`: not configured here and no live worker serves it; says which setting to set.
- `paused`: an operator paused it (`crmsync pause`), or a worker paused it until a time after a
  rate limit, an auth or configuration failure, an outage, or any other kind a worker records:
  the kind, the reason and when it resumes are shown as stored, so a new kind needs no change.
- `waiting`: contacts wait for it (Selected, Queued or Processing) and no live worker serves it.
- `syncing`: contacts wait for it and a live worker serves it.
- `idle`: nothing waits for it.

Everything here comes from reads that stay cheap at a million contacts: counts per status (kept
totals on PostgreSQL), workers, pauses, and attempts per minute (migration 0009).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from pydantic import SecretStr

from crmsync.enums import Crm, SyncStatus
from crmsync.ops.repository import WorkerRow
from crmsync.settings import Settings
from crmsync.sync.control import Control

WINDOW_MINUTES = 60
CRM_LABELS: dict[Crm, str] = {
    Crm.brevo: "Brevo",
    Crm.hubspot: "HubSpot",
    Crm.mautic: "Mautic",
    Crm.n8n: "n8n",
}
WAITING = (SyncStatus.Selected, SyncStatus.Queued, SyncStatus.Processing)
# The settings that configure each CRM, by the name a person sets (shown only as set or not set:
# several of them are secrets, and the n8n webhook URL is one too).
CREDENTIALS: dict[Crm, tuple[tuple[str, str], ...]] = {
    Crm.brevo: (("BREVO_API_KEY", "api_key"), ("BREVO_LIST_ID", "list_id")),
    Crm.hubspot: (("HUBSPOT_ACCESS_TOKEN", "access_token"),),
    Crm.mautic: (
        ("MAUTIC_BASE_URL", "base_url"),
        ("MAUTIC_USERNAME", "username"),
        ("MAUTIC_PASSWORD", "password"),
        ("MAUTIC_CLIENT_ID", "client_id"),
        ("MAUTIC_CLIENT_SECRET", "client_secret"),
    ),
    Crm.n8n: (("N8N_WEBHOOK_URL", "webhook_url"), ("N8N_WEBHOOK_SECRET", "webhook_secret")),
}


class CrmState(StrEnum):
    syncing = "syncing"
    idle = "idle"
    waiting = "waiting"
    paused = "paused"
    disabled = "disabled"


@dataclass(frozen=True, slots=True)
class Pause:
    kind: str  # "operator" for a manual pause, else the kind a worker stored
    reason: str | None
    until: dt.datetime | None  # None: until an operator resumes it


@dataclass(frozen=True, slots=True)
class CrmCard:
    crm: Crm
    label: str
    state: CrmState
    counts: dict[str, int]  # every sync status, New included
    waiting: int  # Selected + Queued + Processing
    in_flight: int  # Processing
    workers: int  # live workers serving it
    pauses: tuple[Pause, ...]
    missing: str | None  # why it is not configured, naming the setting
    credentials: tuple[tuple[str, bool], ...]  # (setting, set?)
    per_minute: tuple[int, ...]  # contacts synced per minute, oldest first, WINDOW_MINUTES long

    @property
    def synced_last_hour(self) -> int:
        return sum(self.per_minute)


@dataclass(frozen=True, slots=True)
class Overview:
    now: dt.datetime
    total_contacts: int
    workers: int
    cards: tuple[CrmCard, ...]


def window_start(now: dt.datetime) -> dt.datetime:
    """The first minute of the window: the current minute and the WINDOW_MINUTES - 1 before."""
    return now.replace(second=0, microsecond=0) - dt.timedelta(minutes=WINDOW_MINUTES - 1)


def build(
    now: dt.datetime,
    settings: Settings,
    total_contacts: int,
    rows: Mapping[tuple[str, str], int],
    workers: list[WorkerRow],
    controls: Mapping[Crm, Control],
    minutes: Mapping[str, Mapping[dt.datetime, int]],
) -> Overview:
    start = window_start(now)
    cards = tuple(
        _card(
            crm,
            now,
            settings,
            total_contacts,
            rows,
            [w for w in workers if crm.value in w.crms],
            controls.get(crm, Control(crm)),
            _series(minutes.get(crm.value, {}), start),
        )
        for crm in Crm
    )
    return Overview(now, total_contacts, len(workers), cards)


def _series(found: Mapping[dt.datetime, int], start: dt.datetime) -> tuple[int, ...]:
    return tuple(found.get(start + dt.timedelta(minutes=n), 0) for n in range(WINDOW_MINUTES))


def _card(
    crm: Crm,
    now: dt.datetime,
    settings: Settings,
    total_contacts: int,
    rows: Mapping[tuple[str, str], int],
    serving: list[WorkerRow],
    ctl: Control,
    per_minute: tuple[int, ...],
) -> CrmCard:
    counts = {st.value: rows.get((crm.value, st.value), 0) for st in SyncStatus}
    # Contacts with no state row for this CRM were never selected there: they are New.
    counts[SyncStatus.New.value] = total_contacts - sum(
        n for st, n in counts.items() if st != SyncStatus.New.value
    )
    waiting = sum(counts[st.value] for st in WAITING)
    crm_settings = settings.crm(crm)
    missing = crm_settings.missing()
    pauses = _pauses(ctl, now)
    if missing is not None and not serving:
        state = CrmState.disabled
    elif pauses:
        state = CrmState.paused
    elif waiting and not serving:
        state = CrmState.waiting
    elif waiting:
        state = CrmState.syncing
    else:
        state = CrmState.idle
    return CrmCard(
        crm=crm,
        label=CRM_LABELS[crm],
        state=state,
        counts=counts,
        waiting=waiting,
        in_flight=counts[SyncStatus.Processing.value],
        workers=len(serving),
        pauses=pauses,
        missing=missing,
        credentials=tuple(
            (name, _is_set(getattr(crm_settings, attr))) for name, attr in CREDENTIALS[crm]
        ),
        per_minute=per_minute,
    )


def _pauses(ctl: Control, now: dt.datetime) -> tuple[Pause, ...]:
    found = []
    if ctl.manual_pause:
        found.append(Pause("operator", None, None))
    if ctl.paused_until is not None and ctl.paused_until > now:
        found.append(Pause(ctl.pause_kind or "unknown", ctl.pause_reason, ctl.paused_until))
    return tuple(found)


def _is_set(value: object) -> bool:
    if isinstance(value, SecretStr):
        return bool(value.get_secret_value())
    return value is not None and value != ""
