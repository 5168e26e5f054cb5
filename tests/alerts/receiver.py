"""A Slack-style webhook receiver on a free 127.0.0.1 port, served by uvicorn in the test's loop.

It answers with the statuses queued in `statuses` (then 200), hangs while `hang` is set, and
keeps every JSON body it was sent, in order.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

SECRET_PATH = "/services/T0ALERTS/B0HOOK/s3cr3tW3bh00kT0k3n"
# Generous: only a failing test waits this long.
WAIT_SECONDS = 15.0


async def eventually(predicate: Callable[[], bool], seconds: float = WAIT_SECONDS) -> None:
    """Poll state that another thread (or uvicorn) changes until `predicate` holds."""
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not true after {seconds} s")


class Receiver:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.requests = 0
        self.paths: list[str] = []
        self.statuses: deque[int] = deque()
        self.hang = False
        self._release = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{SECRET_PATH}"

    @property
    def texts(self) -> list[str]:
        return [str(body["text"]) for body in self.received]

    async def _hook(self, request: Request) -> PlainTextResponse:
        self.requests += 1
        self.paths.append(request.url.path)
        if self.hang:
            await self._release.wait()
        status = self.statuses.popleft() if self.statuses else 200
        if status == 200:
            body = await request.json()
            async with self._arrived:
                self.received.append(body)
                self._arrived.notify_all()
        return PlainTextResponse("ok" if status == 200 else "no_service", status_code=status)

    async def wait_for(self, count: int) -> list[str]:
        """The texts once at least `count` arrived (fails after WAIT_SECONDS)."""
        async with asyncio.timeout(WAIT_SECONDS), self._arrived:
            await self._arrived.wait_for(lambda: len(self.received) >= count)
        return self.texts

    def release(self) -> None:
        self.hang = False
        self._release.set()

    async def start(self) -> None:
        app = Starlette(routes=[Route(SECRET_PATH, self._hook, methods=["POST"])])
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        server = self._server
        await eventually(lambda: server.started)

    async def stop(self) -> None:
        self.release()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
