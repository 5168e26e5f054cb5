"""Running workers inside `serve` and as `crmsync worker`: start, signals, schema check."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync.enums import Crm
from crmsync.migrate import current_revision, head_revision
from crmsync.settings import Settings
from crmsync.sync.worker import Hooks, Worker

log = logging.getLogger(__name__)


class SchemaOutdated(RuntimeError):
    pass


async def check_schema(engine: AsyncEngine) -> None:
    """Workers never migrate (several would race); they refuse an outdated schema instead."""
    current, head = await current_revision(engine), head_revision()
    if current != head:
        raise SchemaOutdated(
            f"the database schema is at {current or 'nothing'}, this version needs {head}: "
            "run `crmsync db upgrade` first"
        )


def build_hooks(settings: Settings, engine: AsyncEngine) -> Hooks:
    """Listeners that run after each batch (alerting plugs in here)."""
    return Hooks()


def embed_worker(app: FastAPI, crms: Sequence[Crm] | None = None) -> None:
    """Run a worker inside the API process, started and stopped with the app's lifespan."""

    async def start(app: FastAPI) -> None:
        engine: AsyncEngine = app.state.engine
        settings: Settings = app.state.settings
        worker = Worker(engine, settings, crms, hooks=build_hooks(settings, engine))
        # A selection made through this API wakes this worker at once.
        app.state.contacts.on_queued = worker.wakeup.notify
        app.state.worker = worker
        app.state.worker_task = asyncio.create_task(worker.run(), name="worker")

    async def stop(app: FastAPI) -> None:
        worker: Worker | None = getattr(app.state, "worker", None)
        if worker is not None:
            worker.stop()
            await app.state.worker_task

    app.state.startup_hooks.append(start)
    app.state.shutdown_hooks.append(stop)


async def run_worker(settings: Settings, engine: AsyncEngine, crms: Sequence[Crm] | None) -> None:
    """`crmsync worker`: run until SIGTERM or SIGINT, then shut down gracefully."""
    await check_schema(engine)
    worker = Worker(engine, settings, crms, hooks=build_hooks(settings, engine))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
