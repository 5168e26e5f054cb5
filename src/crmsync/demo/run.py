"""`crmsync demo`: the sandbox, the API and its worker in one process, until Ctrl-C or SIGTERM.

Order of a start: the sandbox (a thread of this process, so that nothing of it can outlive the
demo), the schema, the API with its embedded worker; then, in the app's startup, the generated
contacts (first start only) and each CRM's segment; then the banner and the progress lines.

Stopping: uvicorn turns SIGINT and SIGTERM into a graceful shutdown (the worker hands its leases
back within `CRMSYNC_SHUTDOWN_GRACE_SECONDS`), then the sandbox stops. The SQLite writer child
exits when its socket closes, so no process is left behind. Afterwards uvicorn raises the signal
again with the handler it found; `_SignalGate` makes that handler note it instead of killing the
process before the sandbox and the database are closed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

import uvicorn
from fastapi import FastAPI
from rich.console import Console
from rich.logging import RichHandler
from sqlalchemy.exc import DBAPIError

from crmsync import __version__, auth, db, logs
from crmsync.api.app import create_app
from crmsync.demo import seed
from crmsync.demo.config import demo_settings, sandbox_config
from crmsync.demo.options import DemoOptions
from crmsync.demo.progress import ProgressLines, drained, progress_of
from crmsync.enums import Crm
from crmsync.migrate import upgrade
from crmsync.netutil import bind_tcp
from crmsync.ops.service import OpsService
from crmsync.runtime import embed_worker
from crmsync.sandbox import SandboxServer
from crmsync.settings import Settings

POLL_SECONDS = 0.25
TOKEN_HOURS = 12
# The dashboard's sign-in page: the link signs the browser in with the demo's token.
DASHBOARD_PATH = "/login"


class DemoError(Exception):
    """A start that cannot go on (a port in use): one line for the user, exit 1."""


def run(options: DemoOptions, console: Console) -> int:
    """Run the demo until interrupted; the exit code."""
    api_socket = _listen(options.host, options.port, "--port")
    config = sandbox_config()
    sandbox = SandboxServer(config, port=options.sandbox_port)
    try:
        try:
            sandbox.start()
        except OSError as exc:
            raise DemoError(
                f"cannot listen on 127.0.0.1:{options.sandbox_port} for the sandbox "
                f"({exc.strerror}): is another demo or sandbox running? "
                "Choose another port with --sandbox-port"
            ) from None
        settings = demo_settings(options, sandbox.url, config)
        _configure_logs(console, settings)
        gate = _SignalGate()
        with gate.installed():
            asyncio.run(_run(options, settings, sandbox, api_socket, console, gate))
    except KeyboardInterrupt:
        console.print("crmsync demo: interrupted while starting", highlight=False)
        return 130
    finally:
        api_socket.close()
        sandbox.stop()
    console.print("crmsync demo: stopped", highlight=False)
    return 0


def _listen(host: str, port: int, option: str) -> socket.socket:
    """Bind the API's port first, so that a port in use stops the demo before anything starts."""
    try:
        sock = bind_tcp(host, port)
    except OSError as exc:
        raise DemoError(
            f"cannot listen on {host}:{port} ({exc.strerror}): is crmsync already running? "
            f"Choose another port with {option}"
        ) from None
    sock.listen(2048)
    return sock


def _configure_logs(console: Console, settings: Settings) -> None:
    logs.configure(settings.log_format, settings.log_level)
    if console.is_terminal:
        # Through the same console as the progress lines, so a warning prints above them.
        handler = RichHandler(console=console, show_path=False, markup=False)
        logging.getLogger().handlers[:] = [handler]


class _SignalGate:
    """SIGINT and SIGTERM before the server runs interrupt the start (KeyboardInterrupt). While
    it runs, uvicorn handles them; the one it raises again after its shutdown is only noted."""

    def __init__(self) -> None:
        self.serving = False

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if not self.serving:
            raise KeyboardInterrupt
        # Serving: uvicorn's own handler took it; this is its echo after the shutdown.

    @contextmanager
    def installed(self) -> Iterator[None]:
        previous = {s: signal.signal(s, self.handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


async def _run(
    options: DemoOptions,
    settings: Settings,
    sandbox: SandboxServer,
    api_socket: socket.socket,
    console: Console,
    gate: _SignalGate,
) -> None:
    try:
        options.db_path.parent.mkdir(parents=True, exist_ok=True)
        secret, _ = auth.ensure_secret(settings)
    except OSError as exc:
        raise DemoError(
            f"cannot use {options.db_path.parent} for the demo's files ({exc.strerror}): "
            "choose another place with --db"
        ) from None
    engine = db.engine_for(settings)
    try:
        try:
            await upgrade(engine)
        except DBAPIError as exc:
            first = (str(exc.orig) or type(exc.orig).__name__).splitlines()[0]
            raise DemoError(
                f"{options.db_path} cannot be used as the demo's database ({first}): "
                "delete it, or choose another file with --db"
            ) from None
        app = create_app(settings, secret, engine=engine)
        embed_worker(app)
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            ws="none",
            # Requests still open at a Ctrl-C get this long; the worker has its own grace.
            timeout_graceful_shutdown=2,
        )
        server = _Server(config, gate)
        started = _seed_on_startup(app, options.contacts, server)
        serving = asyncio.create_task(server.serve(sockets=[api_socket]), name="api")
        await _wait_started(server, serving)
        if server.started and not server.should_exit:
            _print_banner(console, options, sandbox, secret, started)
            ops = OpsService(engine, settings)
            watch = asyncio.create_task(_watch(console, ops, sandbox, started, options.api_url))
            await asyncio.wait([watch, serving], return_when=asyncio.FIRST_COMPLETED)
            if not watch.done():
                watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)
            elif not serving.done():
                console.print(
                    f"Serving on {options.api_url} until Ctrl-C.", highlight=False, style="bold"
                )
        await serving
    finally:
        await engine.dispose()


