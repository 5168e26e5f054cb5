"""Typed FastAPI dependencies: settings, services and the authenticated user."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from crmsync.auth import AuthError, ScopeError, User, check_scope, verify_token
from crmsync.contacts.service import ContactService
from crmsync.enums import Crm
from crmsync.ops.service import OpsService
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
    settings: Settings = request.app.state.settings
    try:
        user = verify_token(
            credentials.credentials,
            secret,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
    except AuthError as exc:
        raise _unauthorized(str(exc)) from exc
    require_scope(request, user)
    return user


def require_scope(request: Request, user: User) -> None:
    """403 when the token's `scope` claim does not allow this request (e.g. a write with `read`)."""
    try:
        check_scope(user, request.method)
    except ScopeError as exc:
        raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail=str(exc)) from exc


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_contacts(request: Request) -> ContactService:
    service: ContactService = request.app.state.contacts
    return service


def get_ops(request: Request) -> OpsService:
    """The operations service, made on first use from the app's engine, settings and clock.

    Its wake-up goes through the contact service's `on_queued`, which an embedded worker sets
    at start-up: a retry through the API wakes that worker at once, as a selection does.
    """
    state = request.app.state
    service: OpsService | None = getattr(state, "ops", None)
    if service is None:
        contacts: ContactService = state.contacts

        def wake(crms: Sequence[Crm]) -> None:
            if contacts.on_queued is not None:
                contacts.on_queued(crms)

        service = OpsService(state.engine, state.settings, contacts.clock, on_queued=wake)
        state.ops = service
    return service


def metrics_access(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """`/metrics` needs the bearer token unless CRMSYNC_METRICS_PUBLIC=true."""
    settings: Settings = request.app.state.settings
    if not settings.metrics_public:
        current_user(request, credentials)


UserDep = Annotated[User, Depends(current_user)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ContactsDep = Annotated[ContactService, Depends(get_contacts)]
OpsDep = Annotated[OpsService, Depends(get_ops)]
MetricsAccessDep = Annotated[None, Depends(metrics_access)]
