"""Turning the answers of the field calls (list, create) into the connector errors of base.py.

These are administrative calls, made by `crmsync setup`, `crmsync check` and the worker's check:
every failure is a batch-wide error (refused credentials, wrong URL, rate limit, vendor down),
never a row's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from crmsync.connectors.base import (
    AuthFailed,
    ConnectorError,
    Misconfigured,
    RateLimited,
    Transient,
)
from crmsync.connectors.httputil import body_text, describe, json_body, seconds_header
from crmsync.connectors.ratelimit import RateLimiter

Scrub = Callable[[str], str]


class PacedClient:
    """The connector's HTTP client for its field calls, counted by the connector's limiter.

    The vendor counts a field call in the same window as a push. Sent past the limiter, it
    left the limiter's log of our requests one short: when the window then filled, the vendor's
    count could not be explained by our own requests, and the limiter took it for another
    client sharing the allowance and waited a whole window (HubSpot: 10 s) instead of until
    our oldest request left (`tests/connectors/test_hubspot.py`, bench/README.md "Fixed and
    rolling windows"). So a field call waits its turn and is logged like a push. Its rate
    headers are not taken: a refused field call is the field check's to handle (a short wait,
    then a fresh check, `sync/fields.py`; Mautic's refusal speaks of the hour and would hold
    every push until then), and the pushes' answers keep the limiter's view of the window.
    """

    def __init__(self, client: httpx.AsyncClient, limiter: RateLimiter) -> None:
        self._client = client
        self._limiter = limiter

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self._request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self._request("POST", url, **kwargs)

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        ticket = await self._limiter.acquire()
        try:
            return await self._client.request(method, url, **kwargs)
        finally:
            self._limiter.observe(ticket, None)  # every ticket is observed once


@dataclass(frozen=True, slots=True)
class Fixes:
    """What a person should do about each kind of refusal, for one vendor."""

    vendor: str
    credentials: str  # after a 401
    permissions: str  # after a 402 / 403
    url: str  # after a 404 / 405 / redirect


async def send(
    request: Awaitable[httpx.Response], fixes: Fixes, action: str, scrub: Scrub
) -> httpx.Response:
    """Await the request; a transport error becomes `Transient` (or `Misconfigured`)."""
    try:
        return await request
    except httpx.UnsupportedProtocol:
        raise Misconfigured(f"{fixes.vendor}: {fixes.url}") from None
    except httpx.HTTPError as exc:
        raise Transient(
            scrub(f"Could not reach {fixes.vendor} to {action}: {describe(exc)}")
        ) from None


def message(response: httpx.Response, scrub: Scrub) -> str:
    """The vendor's error text: `message`, Mautic's `errors[].message`, or the body."""
    data = json_body(response)
    text = ""
    if isinstance(data, dict):
        if isinstance(data.get("message"), str):
            text = data["message"]
        elif isinstance(data.get("errors"), list):
            text = "; ".join(
                str(error.get("message"))
                for error in data["errors"]
                if isinstance(error, dict) and error.get("message")
            )
    text = text or body_text(response) or response.reason_phrase or f"HTTP {response.status_code}"
    return scrub(text).rstrip(".")


def raise_for(response: httpx.Response, fixes: Fixes, action: str, scrub: Scrub) -> None:
    """Nothing for a 2xx; otherwise the connector error the status means, with its fix."""
    status = response.status_code
    if 200 <= status < 300:
        return
    text = message(response, scrub)
    vendor = fixes.vendor
    if status == 401:
        raise AuthFailed(
            f"{vendor} refused the credentials (401) to {action}: {text}. {fixes.credentials}",
            401,
        )
    if status in (402, 403):
        raise AuthFailed(
            f"{vendor} refused to {action} ({status}): {text}. {fixes.permissions}", status
        )
    if status in (404, 405) or 300 <= status < 400:
        raise Misconfigured(
            f"{vendor} answered {status} when asked to {action}: {text}. {fixes.url}", status
        )
    if status == 429:
        headers = response.headers
        reset = headers.get("Retry-After") or headers.get("x-sib-ratelimit-reset")
        wait = seconds_header(reset, 10.0)
        raise RateLimited(wait, f"{vendor} rate limit reached while trying to {action}: {text}")
    if status == 408 or status >= 500:
        raise Transient(f"{vendor} answered {status} when asked to {action}: {text}", status)
    raise ConnectorError(f"{vendor} answered {status} when asked to {action}: {text}", status)


def unreadable(fixes: Fixes, action: str) -> Transient:
    """The error for a 2xx answer whose body is not what the vendor documents."""
    return Transient(f"{fixes.vendor}'s answer could not be read when asked to {action}")