@dataclass
class _Started:
    """What the app's startup did, for the banner: seeding and selection results."""

    seeded: seed.Seeded | None = None
    queued: dict[Crm, int] | None = None
    at: float = 0.0


def _seed_on_startup(app: FastAPI, count: int, server: uvicorn.Server) -> _Started:
    """Seed and select in the app's startup, after the embedded worker started (so that the
    selection wakes it at once); not when a Ctrl-C came during the start."""
    started = _Started()

    async def hook(app: FastAPI) -> None:
        if server.should_exit:
            return
        service = app.state.contacts
        started.seeded = await seed.seed_contacts(service, count)
        started.queued = await seed.select_segments(service)
        started.at = time.monotonic()

    app.state.startup_hooks.append(hook)
    return started


class _Server(uvicorn.Server):
    """uvicorn's server with an event for "accepting connections" (it has only a flag), that
    tells the gate when its own signal handlers are in place."""

    def __init__(self, config: uvicorn.Config, gate: _SignalGate) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()
        self.gate = gate

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            self.gate.serving = True
            yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.ready.set()


async def _wait_started(server: _Server, serving: asyncio.Task[None]) -> None:
    ready = asyncio.create_task(server.ready.wait())
    await asyncio.wait([ready, serving], return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()


def _print_banner(
    console: Console,
    options: DemoOptions,
    sandbox: SandboxServer,
    secret: str,
    started: _Started,
) -> None:
    url = options.api_url
    token = auth.mint_token(secret, "demo", dt.timedelta(hours=TOKEN_HOURS))
    out = console.print
    out(
        f"[bold]crmsync {__version__} demo[/]: four sandbox CRMs on this machine; "
        "nothing leaves it.",
        highlight=False,
    )
    out(f"  API        {url}", highlight=False)
    out(f"  API docs   {url}/docs", highlight=False)
    out(f"  Dashboard  {url}{DASHBOARD_PATH}#token={token}", highlight=False)
    out(f"  Sandbox    {sandbox.url}  (stats: {sandbox.control_url}/stats)", highlight=False)
    out(f"  Database   {options.db_path}", highlight=False)
    out(f"  Token      valid {TOKEN_HOURS} h; try:", highlight=False)
    out(f"    export TOKEN={token}", highlight=False, soft_wrap=True)
    out(
        f'    curl -H "Authorization: Bearer $TOKEN" {url}/api/v3/crm/status/summary',
        highlight=False,
        soft_wrap=True,
    )
    seeded = started.seeded
    if seeded is not None and seeded.existing:
        note = f"{seeded.existing} contacts already in the database; none generated"
        if seeded.existing != options.contacts:
            note += f" (delete {options.db_path.name} to start over with --contacts)"
        out(note + ".", highlight=False)
    elif seeded is not None:
        out(f"Generated {seeded.created} contacts.", highlight=False)
    if started.queued is not None:
        out("Selected for each CRM (contacts never selected there before):", highlight=False)
        for crm, count in started.queued.items():
            what = seed.SEGMENTS[crm].description
            out(f"  {crm.value:<8} {count:>5}  {what}", highlight=False)


async def _watch(
    console: Console, ops: OpsService, sandbox: SandboxServer, started: _Started, url: str
) -> None:
    """Progress lines until no row of any CRM is waiting, then what happened on the way."""
    lines = ProgressLines(console)
    try:
        while True:
            progress = progress_of(await ops.summary())
            lines.update(progress)
            if drained(progress):
                break
            await asyncio.sleep(POLL_SECONDS)
    finally:
        lines.close()
    complete = sum(p.complete for p in progress.values())
    errors = sum(p.error for p in progress.values())
    took = time.monotonic() - started.at
    out = console.print
    out(f"Queue drained {took:.1f} s after the selection: {complete} Complete, {errors} Error.")
    stats = await asyncio.to_thread(sandbox.stats)
    faults = {kind: sum(stats[crm.value][kind] for crm in Crm) for kind in ("5xx", "429")}
    answered = [f"{_requests(n)} with a {kind}" for kind, n in faults.items() if n]
    if answered:
        out(
            f"  The sandbox answered {' and '.join(answered)}; crmsync waited and retried.",
            highlight=False,
        )
    if errors:
        out("  The contacts in Error have emails the vendors refused; to list them:")
        out(
            f'    curl -H "Authorization: Bearer $TOKEN" {url}/api/v3/crm/status/failed',
            highlight=False,
        )


def _requests(count: int) -> str:
    return f"{count} request" if count == 1 else f"{count} requests"
