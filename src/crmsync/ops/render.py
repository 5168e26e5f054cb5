"""`crmsync status` as text: the overall status with its reasons, then two tables with a row
per CRM (health, and contacts per sync status). Each fits in 80 columns."""

from __future__ import annotations

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from crmsync.enums import SyncStatus
from crmsync.ops.schemas import CrmHealth, Health, Summary

_STYLE = {"ok": "green", "degraded": "yellow", "down": "red", "disabled": "dim"}


def render_status(console: Console, health: Health, summary: Summary | None) -> None:
    console.print(status_view(health, summary))


def status_view(health: Health, summary: Summary | None) -> Group:
    """The whole status as one renderable (printed once, or refreshed by `status --watch`)."""
    style = _STYLE[health.status.value]
    parts: list[RenderableType] = [
        Text.from_markup(f"crmsync: [bold {style}]{health.status.value}[/]")
    ]
    parts += [Text(f"  - {reason}") for reason in health.reasons]
    if not health.crms:
        return Group(*parts)
    table = Table(
        title=f"Sync health (errors: last {health.error_window_seconds // 60} min; "
        f"synced/min: last {health.throughput_window_seconds // 60} min)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for column in ("CRM", "state", "paused"):
        table.add_column(column)
    for column in ("workers", "due", "lag s", "errors", "synced/min"):
        table.add_column(column, justify="right")
    for name, crm in health.crms.items():
        state = crm.status.value
        table.add_row(
            name,
            f"[{_STYLE[state]}]{state}[/]",
            _paused(crm),
            str(len(crm.workers)),
            str(crm.due),
            f"{crm.lag_seconds:.0f}",
            f"{crm.error_rate:.0%} of {crm.successes + crm.failures}",
            f"{crm.throughput_per_minute:g}",
        )
    parts.append(table)
    if summary is None:
        return Group(*parts)
    counts = Table(
        title=f"Contacts per sync status ({summary.total_contacts} contacts)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    counts.add_column("CRM")
    for status in SyncStatus:
        counts.add_column(status.value, justify="right")
    for name, by_status in summary.crms.items():
        counts.add_row(name, *(str(by_status[status.value]) for status in SyncStatus))
    parts.append(counts)
    return Group(*parts)


def _paused(crm: CrmHealth) -> str:
    """Why it is paused, in a word or two (the reasons above say until when)."""
    kinds = ["manual"] if crm.manual_pause else []
    if crm.pause_kind:
        kinds.append(crm.pause_kind)
    if crm.outage is not None:
        kinds.append("outage")
    return ",".join(kinds) or "-"
