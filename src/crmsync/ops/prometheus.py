"""The `/metrics` exposition: this process's counters plus gauges read from the database.

Counters and histograms (`crmsync.metrics`) live in the process whose worker updates them: the
API process's embedded worker, or a `crmsync worker --health-port` process. The queue gauges
below are computed from the database at scrape time (a fresh `Snapshot` per scrape, in a
per-scrape registry), so every API instance reports the same cluster-wide values.

| metric | type | labels | meaning |
|---|---|---|---|
| `crmsync_database_up` | gauge | | 1 when the scrape could read the database |
| `crmsync_contacts` | gauge | | contacts in the database |
| `crmsync_queue_depth` | gauge | crm, status | contacts per sync status (as the summary) |
| `crmsync_queue_due` | gauge | crm | rows a worker would claim now |
| `crmsync_queue_lag_seconds` | gauge | crm | age of the oldest due row (0: none due) |
| `crmsync_workers_alive` | gauge | crm | live workers serving the CRM |
| `crmsync_crm_enabled` | gauge | crm | 1 when configured here or served by a live worker |
| `crmsync_crm_paused` | gauge | crm, reason | 1 while paused (manual, rate_limit, auth, ...) |
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from crmsync.enums import Crm, SyncStatus
from crmsync.ops.service import OpsService
from crmsync.ops.snapshot import Snapshot
from crmsync.sync.control import PauseKind

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
PAUSE_REASONS = ("manual", *(kind.value for kind in PauseKind))


class SnapshotCollector(Collector):
    """Gauges from one database snapshot (None: the database could not be read)."""

    def __init__(self, snap: Snapshot | None, enabled: dict[Crm, bool]) -> None:
        self.snap = snap
        self.enabled = enabled

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("crmsync_database_up", "1 when this scrape could read the database")
        up.add_metric([], 0 if self.snap is None else 1)
        yield up
        snap = self.snap
        if snap is None:
            return
        total = GaugeMetricFamily("crmsync_contacts", "Contacts in the database")
        total.add_metric([], snap.total_contacts)
        depth = GaugeMetricFamily(
            "crmsync_queue_depth",
            "Contacts per CRM and sync status (New includes contacts never selected)",
            labels=["crm", "status"],
        )
        due = GaugeMetricFamily(
            "crmsync_queue_due", "Rows a worker would claim now, per CRM", labels=["crm"]
        )
        lag = GaugeMetricFamily(
            "crmsync_queue_lag_seconds",
            "Age in seconds of the oldest due row, per CRM (0 when none is due)",
            labels=["crm"],
        )
        alive = GaugeMetricFamily(
            "crmsync_workers_alive", "Live workers serving each CRM", labels=["crm"]
        )
        enabled = GaugeMetricFamily(
            "crmsync_crm_enabled",
            "1 when the CRM is configured here or served by a live worker",
            labels=["crm"],
        )
        paused = GaugeMetricFamily(
            "crmsync_crm_paused",
            "1 while the CRM is paused, by reason (manual, rate_limit, auth, configuration, "
            "budget, outage)",
            labels=["crm", "reason"],
        )
        for crm in Crm:
            queue = snap.queue(crm)
            for status in SyncStatus:
                depth.add_metric([crm.value, status.value], queue[status.value])
            due.add_metric([crm.value], snap.due_count(crm))
            lag.add_metric([crm.value], snap.lag_seconds(crm))
            serving = len(snap.serving(crm))
            alive.add_metric([crm.value], serving)
            enabled.add_metric([crm.value], 1 if self.enabled[crm] or serving else 0)
            ctl = snap.controls[crm]
            timed = ctl.paused_until is not None and ctl.paused_until > snap.now
            for reason in PAUSE_REASONS:
                if reason == "manual":
                    on = ctl.manual_pause
                elif reason == PauseKind.outage.value:
                    on = ctl.in_outage
                else:
                    on = timed and ctl.pause_kind == reason
                paused.add_metric([crm.value, reason], 1 if on else 0)
        yield from (total, depth, due, lag, alive, enabled, paused)


async def exposition(ops: OpsService) -> bytes:
    """The text exposition: process metrics, then the database gauges of this very moment."""
    snap: Snapshot | None
    try:
        snap = await ops.snapshot(with_outcomes=False)
    except Exception as exc:
        log.warning("metrics: the database could not be read (%s)", type(exc).__name__)
        snap = None
    enabled = {crm: ops.settings.crm(crm).missing() is None for crm in Crm}
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(SnapshotCollector(snap, enabled))
    return generate_latest(REGISTRY) + generate_latest(scrape)
