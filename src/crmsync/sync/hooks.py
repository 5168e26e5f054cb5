"""Listeners a worker calls as it syncs (alerting hooks in here), and how it calls them."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from crmsync.enums import Crm
from crmsync.sync import control
from crmsync.sync.state import RowUpdate

__all__ = ["BatchListener", "Hooks", "OutageListener", "PauseListener", "quietly"]

log = logging.getLogger(__name__)

# Called with (crm, applied row updates) after each batch is recorded; alerting hooks in here.
BatchListener = Callable[[Crm, Sequence[RowUpdate]], Awaitable[None]]
PauseListener = Callable[[Crm, control.PauseKind, str], Awaitable[None]]
# Called by every worker when its view of the CRM's outage breaker changes: True once it sees an
# outage (on_pause comes only from the worker that opened it), False once it sees it end.
OutageListener = Callable[[Crm, bool], Awaitable[None]]


@dataclass
class Hooks:
    on_batch: list[BatchListener] = field(default_factory=list)
    on_pause: list[PauseListener] = field(default_factory=list)
    on_outage: list[OutageListener] = field(default_factory=list)


async def quietly(awaitable: Awaitable[None]) -> None:
    """Run a listener; its failure is logged and never disturbs the sync."""
    try:
        await awaitable
    except Exception:
        log.exception("a sync listener failed")
