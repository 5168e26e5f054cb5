"""`crmsync worker --until-empty`: per-CRM progress (Rich bars on a terminal, plain lines
otherwise) and the final summary; the drain itself is `ops.drain`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from types import TracebackType

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from crmsync.cli import common
from crmsync.enums import Crm
from crmsync.ops import drain
from crmsync.settings import Settings

# Plain output: a CRM's line is printed when its numbers changed, at most this often.
PLAIN_EVERY_SECONDS = 5.0


def _waiting(p: drain.CrmProgress) -> str:
    if not p.waiting:
        return ""
    when = p.next_retry.astimezone().strftime("%H:%M:%S") if p.next_retry else None
    return f"{p.waiting} waiting for a retry" + (f" (next at {when})" if when else "")


def _numbers(p: drain.CrmProgress) -> str:
    parts = [f"{p.finished} done", f"{p.active} left"]
    if p.waiting:
        parts.append(_waiting(p))
    parts.append(f"{p.error} in Error")
    return ", ".join(parts)


def _shown(p: drain.CrmProgress) -> bool:
    """CRMs with nothing to do in this run are left out: most setups use only some."""
    return p.active > 0 or p.finished > 0


class Reporter:
    """Shows progress as it comes; a context manager (the Rich display runs inside it)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.rich = console.is_interactive
        self._printed: dict[Crm, tuple[tuple[int, int, int, int], float]] = {}
        self._bars: Progress | None = None
        self._tasks: dict[Crm, TaskID] = {}
        self._blocked: dict[Crm, str] = {}

    def __enter__(self) -> Reporter:
        if self.rich:
            self._bars = Progress(
                TextColumn("{task.description:<8}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                console=self.console,
            )
            self._bars.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bars is not None:
            self._bars.stop()

    def __call__(self, progress: drain.Progress) -> None:
        for crm, p in progress.crms.items():
            if p.blocked and self._blocked.get(crm) != p.blocked:
                self.console.print(f"{crm.value}: cannot progress: {p.blocked}", highlight=False)
            self._blocked[crm] = p.blocked or ""
            if not _shown(p):
                continue
            if self._bars is not None:
                self._bar(crm, p)
            else:
                self._line(crm, p)

    def _bar(self, crm: Crm, p: drain.CrmProgress) -> None:
        assert self._bars is not None
        detail = f"{p.error} in Error" + (f", {_waiting(p)}" if p.waiting else "")
        if crm not in self._tasks:
            self._tasks[crm] = self._bars.add_task(crm.value, total=None, detail="")
        total = p.finished + p.active
        self._bars.update(self._tasks[crm], completed=p.finished, total=total or 1, detail=detail)

    def _line(self, crm: Crm, p: drain.CrmProgress, *, force: bool = False) -> None:
        key = (p.finished, p.active, p.error, p.waiting)
        last = self._printed.get(crm)
        now = time.monotonic()
        if last is not None and (last[0] == key or now - last[1] < PLAIN_EVERY_SECONDS):
            if not force:
                return
        self._printed[crm] = (key, now)
        self.console.print(f"{crm.value}: {_numbers(p)}", highlight=False)

    def flush(self, progress: drain.Progress) -> None:
        """Plain output: the last numbers of every CRM shown, whatever was printed before."""
        if self._bars is not None:
            return
        for crm, p in progress.crms.items():
            if _shown(p):
                last = self._printed.get(crm)
                if last is None or last[0] != (p.finished, p.active, p.error, p.waiting):
                    self._line(crm, p, force=True)


def summary(outcome: drain.Outcome, timeout: float | None) -> list[str]:
    """The last lines: what happened to each CRM, and what to do about what is left."""
    progress = outcome.progress
    lines = []
    for crm, p in progress.crms.items():
        if p.active or p.finished or p.error:
            lines.append(
                f"{crm.value}: {p.complete} Complete, {p.error} in Error, {p.active} not done"
            )
    left = sum(p.active for p in progress.crms.values())
    errors = sum(p.error for p in progress.crms.values())
    took = f"{progress.elapsed:.1f} s"
    ending = outcome.ending
    if ending is drain.Ending.interrupted:
        lines.append(f"interrupted after {took}: {left} contact(s) stay queued for the next run")
    elif ending is drain.Ending.not_drained:
        if outcome.timed_out:
            lines.append(
                f"timed out after {timeout:g} s: {left} contact(s) not done yet; "
                "they stay queued for the next run"
            )
            lines += [f"{p.crm.value}: {_waiting(p)}" for p in progress.crms.values() if p.waiting]
        for crm, p in progress.crms.items():
            if p.active and p.blocked:
                lines.append(f"{crm.value}: {p.active} contact(s) wait: {p.blocked}")
    elif ending is drain.Ending.errors:
        failed = [crm.value for crm, p in progress.crms.items() if p.error]
        which = f" --crm {failed[0]}" if len(failed) == 1 else ""
        lines.append(
            f"queue empty after {took}; {errors} selected contact(s) in Error "
            f"(`crmsync failed{which}` lists them with the vendor's reason)"
        )
    elif left == 0 and not any(p.finished for p in progress.crms.values()):
        lines.append("nothing to push: every selected contact is Complete")
    else:
        lines.append(f"queue empty after {took}: every selected contact is Complete")
    return lines


def run(settings: Settings, crms: Sequence[Crm] | None, timeout: float | None) -> None:
    """Drain, report, and exit with the outcome's code."""
    if crms:
        unusable = {crm: why for crm in crms if (why := settings.crm(crm).missing())}
        if unusable:
            lines = "; ".join(f"{crm.value}: {why}" for crm, why in unusable.items())
            raise common.fail(f"cannot push to a CRM that is not configured: {lines}", 2)
    console = Console(stderr=True)
    _quiet_logs(settings, console)

    async def _run() -> drain.Outcome:
        engine = common.open_engine(settings)
        try:
            return await drain.until_empty(
                engine, settings, crms, give_up_after=timeout, on_progress=reporter
            )
        finally:
            await engine.dispose()

    with common.exit_codes(settings), Reporter(console) as reporter:
        outcome = asyncio.run(_run())
        reporter.flush(outcome.progress)
    for line in summary(outcome, timeout):
        typer.echo(line)
    raise typer.Exit(int(outcome.ending))


def _quiet_logs(settings: Settings, console: Console) -> None:
    """The progress display replaces the worker's per-cycle INFO lines; warnings still show.

    An explicit CRMSYNC_LOG_LEVEL is kept. On a terminal, log lines go through the display's
    console so that they print above the bars instead of through them.
    """
    root = logging.getLogger()
    if "log_level" not in settings.model_fields_set:
        root.setLevel(logging.WARNING)
    if console.is_interactive and settings.log_format == "text":
        root.handlers[:] = [RichHandler(console=console, show_path=False)]
