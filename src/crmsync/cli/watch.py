"""`crmsync status --watch`: the status table refreshed in place until Ctrl-C."""

from __future__ import annotations

import asyncio
import datetime as dt

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from crmsync.cli import common
from crmsync.cli.common import exit_codes
from crmsync.ops.render import status_view
from crmsync.ops.service import OpsService
from crmsync.runtime import check_schema
from crmsync.settings import Settings


def run(settings: Settings, max_lag_seconds: float, interval: float) -> None:
    """Refresh until Ctrl-C (exit 0). On a terminal the view is redrawn in place (Rich Live);
    otherwise each refresh is printed below the last one, after a time line."""
    console = Console()

    async def _frames() -> None:
        engine = common.open_engine(settings)
        try:
            await check_schema(engine)
            ops = OpsService(engine, settings)
            if console.is_interactive:
                with Live(console=console, auto_refresh=False) as live:
                    while True:
                        live.update(await _frame(ops, max_lag_seconds, interval), refresh=True)
                        await asyncio.sleep(interval)
            else:
                while True:
                    console.print(await _frame(ops, max_lag_seconds, interval))
                    console.print()
                    console.file.flush()
                    await asyncio.sleep(interval)
        finally:
            await engine.dispose()

    try:
        with exit_codes(settings):
            asyncio.run(_frames())
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


async def _frame(ops: OpsService, max_lag_seconds: float, interval: float) -> Group:
    # A database that stops answering shows as "down" here; the watch goes on.
    health, summary = await ops.overview(max_lag_seconds)
    now = dt.datetime.now().astimezone().strftime("%H:%M:%S")
    header = Text(f"{now}  refreshed every {interval:g} s; Ctrl-C stops", style="dim")
    return Group(header, status_view(health, summary))
