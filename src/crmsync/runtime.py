"""Running workers inside `serve` and as `crmsync worker`: start, signals, schema check."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from crmsync import alerts
from crmsync.enums import Crm
from crmsync.migrate import current_revision, head_revision
from crmsync.ops import probes
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


def build_hooks(
    settings: Settings, engine: AsyncEngine, alerter: alerts.Alerter | None = None
) -> Hooks:
    """Listeners that run after each batch and on each pause: the alerter's, when there is one.

    The alerter needs a running loop for its delivery tasks, so it is made and started by
    `worker_hooks`; this only wires it.
    """
    hooks = Hooks()
    if alerter is not None:
        hooks.on_batch.append(alerter.on_batch)
        hooks.on_pause.append(alerter.on_pause)
        hooks.on_outage.append(alerter.on_outage)
    return hooks


@asynccontextmanager
async def worker_hooks(settings: Settings, engine: AsyncEngine) -> AsyncIterator[Hooks]:
    """A worker's hooks with what they need running: alert delivery, when alerts are configured.

    Leave the block only after the worker stopped: on the way out, alerts still collected are
    sent (for a few seconds at most).
    """
    alerter = alerts.from_settings(settings)
    if alerter is None:
        log.info("alerts are off: set CRMSYNC_ALERT_WEBHOOK_URL and/or CRMSYNC_ALERT_EMAIL_TO")
        yield build_hooks(settings, engine)
        return
    async with alerter:
        yield build_hooks(settings, engine, alerter)


def embed_worker(app: FastAPI, crms: Sequence[Crm] | None = None) -> None:
    """Run a worker inside the API process, started and stopped with the app's lifespan."""

    async def start(app: FastAPI) -> None:
        engine: AsyncEngine = app.state.engine
        settings: Settings = app.state.settings
        services = AsyncExitStack()
        try:
            hooks = await services.enter_async_context(worker_hooks(settings, engine))
            worker = Worker(engine, settings, crms, hooks=hooks)
        except BaseException:
            await services.aclose()
            raise
        app.state.worker_services = services
        # A selection made through this API wakes this worker at once.
        app.state.contacts.on_queued = worker.wakeup.notify
        app.state.worker = worker
        app.state.worker_task = asyncio.create_task(worker.run(), name="worker")

    async def stop(app: FastAPI) -> None:
        worker: Worker | None = getattr(app.state, "worker", None)
        if worker is not None:
            worker.stop()
            try:
                await app.state.worker_task
            finally:
                await app.state.worker_services.aclose()  # after the worker: its last alerts

    app.state.startup_hooks.append(start)
    app.state.shutdown_hooks.append(stop)


async def run_worker(
    settings: Settings,
    engine: AsyncEngine,
    crms: Sequence[Crm] | None,
    health_address: tuple[str, int] | None = None,
) -> None:
    """`crmsync worker`: run until SIGTERM or SIGINT, then shut down gracefully.

    With `health_address`, serve `/healthz`, `/readyz` and `/metrics` there while it runs.
    """
    await check_schema(engine)
    async with worker_hooks(settings, engine) as hooks:
        worker = Worker(engine, settings, crms, hooks=hooks)
        probe = None
        if health_address is not None:
            app = probes.worker_probe_app(engine, worker.not_ready)
            probe = probes.ProbeServer(app, *health_address)
            await probe.start()
            log.info("health probes on http://%s:%s/readyz", *probe.address)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        try:
            await worker.run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if probe is not None:
                await probe.stop()
