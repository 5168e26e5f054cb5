"""A contact row plus its per-CRM state rows, shown with the customer's flat keys.

The customer's schema had one `retry_count`/`next_retry_at`/`last_failed_crm` shared by all CRMs
(a defect: a Brevo success reset HubSpot's counter). Here each CRM keeps its own state, and the
flat keys are derived from it for drop-in clients:

- `last_failed_crm`: the CRM whose last attempt failed most recently (Queued for retry or Error);
- `retry_count` and `last_retry_at`: that CRM's attempts and last attempt time;
- `next_retry_at`: the earliest scheduled retry over all CRMs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from crmsync.contacts.columns import CONTACT_FIELDS
from crmsync.enums import CRM_ID_FIELD, Crm, SyncStatus

BASE_KEYS = (
    *CONTACT_FIELDS,
    "id",
    "created_at",
    "updated_at",
    "contact_curation_status",
    "contact_processing_status",
    "contact_processing_error",
)


# Per CRM, its name and its flat keys, built once: formatting them and reading enum members for
# every contact was about half of presenting a page of 100 (enum attribute access is slow).
_CRM_KEYS = tuple(
    (
        crm.value,
        f"{crm.value}_sync_status",
        f"{crm.value}_processing_status",
        f"{crm.value}_processing_error",
        CRM_ID_FIELD[crm],
    )
    for crm in Crm
)
_NEW = SyncStatus.New.value
_QUEUED = SyncStatus.Queued.value
_FAILING = (SyncStatus.Queued.value, SyncStatus.Error.value)


def present(contact: Mapping[Any, Any], states: Iterable[Mapping[Any, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {key: contact[key] for key in BASE_KEYS}
    by_crm = {state["crm"]: state for state in states}
    failing: list[Mapping[Any, Any]] = []
    sync: dict[str, dict[str, Any]] = {}
    for crm, status_key, processing_key, error_key, id_key in _CRM_KEYS:
        state = by_crm.get(crm)
        if state is None:
            out[status_key] = _NEW
            out[processing_key] = None
            out[error_key] = None
            out[id_key] = None
            sync[crm] = {"attempts": 0}
            continue
        out[status_key] = state["sync_status"]
        out[processing_key] = state["processing_status"]
        out[error_key] = state["processing_error"]
        out[id_key] = state["external_id"]
        sync[crm] = {
            "attempts": state["attempts"],
            "next_attempt_at": state["next_attempt_at"],
            "last_attempt_at": state["last_attempt_at"],
            "synced_at": state["synced_at"],
        }
        if state["processing_error"] and state["sync_status"] in _FAILING:
            failing.append(state)
    last = max(failing, key=lambda st: st["last_attempt_at"] or st["updated_at"], default=None)
    retries = [
        st["next_attempt_at"]
        for st in failing
        if st["sync_status"] == _QUEUED and st["next_attempt_at"] is not None
    ]
    out["retry_count"] = last["attempts"] if last else 0
    out["last_retry_at"] = last["last_attempt_at"] if last else None
    out["next_retry_at"] = min(retries) if retries else None
    out["last_failed_crm"] = last["crm"] if last else None
    out["sync"] = sync
    return out


def present_many(
    rows: Sequence[Mapping[Any, Any]], states: Iterable[Mapping[Any, Any]]
) -> list[dict[str, Any]]:
    grouped: dict[Any, list[Mapping[Any, Any]]] = {}
    for state in states:
        grouped.setdefault(state["contact_id"], []).append(state)
    return [present(row, grouped.get(row["id"], ())) for row in rows]
