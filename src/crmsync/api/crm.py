"""`/api/v3/crm/...` (health, status summary, failed report, retry) and `/metrics`.

The work order's Phase 4 (WO-015.4 4.1), which the customer's system never built. `router`
bundles both prefixes so that the app registers them with one `include_router`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import JSONResponse

from crmsync.api.contacts import MAX_OFFSET
from crmsync.api.deps import MetricsAccessDep, OpsDep, UserDep
from crmsync.ops import prometheus
from crmsync.ops.health import DEFAULT_MAX_LAG_SECONDS
from crmsync.ops.schemas import (
    FailedContact,
    Health,
    HealthStatus,
    RetryRequest,
    RetryResponse,
    Summary,
)

crm_router = APIRouter(prefix="/api/v3/crm", tags=["operations"])
metrics_router = APIRouter(tags=["operations"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid bearer token"},
    403: {"description": "The token's scope does not allow this (a read-only token writing)"},
    422: {"description": "Invalid request"},
}


@crm_router.get(
    "/health",
    response_model=Health,
    responses={**ERRORS, 503: {"model": Health, "description": "Down, with strict=true"}},
)
async def crm_health(
    _: UserDep,
    ops: OpsDep,
    strict: Annotated[
        bool, Query(description="Answer 503 instead of 200 when the status is down.")
    ] = False,
    max_lag_seconds: Annotated[
        float, Query(gt=0, description="Lag above which a CRM counts as degraded.")
    ] = DEFAULT_MAX_LAG_SECONDS,
) -> JSONResponse:
    """Per CRM: configured, paused (and why), live workers, queue, due rows, lag, error rate
    over the last hour, throughput over the last 5 minutes; and an overall ok, degraded or down
    (the rules are in `docs/API.md`). Always 200, unless `strict=true` and down: 503.
    """
    health = await ops.health(max_lag_seconds)
    code = 503 if strict and health.status is HealthStatus.down else 200
    return JSONResponse(health.model_dump(mode="json"), status_code=code)


@crm_router.get("/status/summary", response_model=Summary, responses=ERRORS)
async def status_summary(_: UserDep, ops: OpsDep) -> Summary:
    """Contacts per sync status for every CRM, zeros included; New counts contacts never
    selected for that CRM too, so each CRM's counts add up to `total_contacts`."""
    return await ops.summary()


@crm_router.get(
    "/status/failed",
    response_model=list[FailedContact],
    responses={**ERRORS, 400: {"description": "Unknown CRM name"}},
)
async def status_failed(
    _: UserDep,
    ops: OpsDep,
    response: Response,
    crm: Annotated[str | None, Query(description="Only this CRM (default: all).")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[FailedContact]:
    """Contacts in Error, newest failure first; the total is in X-Total-Count."""
    items, total = await ops.failed(crm, limit, offset)
    response.headers["X-Total-Count"] = str(total)
    return items


@crm_router.post(
    "/retry",
    response_model=RetryResponse,
    responses={**ERRORS, 400: {"description": "Unknown CRM, or not exactly one of the modes"}},
)
async def retry(_: UserDep, ops: OpsDep, body: RetryRequest) -> RetryResponse:
    """Put Error rows of one CRM back to Selected, attempts reset and due now: the listed
    contacts' (`contact_ids`) or every one (`all_failed: true`). Rows in any other status are
    left alone and not counted."""
    count = await ops.retry(body.crm, body.contact_ids, body.all_failed)
    return RetryResponse(requeued_count=count)


@metrics_router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {prometheus.CONTENT_TYPE: {}}, "description": "Prometheus text format"},
        401: {"description": "Missing or invalid bearer token (unless CRMSYNC_METRICS_PUBLIC)"},
        403: {"description": "The token's scope grants no access"},
    },
)
async def metrics(_: MetricsAccessDep, ops: OpsDep) -> Response:
    """Prometheus metrics: this process's worker counters and the queue gauges of the moment."""
    body = await prometheus.exposition(ops)
    return Response(body, media_type=prometheus.CONTENT_TYPE, status_code=status.HTTP_200_OK)


router = APIRouter()
router.include_router(crm_router)
router.include_router(metrics_router)
