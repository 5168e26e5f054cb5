"""Small HTTP helpers the Brevo and n8n connectors share: reading vendor answers safely.

Everything here turns a response or a transport error into text that is safe to store: vendor
text is truncated and scrubbed of the secrets we sent, and URLs (which may carry a token in an n8n
webhook path) are never included.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from crmsync.connectors.base import truncate

REDACTED = "[redacted]"
# A header asking for more than a day is not taken literally.
MAX_HEADER_WAIT_SECONDS = 86_400.0


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every secret we hold replaced, in case a vendor echoes one back."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


# Shorter URL parts are not treated as secrets: they would garble ordinary words.
MIN_URL_SECRET_CHARS = 8
# The path prefixes n8n serves webhooks under (`N8N_ENDPOINT_WEBHOOK`, `..._TEST` defaults).
_N8N_PREFIXES = ("webhook", "webhook-test")


def url_secrets(url: str | None) -> list[str]:
    """The parts of a URL that may be its secret, longest first.

    The whole URL; its path, which is the secret of an n8n or Slack webhook URL; the path after
    n8n's `webhook/` prefix, which is how n8n names the webhook in its own 404 message
    (`The requested webhook "POST <path>" is not registered`); its query and its password.
    """
    if not url:
        return []
    parts = urlsplit(url)
    path = parts.path.strip("/")
    found = [url, parts.path, path]
    segments = path.split("/")
    for i, segment in enumerate(segments[:-1]):
        if segment in _N8N_PREFIXES:
            found.append("/".join(segments[i + 1 :]))
    found += [parts.query, parts.password or ""]
    kept = {part for part in found if len(part) >= MIN_URL_SECRET_CHARS}
    return sorted(kept, key=len, reverse=True)


def json_body(response: httpx.Response) -> Any:
    """The decoded JSON body, or None for an empty or non-JSON body (never raises)."""
    if not response.content:
        return None
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None


def body_text(response: httpx.Response, limit: int = 500) -> str:
    """The response body as short text, for messages (vendors sometimes answer in plain text)."""
    try:
        text = response.text.strip()
    except (UnicodeDecodeError, LookupError):
        text = ""
    return truncate(text, limit)


def never_sent(exc: httpx.HTTPError) -> bool:
    """True when the request cannot have reached the vendor (no connection was made).

    A read timeout or a dropped connection is different: the vendor may have acted on the request.
    """
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def describe(exc: httpx.HTTPError) -> str:
    """A short, URL-free description of a transport error."""
    detail = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {truncate(detail, 200)}" if detail else name


def seconds_header(value: str | None, default: float, now: datetime | None = None) -> float:
    """A wait from a `Retry-After`-style header: seconds or an HTTP date; `default` otherwise.

    A value of zero or less is replaced by `default` too: "retry now" right after a refusal would
    only earn another one.
    """
    if value is None:
        return default
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return default
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds or seconds <= 0:  # NaN or not in the future
        return default
    return min(seconds, MAX_HEADER_WAIT_SECONDS)
