"""The `/_sandbox` control API: inspect stored contacts and statistics, set faults, reset.

- `GET /_sandbox/health`: `{"status": "ok"}` (readiness probe).
- `GET /_sandbox/stats`: per vendor `requests`, `contacts_received`, `2xx`/`4xx`/`429`/`5xx`,
  `dropped`, `in_flight`, `peak_concurrent`, `by_endpoint`, `contacts_stored`, `options`.
- `POST /_sandbox/reset[?faults=true]`: forget contacts, processes, stats and limiter windows of
  every vendor; with `faults=true` also restore the options the sandbox started with.
- `POST /_sandbox/{crm}/reset[?faults=true]`: the same for one vendor.
- `GET /_sandbox/{crm}/contacts[?email=]`: stored contacts, a list in creation order.
- `GET /_sandbox/{crm}/pushes`: with `SandboxConfig(push_log=True)`, every accepted contact write
  in order: `{"email", "at" (Unix time, s), "sender" (the `X-Crmsync-Worker` header or "")}`;
  400 when the push log is off.
- `GET /_sandbox/{crm}/requests`: with `SandboxConfig(request_log=True)`, every request the
  vendor received, in order: `{"at" (Unix time, s), "endpoint", "status" (0: dropped),
  "sender"}`; 400 when the request log is off.
- `GET /_sandbox/{crm}/faults`: the vendor's current fault/limit options (`outage` switches a
  vendor outage on and off: `"5xx"`, `"drop"` or `"off"`).
- `PUT /_sandbox/{crm}/faults`: merge a JSON object into them; 400 `{"error": ...}` naming an
  unknown key or a bad value (nothing is applied then).
- `GET /_sandbox/brevo/processes`: Brevo import processes and their row counts.
- `GET /_sandbox/n8n/idempotency-keys`: Idempotency-Key -> times seen.

Control requests are not counted in vendor statistics and never see injected faults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from crmsync.sandbox.common import BadRequestBody, JSONResponse, Vendor, read_json
from crmsync.sandbox.config import validate_updates

if TYPE_CHECKING:
    from crmsync.sandbox.app import Sandbox


def _problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true", "yes")


def control_routes(sandbox: Sandbox) -> list[BaseRoute]:
    def vendor_of(request: Request) -> Vendor | None:
        return sandbox.vendors.get(request.path_params["crm"])

    def unknown(request: Request) -> JSONResponse:
        names = ", ".join(sandbox.vendors)
        return _problem(404, f"unknown CRM {request.path_params['crm']!r}; expected one of {names}")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def stats(request: Request) -> Response:
        return JSONResponse({name: v.inspect() for name, v in sandbox.vendors.items()})

    async def reset_all(request: Request) -> Response:
        sandbox.reset(faults=_flag(request, "faults"))
        return JSONResponse({"reset": list(sandbox.vendors), "faults": _flag(request, "faults")})

    async def reset_one(request: Request) -> Response:
        vendor = vendor_of(request)
        if vendor is None:
            return unknown(request)
        vendor.reset(faults=_flag(request, "faults"))
        return JSONResponse({"reset": [vendor.name], "faults": _flag(request, "faults")})

    async def contacts(request: Request) -> Response:
        vendor = vendor_of(request)
        if vendor is None:
            return unknown(request)
        email = request.query_params.get("email")
        if email is not None:
            found = vendor.store.get(email)
            return JSONResponse([found.as_json()] if found is not None else [])
        return JSONResponse([c.as_json() for c in vendor.store.by_email.values()])

    async def pushes(request: Request) -> Response:
        vendor = vendor_of(request)
        if vendor is None:
            return unknown(request)
        log = vendor.store.pushes
        if log is None:
            return _problem(400, "the push log is off: start the sandbox with push_log=True")
        return JSONResponse([{"email": e, "at": at, "sender": who} for e, at, who in log])

    async def requests(request: Request) -> Response:
        vendor = vendor_of(request)
        if vendor is None:
            return unknown(request)
        if vendor.requests is None:
            return _problem(400, "the request log is off: start the sandbox with request_log=True")
        return JSONResponse([logged.as_json() for logged in vendor.requests])

    async def get_faults(request: Request) -> Response:
        vendor = vendor_of(request)
        return unknown(request) if vendor is None else JSONResponse(vendor.opts)

    async def put_faults(request: Request) -> Response:
        vendor = vendor_of(request)
        if vendor is None:
            return unknown(request)
        try:
            updates: Any = await read_json(request)
        except BadRequestBody as exc:
            return _problem(400, exc.message)
        if not isinstance(updates, dict):
            return _problem(400, "body must be a JSON object of option names to values")
        try:
            clean = validate_updates(vendor.name, updates)
        except ValueError as exc:
            return _problem(400, str(exc))
        for key, value in clean.items():
            setattr(vendor.options, key, value)
        return JSONResponse(vendor.opts)

    async def brevo_processes(request: Request) -> Response:
        return JSONResponse(sandbox.brevo.inspect_processes())

    async def n8n_keys(request: Request) -> Response:
        return JSONResponse(sandbox.n8n.idempotency_keys)

    return [
        Route("/health", health, methods=["GET"]),
        Route("/stats", stats, methods=["GET"]),
        Route("/reset", reset_all, methods=["POST"]),
        Route("/brevo/processes", brevo_processes, methods=["GET"]),
        Route("/n8n/idempotency-keys", n8n_keys, methods=["GET"]),
        Route("/{crm}/reset", reset_one, methods=["POST"]),
        Route("/{crm}/contacts", contacts, methods=["GET"]),
        Route("/{crm}/pushes", pushes, methods=["GET"]),
        Route("/{crm}/requests", requests, methods=["GET"]),
        Route("/{crm}/faults", get_faults, methods=["GET"]),
        Route("/{crm}/faults", put_faults, methods=["PUT"]),
    ]
