"""`/api/v3/contacts`: the customer's routes, drop-in, with the shadowed ones made reachable.

Literal paths (`/status`, `/crm/select`, `/bulk`, ...) are registered before `/{contact_id}`:
in the customer's app the parameter route came first and swallowed them (customer-system 1.2).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response, status
from pydantic import AfterValidator

from crmsync.api.deps import ContactsDep, UserDep
from crmsync.contacts import cursors
from crmsync.contacts.schemas import (
    MAX_BULK,
    BulkRequest,
    BulkResponse,
    ContactCreate,
    ContactFilters,
    ContactRead,
    ContactUpdate,
    CrmSelectionRequest,
    CrmSelectionResponse,
    FilteredCrmSelectionRequest,
    FilteredStatusUpdateRequest,
    StatusUpdateRequest,
    StatusUpdateResponse,
    SyncEventRead,
)
from crmsync.errors import Unprocessable

router = APIRouter(prefix="/api/v3/contacts", tags=["contacts"])
# The deepest `offset` accepted: skipping rows reads them all first. Further: the `after` cursor.
MAX_OFFSET = 100_000

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid bearer token"},
    403: {"description": "The token's scope does not allow this (a read-only token writing)"},
    422: {"description": "Invalid request"},
}


@router.get("", response_model=list[ContactRead], responses=ERRORS)
@router.get("/", response_model=list[ContactRead], include_in_schema=False)
async def list_contacts(
    _: UserDep,
    service: ContactsDep,
    response: Response,
    filters: Annotated[ContactFilters, Query()],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[
        int, Query(ge=0, le=MAX_OFFSET, description="Rows to skip; past it, page with `after`.")
    ] = 0,
    after: Annotated[
        str | None,
        Query(
            max_length=200,
            pattern=r"^[A-Za-z0-9_-]+$",
            description="Go on after the page whose X-Next-Cursor header gave this value.",
        ),
        AfterValidator(cursors.check),
    ] = None,
) -> list[dict[str, Any]]:
    """Contacts in a stable order (created_at, id); the total matching count is in
    X-Total-Count. A full page carries X-Next-Cursor: send it as `after` for the next page (any
    depth; `offset` stops at 100,000)."""
    items, total, following = await service.page(filters, limit, offset, after)
    response.headers["X-Total-Count"] = str(total)
    if following is not None:
        response.headers["X-Next-Cursor"] = following
    return items


@router.post(
    "",
    response_model=ContactRead,
    status_code=status.HTTP_201_CREATED,
    responses={**ERRORS, 409: {"description": "A contact with this email exists"}},
)
@router.post(
    "/", response_model=ContactRead, status_code=status.HTTP_201_CREATED, include_in_schema=False
)
async def create_contact(_: UserDep, service: ContactsDep, body: ContactCreate) -> dict[str, Any]:
    return await service.create(body)


@router.post("/bulk", response_model=BulkResponse, responses=ERRORS)
async def bulk_upsert(
    _: UserDep,
    service: ContactsDep,
    body: Annotated[BulkRequest | list[Any], Body()],
) -> BulkResponse:
    """Upsert up to 10,000 contacts by email (case-insensitive).

    Accepts `{"contacts": [...]}` or a bare array. Each row updates the fields it carries.
    Invalid rows are rejected with a reason each; the valid rows are written regardless.
    """
    rows = body.contacts if isinstance(body, BulkRequest) else body
    if len(rows) > MAX_BULK:
        raise Unprocessable(
            f"Too many contacts: {len(rows):,} sent, at most {MAX_BULK:,} per request"
        )
    return await service.bulk_upsert(rows)


@router.put("/status", response_model=StatusUpdateResponse, responses=ERRORS)
async def batch_update_status(
    _: UserDep, service: ContactsDep, body: StatusUpdateRequest
) -> StatusUpdateResponse:
    """Set the curation status of the given contacts (Queued also queues their processing)."""
    return await service.set_status(body.contact_ids, body.status)


@router.put(
    "/status/filtered",
    response_model=StatusUpdateResponse,
    responses={**ERRORS, 400: {"description": 'No filter and no "all": true'}},
)
async def filtered_batch_update_status(
    _: UserDep, service: ContactsDep, body: FilteredStatusUpdateRequest
) -> StatusUpdateResponse:
    """Set the curation status of every contact matching the filters (none: `"all": true`)."""
    return await service.set_status_filtered(body, body.status)


@router.put(
    "/crm/select",
    response_model=CrmSelectionResponse,
    responses={
        **ERRORS,
        400: {"description": "Unknown CRM name or action"},
        404: {"description": "None of the contact ids exist"},
    },
)
async def select_contacts_for_crm_sync(
    _: UserDep, service: ContactsDep, body: CrmSelectionRequest
) -> CrmSelectionResponse:
    """Select contacts for (or unselect them from) one or more CRMs.

    Select sets `{crm}_sync_status` Selected and `{crm}_processing_status` Queued (the dual
    status) and clears the error; unselect sets New and clears both.
    """
    return await service.select_by_ids(body.contact_ids, body.crms, body.action, body.force)


@router.put(
    "/crm/select/filtered",
    response_model=CrmSelectionResponse,
    responses={**ERRORS, 400: {"description": "Unknown CRM name or action, or no filter"}},
)
async def select_filtered_for_crm_sync(
    _: UserDep, service: ContactsDep, body: FilteredCrmSelectionRequest
) -> CrmSelectionResponse:
    """Select (or unselect) every contact matching the list filters: a segment."""
    return await service.select_filtered(body, body.crms, body.action, body.force)


NOT_FOUND: dict[int | str, dict[str, Any]] = {**ERRORS, 404: {"description": "No such contact"}}
EDIT_ERRORS: dict[int | str, dict[str, Any]] = {
    **NOT_FOUND,
    409: {"description": "Another contact has this email"},
}


@router.get("/{contact_id}/sync-history", response_model=list[SyncEventRead], responses=NOT_FOUND)
async def sync_history(
    _: UserDep,
    service: ContactsDep,
    contact_id: uuid.UUID,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[dict[str, Any]]:
    """Every attempt to push this contact, newest first (kept CRMSYNC_EVENT_RETENTION_DAYS)."""
    return await service.history(contact_id, limit, offset)


@router.get("/{contact_id}", response_model=ContactRead, responses=NOT_FOUND)
async def get_contact(_: UserDep, service: ContactsDep, contact_id: uuid.UUID) -> dict[str, Any]:
    return await service.get(contact_id)


@router.put("/{contact_id}", response_model=ContactRead, responses=EDIT_ERRORS)
async def update_contact(
    _: UserDep, service: ContactsDep, contact_id: uuid.UUID, body: ContactUpdate
) -> dict[str, Any]:
    """Apply the fields sent (an explicit null is applied); others stay as they are."""
    return await service.update(contact_id, body)


@router.patch("/{contact_id}", response_model=ContactRead, responses=EDIT_ERRORS)
async def patch_contact(
    _: UserDep, service: ContactsDep, contact_id: uuid.UUID, body: ContactUpdate
) -> dict[str, Any]:
    """Same as PUT (both are partial), for clients that follow the customer's n8n docs."""
    return await service.update(contact_id, body)


@router.delete("/{contact_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_contact(_: UserDep, service: ContactsDep, contact_id: uuid.UUID) -> Response:
    await service.delete(contact_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
