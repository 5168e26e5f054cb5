"""One progress line per CRM while the demo's queue drains: a live Rich display on a terminal,
plain lines (one per change) otherwise."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from crmsync.enums import Crm, SyncStatus
from crmsync.ops.schemas import Summary

_WAITING = (SyncStatus.Selected, SyncStatus.Queued, SyncStatus.Processing)


@dataclass(frozen=True)
class CrmProgress:
    complete: int
    error: int
    waiting: int  # selected, queued or being pushed: still to go

    @classmethod
    def of(cls, counts: dict[str, int]) -> CrmProgress:
        return cls(
            complete=counts[SyncStatus.Complete.value],
            error=counts[SyncStatus.Error.value],
            waiting=sum(counts[status.value] for status in _WAITING),
        )

    @property
    def done(self) -> int:
        return self.complete + self.error

    @property
    def total(self) -> int:
        return self.done + self.waiting

    def detail(self) -> str:
        text = f"{self.complete} Complete"
        if self.error:
            text += f", {self.error} Error"
        if self.waiting:
            text += f", {self.waiting} to go"
        return text


def progress_of(summary: Summary) -> dict[Crm, CrmProgress]:
    return {crm: CrmProgress.of(summary.crms[crm.value]) for crm in Crm}


def drained(progress: dict[Crm, CrmProgress]) -> bool:
    return all(p.waiting == 0 for p in progress.values())


class ProgressLines:
    """Shows each CRM's progress; `update` with every new summary, `close` when done."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal and not console.is_dumb_terminal
        self._last: dict[Crm, CrmProgress] = {}
        self._bars: Progress | None = None
        self._tasks: dict[Crm, TaskID] = {}
        if self.live:
            self._bars = Progress(
                TextColumn("  {task.description:<8}"),
                BarColumn(bar_width=30),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                console=console,
            )
            for crm in Crm:
                self._tasks[crm] = self._bars.add_task(crm.value, total=None, detail="")
            self._bars.start()

    def update(self, progress: dict[Crm, CrmProgress]) -> None:
        for crm, now in progress.items():
            if self._last.get(crm) == now:
                continue
            self._last[crm] = now
            if self._bars is not None:
                self._bars.update(
                    self._tasks[crm], total=now.total, completed=now.done, detail=now.detail()
                )
            else:
                self.console.print(
                    f"  {crm.value:<8} {now.done:>5}/{now.total:<5} {now.detail()}",
                    highlight=False,
                )

    def close(self) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
