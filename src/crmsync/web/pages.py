"""The dashboard's pages (GET): Overview, Contacts, Contact and Failed, and the data they refresh.

Routes only read the request, call the contact and operations services, and render.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from crmsync.api.deps import get_contacts, get_ops
from crmsync.contacts.schemas import ContactFilters
from crmsync.enums import CRM_ID_FIELD, Crm
from crmsync.errors import NotFound
from crmsync.ops.overview import CRM_LABELS
from crmsync.web import views
from crmsync.web.session import DataSession, PageSession, Session
from crmsync.web.templating import render

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
# A combination of filters no kept total answers is counted up to this many (then: "more than").
COUNT_CAP = 10_000
HISTORY_SIZE = 50
# Failed page: the largest groups of each CRM, and the latest contacts of each group.
GROUPS_PER_CRM = 20
CONTACTS_PER_GROUP = 5
# The badge refresh asks for one page of contacts at most.
MAX_BADGE_IDS = 200


def _offset(request: Request) -> int:
    raw = request.query_params.get("offset", "0")
    return int(raw) if raw.isdigit() and len(raw) < 10 else 0


# -- Overview ------------------------------------------------------------------------------------


@router.get("/")
async def overview(request: Request, session: PageSession) -> Response:
    data = await get_ops(request).dashboard()
    context = {"ov": data, "active": "overview", "title": "Overview", **_card_helpers()}
    return render(request, "overview.html", context, session=session)


@router.get("/overview/cards")
async def overview_cards(request: Request, session: DataSession) -> Response:
    """The overview's cards alone: what the page fetches every few seconds."""
    data = await get_ops(request).dashboard()
    context = {"ov": data, **_card_helpers()}
    return render(request, "_cards.html", context, session=session, fragment=True)


def _card_helpers() -> dict[str, Any]:
    return {"bar_segments": views.bar_segments, "sparkline": views.sparkline, "views": views}


# -- Contacts ------------------------------------------------------------------------------------


def list_params(source: Mapping[str, Any]) -> dict[str, str]:
    """The Contacts page's filters present in `source` (a query or a form), trimmed."""
    picked: dict[str, str] = {}
    for key in views.LIST_FILTERS:
        value = source.get(key)
        if isinstance(value, str) and value.strip():
            picked[key] = value.strip()
    return picked


def parse_filters(params: Mapping[str, str]) -> ContactFilters:
    """ValidationError names the filter whose value is not one of its choices."""
    return ContactFilters.model_validate(dict(params))


def filter_error(exc: ValidationError) -> str:
    names = sorted({str(err["loc"][0]) for err in exc.errors() if err["loc"]})
    return f"Unknown filter value for {', '.join(names)}: showing every contact instead."


@router.get("/contacts")
async def contacts_page(request: Request, session: PageSession) -> Response:
    params = list_params(request.query_params)
    flash = None
    try:
        filters = parse_filters(params)
    except ValidationError as exc:
        flash = {"kind": "error", "text": filter_error(exc)}
        params, filters = {}, ContactFilters()
    offset = _offset(request)
    found = await get_contacts(request).browse(filters, PAGE_SIZE, offset, COUNT_CAP)
    context = {
        "active": "contacts",
        "title": "Contacts",
        "rows": found.items,
        "total": found.total,
        "exact": found.exact,
        "params": params,
        "filtered": bool(params),
        "pager": views.Pager(offset, PAGE_SIZE, found.total, len(found.items), found.exact),
        "here": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        "views": views,
    }
    return render(request, "contacts.html", context, session=session, flash=flash)


@router.get("/contacts/badges")
async def contact_badges(
    request: Request,
    session: DataSession,
    id: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI copies defaults
) -> JSONResponse:
    """Sync statuses of the listed contacts, per CRM: the Contacts page keeps its badges live."""
    ids = [parsed for raw in id[:MAX_BADGE_IDS] if (parsed := _uuid(raw)) is not None]
    statuses = await get_contacts(request).sync_statuses(ids)
    return JSONResponse({str(cid): crms for cid, crms in statuses.items()})


def _uuid(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


@router.get("/contacts/{contact_id}")
async def contact_page(request: Request, session: PageSession, contact_id: str) -> Response:
    cid = _uuid(contact_id)
    service = get_contacts(request)
    if cid is None:
        return not_found(request, session, "There is no contact with this id.")
    try:
        contact = await service.get(cid)
    except NotFound:
        return not_found(request, session, "There is no contact with this id.")
    offset = _offset(request)
    history = await service.history(contact["id"], HISTORY_SIZE + 1, offset)
    context = {
        "active": "contacts",
        "title": contact["email"],
        "contact": contact,
        "crms": [(crm.value, CRM_LABELS[crm], CRM_ID_FIELD[crm]) for crm in Crm],
        "history": history[:HISTORY_SIZE],
        "history_offset": offset,
        "history_more": len(history) > HISTORY_SIZE,
        "history_size": HISTORY_SIZE,
    }
    return render(request, "contact.html", context, session=session)


def not_found(request: Request, session: Session, message: str) -> Response:
    context = {"title": "Not found", "message": message}
    return render(request, "not_found.html", context, session=session, status_code=404)


# -- Failed --------------------------------------------------------------------------------------


@router.get("/failed")
async def failed_page(request: Request, session: PageSession) -> Response:
    ops = get_ops(request)
    crm = request.query_params.get("crm", "")
    error = request.query_params.get("error")
    if crm in Crm.__members__ and error is not None:
        return await _failed_group(request, session, Crm(crm), error)
    groups, samples = await ops.failed_groups(GROUPS_PER_CRM, CONTACTS_PER_GROUP)
    by_crm: dict[str, list[Any]] = {}
    for group in groups:
        by_crm.setdefault(group.crm, []).append(group)
    contacts_of: dict[tuple[str, str], list[Any]] = {}
    for item in samples:
        contacts_of.setdefault((item.crm, item.error or ""), []).append(item)
    context = {
        "active": "failed",
        "title": "Failed",
        "crms": [(crm.value, CRM_LABELS[crm]) for crm in Crm],
        "by_crm": by_crm,
        "contacts_of": contacts_of,
        "total": sum(g[0].total_in_crm for g in by_crm.values()),
        "views": views,
    }
    return render(request, "failed.html", context, session=session)


async def _failed_group(request: Request, session: Session, crm: Crm, error: str) -> Response:
    offset = _offset(request)
    items, total = await get_ops(request).failed(crm.value, PAGE_SIZE, offset, error)
    context = {
        "active": "failed",
        "title": f"Failed: {CRM_LABELS[crm]}",
        "crm": crm.value,
        "label": CRM_LABELS[crm],
        "error": error,
        "items": items,
        "total": total,
        "pager": views.Pager(offset, PAGE_SIZE, total, len(items)),
        "params": {"crm": crm.value, "error": error},
        "views": views,
    }
    return render(request, "failed_group.html", context, session=session)
