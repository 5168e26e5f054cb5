"""One place that renders every error as JSON a client can act on.

The body carries `detail` (read by the work order's tests and the customer's frontend error path),
`message` (what the customer's frontend shows) and `status_code`, plus `error: true` as the
customer's envelope had. Validation errors stay 422 with FastAPI's `detail` list.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from crmsync import db
from crmsync.errors import CrmSyncError

log = logging.getLogger(__name__)


def error_body(status_code: int, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "detail": message,
        "message": message,
        "status_code": status_code,
        "error": True,
        **extra,
    }


def _location(loc: Any) -> str:
    return ".".join(str(part) for part in loc if part != "body") or "body"


def _invalid(errors: list[dict[str, Any]]) -> JSONResponse:
    summary = "; ".join(f"{_location(e['loc'])}: {e['msg']}" for e in errors[:5])
    body = {
        "detail": errors,
        "message": f"Invalid request: {summary}",
        "status_code": 422,
        "error": True,
    }
    return JSONResponse(body, status_code=422)


def install(app: FastAPI) -> None:
    @app.exception_handler(CrmSyncError)
    async def _domain(_: Request, exc: CrmSyncError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.status_code, exc.message, **exc.extra), status_code=exc.status_code
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI answers a body that is not UTF-8 with a bare 400, and a body that is no
            # JSON with a 422: both are the same mistake, answered the same way.
            return _invalid(
                [{"loc": ["body"], "msg": "not valid UTF-8 text", "type": "json_invalid"}]
            )
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse(
            error_body(exc.status_code, message),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {k: v for k, v in err.items() if k in ("loc", "msg", "type")} for err in exc.errors()
        ]
        return _invalid(errors)

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> JSONResponse:
        if not db.is_statement_timeout(exc):
            return await _unexpected(request, exc)
        limit = request.app.state.settings.statement_timeout_seconds
        log.warning("%s %s: stopped by the statement timeout", request.method, request.url.path)
        message = (
            f"The database needed longer than {limit:g} s for this request "
            "(CRMSYNC_STATEMENT_TIMEOUT_SECONDS): narrow the filters, use smaller pages, "
            "or try again when the service is less busy"
        )
        return JSONResponse(error_body(503, message), status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Never echo the exception text: it may hold SQL, data or a secret.
        log.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
        return JSONResponse(error_body(500, "Internal server error"), status_code=500)
