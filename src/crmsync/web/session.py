"""The dashboard's sign-in: a session cookie holding the bearer token, and CSRF checks.

- Signing in posts a token (typed into "Access token", or taken by `login.js` from the
  `/login#token=...` fragment, which never reaches the server or its logs) to `/login`. The token
  is verified like an API bearer token and kept, as it is, in an HttpOnly, SameSite=Strict
  cookie that expires with it: every page verifies it again, so an expired token ends the
  session and its claims stay available to whatever checks them.
- Every write (a form post) also needs the session's CSRF token, sent as the `csrf_token` field
  or the `X-CSRF-Token` header: an HMAC of the session cookie under the signing secret. It needs
  no server-side state and changes with every new sign-in.
- The sign-in form itself is guarded by a double-submit token (a random cookie repeated in the
  form), so another site cannot sign a browser in under someone else's token.
- The cookie authorises the dashboard's routes only. `/api/v3` reads bearer tokens alone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.datastructures import FormData

from crmsync.auth import AuthError, ScopeError, User, check_scope, verify_token

COOKIE = "crmsync_session"
LOGIN_COOKIE = "crmsync_login"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
LOGIN_FIELD = "login_csrf"


class SignInRequired(Exception):
    """No valid session: pages redirect to `/login?next=...`, data requests answer 401."""

    def __init__(self, next_path: str, *, page: bool = True) -> None:
        super().__init__(next_path)
        self.next_path = next_path
        self.page = page


class CsrfRefused(Exception):
    """A write without the session's CSRF token (or with a wrong one): 403."""


@dataclass(frozen=True, slots=True)
class Session:
    user: User
    csrf: str
    expires_at: dt.datetime


def _secret(request: Request) -> str:
    secret: str = request.app.state.jwt_secret
    return secret


def csrf_token(secret: str, session_token: str) -> str:
    mac = hmac.new(secret.encode(), b"crmsync-csrf\0" + session_token.encode(), hashlib.sha256)
    return mac.hexdigest()


def read(request: Request) -> Session | None:
    """The request's session, or None when it has no cookie or its token is no longer valid."""
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    secret = _secret(request)
    try:
        user = _verify(request, token, secret)
    except AuthError:
        return None
    expires = dt.datetime.fromtimestamp(int(user.claims["exp"]), dt.UTC)
    return Session(user, csrf_token(secret, token), expires)


def _verify(request: Request, token: str, secret: str) -> User:
    """The token checked as the API checks bearer tokens (issuer and audience when set)."""
    settings = request.app.state.settings
    return verify_token(token, secret, issuer=settings.jwt_issuer, audience=settings.jwt_audience)


def _here(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def page_session(request: Request) -> Session:
    session = read(request)
    if session is None:
        raise SignInRequired(_here(request))
    return session


def data_session(request: Request) -> Session:
    """For the data the pages fetch while open (refreshes): 401 rather than a redirect."""
    session = read(request)
    if session is None:
        raise SignInRequired(_here(request), page=False)
    return session


async def write_session(request: Request) -> Session:
    """A signed-in write: the session plus its CSRF token, from the header or the form."""
    session = read(request)
    if session is None:
        # After a write the person comes back to the page they wrote from.
        referer_path = _same_origin_path(request, request.headers.get("referer"))
        raise SignInRequired(referer_path or "/")
    sent = request.headers.get(CSRF_HEADER)
    form: FormData | None = None
    if sent is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    try:
        if sent is None or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            raise CsrfRefused
        # A read-only token signs in to look, never to change anything (as with the API).
        check_scope(session.user, request.method)
    except (CsrfRefused, ScopeError):
        if form is not None:
            await form.close()  # an upload's temporary file: the route never sees it
        raise
    return session


def _same_origin_path(request: Request, url: str | None) -> str | None:
    base = str(request.base_url).rstrip("/")
    if url and url.startswith(base + "/"):
        return safe_next(url[len(base) :])
    return None


def safe_next(value: str | None) -> str:
    """A path on this site to go to after signing in; anything else goes to the overview."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if value.startswith("/login") or value.startswith("/logout"):
        return "/"
    return value


# -- signing in and out --------------------------------------------------------------------------


def login_nonce(request: Request) -> str:
    """The sign-in form's double-submit token: the cookie's, or a new one."""
    return request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)


def set_login_nonce(request: Request, response: Response, nonce: str) -> None:
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=3600,
        path="/login",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def check_login_nonce(request: Request, form: FormData) -> bool:
    sent = form.get(LOGIN_FIELD)
    kept = request.cookies.get(LOGIN_COOKIE)
    if not isinstance(sent, str) or not kept:
        return False
    return hmac.compare_digest(sent.encode(), kept.encode())


def sign_in(request: Request, response: Response, token: str, now: dt.datetime) -> User:
    """Verify `token` and set the session cookie to it; AuthError when it is refused."""
    user = _verify(request, token, _secret(request))
    expires = dt.datetime.fromtimestamp(int(user.claims["exp"]), dt.UTC)
    response.set_cookie(
        COOKIE,
        token,
        max_age=max(0, int((expires - now).total_seconds())),
        expires=expires,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return user


def sign_out(request: Request, response: Response) -> None:
    response.delete_cookie(
        COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )


PageSession = Annotated[Session, Depends(page_session)]
DataSession = Annotated[Session, Depends(data_session)]
WriteSession = Annotated[Session, Depends(write_session)]
