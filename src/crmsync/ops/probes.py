"""Liveness and readiness, for the API (`/healthz`, `/readyz`) and `crmsync worker --health-port`.

- Liveness (`/healthz`) says the process runs and its event loop answers. It never touches the
  database: an orchestrator restarts a process whose liveness fails, and a database blip must
  not restart every pod.
- Readiness (`/readyz`) says the process can do its work now: the database answers within a
  couple of seconds and its schema is the one this version needs (and, for a worker, its
  heartbeat is current). A process that is not ready is taken out of rotation, not restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from crmsync import __version__
from crmsync.migrate import current_revision, head_revision
from crmsync.netutil import bind_tcp

log = logging.getLogger(__name__)

# Longer than a healthy database ever takes, shorter than a probe's usual 5 s timeout.
DATABASE_TIMEOUT_SECONDS = 2.0


def liveness() -> dict[str, Any]:
    return {"status": "ok", "version": __version__}


async def database_not_ready(engine: AsyncEngine) -> str | None:
    """Why the database cannot be used now, or None when it answers and is migrated."""
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT_SECONDS):
            current = await current_revision(engine)
    except TimeoutError:
        return f"the database did not answer within {DATABASE_TIMEOUT_SECONDS:g} s"
    except Exception as exc:
        # The type only: a driver's message may carry the host, user or password.
        return f"the database is unreachable ({type(exc).__name__})"
    head = head_revision()
    if current != head:
        return (
            f"the database schema is at {current or 'nothing'}, this version needs {head}: "
            "run `crmsync db upgrade`"
        )
    return None


def readiness_response(reason: str | None) -> JSONResponse:
    if reason is None:
        return JSONResponse({"status": "ready", "version": __version__})
    return JSONResponse(
        {"status": "not ready", "reason": reason, "version": __version__}, status_code=503
    )


def worker_probe_app(engine: AsyncEngine, worker_not_ready: Callable[[], str | None]) -> Starlette:
    """`/healthz`, `/readyz` and `/metrics` for a `crmsync worker` (which has no API).

    `worker_not_ready` says why the worker itself is not ready (e.g. its heartbeat is late).
    `/metrics` is this process's counters (pushes, vendor latency, 429s, lost leases); the
    queue gauges come from an API's `/metrics`, which reads them from the database.
    """

    async def healthz(_: Request) -> Response:
        return JSONResponse(liveness())

    async def readyz(_: Request) -> Response:
        return readiness_response(await database_not_ready(engine) or worker_not_ready())

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
        ]
    )


class _QuietServer(uvicorn.Server):
    """A uvicorn server inside another program's event loop: the program owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ProbeServerError(RuntimeError):
    """The health server could not listen (e.g. its port is taken)."""


class ProbeServer:
    """Serves an ASGI app on host:port as a task of the running loop, until `stop()`."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False)
        self._server = _QuietServer(config)
        self._task: asyncio.Task[None] | None = None
        self.address = (host, port)

    async def start(self) -> None:
        """Bind (an OSError names a port in use at once) and serve in the background."""
        host, port = self.address
        try:
            sock = bind_tcp(host, port)
        except OSError as exc:
            raise ProbeServerError(
                f"cannot serve probes on {host}:{port}: {exc.strerror or exc}"
            ) from None
        self.address = sock.getsockname()[:2]
        self._task = asyncio.create_task(self._server.serve([sock]), name="probe-server")
        while not self._server.started:
            if self._task.done():
                await self._task
                raise ProbeServerError("the health server stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
