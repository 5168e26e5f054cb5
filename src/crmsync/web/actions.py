"""The dashboard's writes (POST, each with the session's CSRF token): sync, unselect, retry, edit.

Each action calls the contact or operations service, leaves a message saying what happened
(with the count the service reports), and redirects back to the page it came from, so that a
reload never repeats it. A selection of a whole filter over more than `CONFIRM_ABOVE` contacts
first shows a confirmation page with the count.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, Response
from fastapi.datastructures import FormData
from fastapi.responses import RedirectResponse
from pydantic import ValidationError

from crmsync.api.deps import get_contacts, get_ops
from crmsync.contacts.schemas import ContactUpdate, FilteredCrmSelectionRequest
from crmsync.enums import Crm
from crmsync.errors import CrmSyncError
from crmsync.ops.overview import CRM_LABELS
from crmsync.web.pages import filter_error, list_params, parse_filters
from crmsync.web.session import Session, WriteSession, safe_next
from crmsync.web.templating import plural, render, set_flash

router = APIRouter(include_in_schema=False)

CONFIRM_ABOVE = 1_000
EVERY_CRM = "Brevo, HubSpot, Mautic and n8n"


def _text(form: FormData, key: str) -> str:
    value = form.get(key)
    return value.strip() if isinstance(value, str) else ""


def _back(target: str, message: str, kind: str = "ok") -> Response:
    response = RedirectResponse(safe_next(target), status_code=303)
    set_flash(response, message, kind)
    return response


def _crm(name: str) -> Crm | None:
    return Crm(name) if name in Crm.__members__ else None


# -- Contacts: sync and unselect -----------------------------------------------------------------


@router.post("/contacts/actions")
async def contacts_action(request: Request, session: WriteSession) -> Response:
    form = await request.form()
    back = _text(form, "return_to") or "/contacts"
    action = _text(form, "action")
    crm = _crm(action.removeprefix("sync:")) if action.startswith("sync:") else None
    if crm is None and action != "unselect":
        return _back(back, "Choose Sync to a CRM, or Unselect.", "error")
    crms = [crm.value] if crm else [c.value for c in Crm]
    verb = "select" if crm else "unselect"
    service = get_contacts(request)
    try:
        if _text(form, "all_matching"):
            params = list_params(form)
            filters = parse_filters(params)
            count = await service.count(filters)
            if count > CONFIRM_ABOVE and _text(form, "confirmed") != str(count):
                return _confirm(request, session, form, params, action, crm, count)
            body = FilteredCrmSelectionRequest(
                **filters.model_dump(exclude_none=True),
                all=not params,
                crms=crms,
                action=verb,
            )
            result = await service.select_filtered(body, body.crms, verb, False)
        else:
            ids = [_uuid(v) for v in form.getlist("ids") if isinstance(v, str)]
            chosen = [i for i in ids if i is not None]
            if not chosen:
                return _back(back, "Check at least one contact, or Select all matching.", "error")
            result = await service.select_by_ids(chosen, crms, verb, False)
    except ValidationError as exc:
        return _back(back, filter_error(exc), "error")
    except CrmSyncError as exc:
        return _back(back, exc.message, "error")
    return _back(back, _selection_message(request, crm, result.updated_count, result.queued_count))


def _selection_message(request: Request, crm: Crm | None, updated: int, queued: int) -> str:
    if crm is None:
        return f"Unselected {plural(updated, 'contact')} from {EVERY_CRM}."
    label = CRM_LABELS[crm]
    message = f"Sync to {label}: {plural(updated, 'contact')} selected, {queued:,} queued."
    missing = request.app.state.settings.crm(crm).missing()
    if missing and queued:
        message += f" {label} is not configured ({missing}): they wait until it is."
    return message


def _confirm(
    request: Request,
    session: Session,
    form: FormData,
    params: dict[str, str],
    action: str,
    crm: Crm | None,
    count: int,
) -> Response:
    question = (
        f"Sync {plural(count, 'contact')} to {CRM_LABELS[crm]}?"
        if crm
        else f"Unselect {plural(count, 'contact')} from {EVERY_CRM}?"
    )
    context = {
        "title": "Confirm",
        "question": question,
        "action": action,
        "count": count,
        "params": params,
        "return_to": safe_next(_text(form, "return_to") or "/contacts"),
        "active": "contacts",
    }
    return render(request, "confirm.html", context, session=session)


def _uuid(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


# -- One contact: edit, sync, retry --------------------------------------------------------------

EDITABLE = ("email", "name", "phone_number")


@router.post("/contacts/{contact_id}/edit")
async def edit_contact(request: Request, session: WriteSession, contact_id: str) -> Response:
    cid = _uuid(contact_id)
    back = f"/contacts/{cid}" if cid else "/contacts"
    form = await request.form()
    # A blank optional field clears it; the email is required.
    fields: dict[str, str | None] = {key: _text(form, key) or None for key in EDITABLE}
    if cid is None:
        return _back(back, "There is no contact with this id.", "error")
    try:
        body = ContactUpdate.model_validate(fields)
        await get_contacts(request).update(cid, body)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _back(back, f"Not saved: {reasons}", "error")
    except CrmSyncError as exc:
        return _back(back, f"Not saved: {exc.message}", "error")
    return _back(back, "Saved.")


@router.post("/contacts/{contact_id}/sync")
async def sync_contact(request: Request, session: WriteSession, contact_id: str) -> Response:
    form = await request.form()
    cid, crm = _uuid(contact_id), _crm(_text(form, "crm"))
    back = f"/contacts/{cid}" if cid else "/contacts"
    if cid is None or crm is None:
        return _back(back, "Unknown contact or CRM.", "error")
    try:
        result = await get_contacts(request).select_by_ids([cid], [crm.value], "select", False)
    except CrmSyncError as exc:
        return _back(back, exc.message, "error")
    return _back(back, _selection_message(request, crm, result.updated_count, result.queued_count))


# -- Retry ---------------------------------------------------------------------------------------


@router.post("/failed/retry")
async def retry(request: Request, session: WriteSession) -> Response:
    """Retry one contact, one group (CRM and message) or every failed contact of a CRM."""
    form = await request.form()
    back = _text(form, "return_to") or "/failed"
    crm = _crm(_text(form, "crm"))
    scope = _text(form, "scope")
    if crm is None:
        return _back(back, "Unknown CRM.", "error")
    ops = get_ops(request)
    try:
        if scope == "all":
            count = await ops.retry(crm.value, None, True)
        elif scope == "group":
            error = form.get("error")
            count = await ops.retry_group(crm.value, error if isinstance(error, str) else "")
        elif scope == "contact" and (cid := _uuid(_text(form, "contact_id"))) is not None:
            count = await ops.retry(crm.value, [cid], False)
        else:
            return _back(back, "Nothing to retry.", "error")
    except CrmSyncError as exc:
        return _back(back, exc.message, "error")
    if count == 0:
        return _back(back, f"Nothing to retry: no such contact is in Error for {CRM_LABELS[crm]}.")
    return _back(back, f"Retrying {plural(count, 'contact')} for {CRM_LABELS[crm]}.")
