"""Probes without authentication: `/healthz` (liveness) and `/readyz` (readiness).

What each one checks, and why liveness never reads the database, is in `crmsync.ops.probes`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from crmsync.ops import probes

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, Any]:
    """Liveness: 200 while the process runs. Never touches the database."""
    return probes.liveness()


@router.get(
    "/readyz",
    responses={503: {"description": "Not ready: the body's `reason` says why"}},
)
async def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 when the database answers and is migrated, 503 with the reason otherwise."""
    return probes.readiness_response(await probes.database_not_ready(request.app.state.engine))
