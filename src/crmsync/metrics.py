"""Prometheus metrics the worker updates as it goes (queue gauges are computed at scrape time)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PUSHES = Counter(
    "crmsync_pushes", "Row outcomes recorded by workers, by CRM and outcome", ["crm", "outcome"]
)
VENDOR_LATENCY = Histogram(
    "crmsync_vendor_request_seconds",
    "Duration of one connector push (a batch) by CRM",
    ["crm"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
RATE_LIMITED = Counter("crmsync_rate_limited", "Batches answered 429 by the vendor", ["crm"])
LEASE_LOST = Counter(
    "crmsync_lease_lost", "Row results not applied because the lease was lost", ["crm"]
)
HEARTBEAT = Gauge(
    "crmsync_worker_heartbeat_timestamp_seconds", "Unix time of this worker's last heartbeat"
)
IN_FLIGHT = Gauge("crmsync_batches_in_flight", "Batches being pushed right now", ["crm"])
