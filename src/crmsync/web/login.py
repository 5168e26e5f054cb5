"""`/login` and `/logout`: the only dashboard routes open without a session."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from crmsync.auth import AuthError
from crmsync.web import session as sessions
from crmsync.web.session import WriteSession
from crmsync.web.templating import render

router = APIRouter(include_in_schema=False)


def _login_page(
    request: Request, next_path: str, error: str | None = None, status_code: int = 200
) -> Response:
    nonce = sessions.login_nonce(request)
    context = {
        "title": "Sign in",
        "next": next_path,
        "nonce": nonce,
        "login_field": sessions.LOGIN_FIELD,
        "error": error,
        "signed_in": sessions.read(request) is not None,
    }
    response = render(request, "login.html", context, session=None, status_code=status_code)
    sessions.set_login_nonce(request, response, nonce)
    return response


@router.get("/login")
async def login_form(request: Request) -> Response:
    return _login_page(request, sessions.safe_next(request.query_params.get("next")))


@router.post("/login")
async def login(request: Request) -> Response:
    form = await request.form()
    next_path = sessions.safe_next(_text(form.get("next")))
    if not sessions.check_login_nonce(request, form):
        message = "This sign-in form has expired: sign in again."
        return _login_page(request, next_path, message, status_code=403)
    token = _text(form.get("token")).strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    if not token:
        return _login_page(request, next_path, "Enter an access token.", status_code=400)
    response = RedirectResponse(next_path, status_code=303)
    try:
        sessions.sign_in(request, response, token, request.app.state.contacts.clock())
    except AuthError as exc:
        message = f"That token was refused: {exc}. Mint a new one with `crmsync token`."
        return _login_page(request, next_path, message, status_code=401)
    return response


@router.post("/logout")
async def logout(request: Request, _: WriteSession) -> Response:
    response = RedirectResponse("/login", status_code=303)
    sessions.sign_out(request, response)
    return response


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
