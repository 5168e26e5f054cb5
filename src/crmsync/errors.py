"""Domain errors that carry their HTTP meaning; one handler in `api/errors.py` renders them."""

from __future__ import annotations

from typing import Any


class CrmSyncError(Exception):
    status_code = 400

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class BadRequest(CrmSyncError):
    status_code = 400


class NotFound(CrmSyncError):
    status_code = 404


class Conflict(CrmSyncError):
    status_code = 409


class Unprocessable(CrmSyncError):
    status_code = 422
