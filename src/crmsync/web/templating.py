"""Rendering pages: the Jinja2 environment, its filters, and the one-shot messages ("flash").

Every page is rendered through `render`, which adds what the layout needs (the signed-in user,
the CSRF token, the message left by the last action) and clears that message.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from crmsync import __version__
from crmsync.ops.overview import CRM_LABELS
from crmsync.web.session import CSRF_FIELD, Session

HERE = Path(__file__).parent
FLASH_COOKIE = "crmsync_flash"

# Colours are in the stylesheet; each status also has its name written out wherever it shows.
STATUS_ORDER = ("Complete", "Processing", "Queued", "Selected", "Error", "Skipped", "New")

PAUSE_KINDS = {
    "rate_limit": "rate limit",
    "auth": "authentication failure",
    "configuration": "configuration failure",
    "outage": "outage",
}


def number(value: int | float) -> str:
    return f"{value:,}"


def plural(count: int, word: str, many: str | None = None) -> str:
    return f"{count:,} {word if count == 1 else (many or word + 's')}"


def timestamp(value: dt.datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def relative(value: dt.datetime | None, now: dt.datetime) -> str:
    """'in 2 min', '5 s ago', '3 h ago': how far `value` is from `now`."""
    if value is None:
        return ""
    seconds = (value - now).total_seconds()
    span = abs(seconds)
    if span < 60:
        text = f"{span:.0f} s"
    elif span < 3600:
        text = f"{span / 60:.0f} min"
    elif span < 86400:
        text = f"{span / 3600:.1f} h"
    else:
        text = f"{span / 86400:.1f} days"
    return f"in {text}" if seconds >= 0 else f"{text} ago"


def pause_kind(kind: str) -> str:
    return PAUSE_KINDS.get(kind, kind.replace("_", " "))


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(number=number, plural=plural, timestamp=timestamp, pause_kind=pause_kind)
    env.globals.update(
        relative=relative,
        crm_labels={crm.value: label for crm, label in CRM_LABELS.items()},
        status_order=STATUS_ORDER,
        version=__version__,
        csrf_field=CSRF_FIELD,
    )
    return env


templates = Jinja2Templates(env=_environment())


def set_flash(response: Response, text: str, kind: str = "ok") -> None:
    """Leave a message for the next page this browser renders (after a redirect)."""
    raw = json.dumps({"kind": kind, "text": text}).encode()
    response.set_cookie(
        FLASH_COOKIE,
        base64.urlsafe_b64encode(raw).decode(),
        max_age=60,
        path="/",
        httponly=True,
        samesite="strict",
    )


def _take_flash(request: Request) -> dict[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        found = json.loads(base64.urlsafe_b64decode(raw.encode()))
    except ValueError:
        return None
    if not isinstance(found, dict) or not isinstance(found.get("text"), str):
        return None
    return {"kind": "error" if found.get("kind") == "error" else "ok", "text": found["text"]}


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    session: Session | None,
    status_code: int = 200,
    flash: dict[str, str] | None = None,
    fragment: bool = False,
) -> Response:
    """A page with the layout's context, showing (and clearing) the message left for it; a
    `fragment` (part of a page, fetched by its script) leaves the message alone."""
    pending = None if fragment else _take_flash(request)
    full = {
        "user": session.user.sub if session else None,
        "csrf": session.csrf if session else "",
        "flash": flash or pending,
        "active": "",
        **context,
    }
    response = templates.TemplateResponse(request, name, full, status_code=status_code)
    if pending is not None:
        response.delete_cookie(FLASH_COOKIE, path="/", httponly=True, samesite="strict")
    return response
