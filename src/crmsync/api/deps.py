"""Typed FastAPI dependencies: settings, services and the authenticated user."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from crmsync.auth import AuthError, User, verify_token
from crmsync.contacts.service import ContactService
from crmsync.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="A JWT signed with JWT_SECRET_KEY (HS256).")


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=message,
        headers={"WWW-Authenticate": "Bearer"},
    )


def current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("Not authenticated")
    secret: str = request.app.state.jwt_secret
    try:
        return verify_token(credentials.credentials, secret)
    except AuthError as exc:
        raise _unauthorized(str(exc)) from exc


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_contacts(request: Request) -> ContactService:
    service: ContactService = request.app.state.contacts
    return service


UserDep = Annotated[User, Depends(current_user)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ContactsDep = Annotated[ContactService, Depends(get_contacts)]
