"""How `schedulerctl` prints: JSON with `--json`, otherwise plain lines and tables."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def emit(args: argparse.Namespace, data: Any, render: Callable[[Any], None]) -> None:
    """`data` as one JSON line with `--json`, else as `render` draws it for people."""
    if args.json:
        print(json.dumps(data, indent=None, default=str))
    else:
        render(data)


def table(columns: list[str], rows: list[list[Any]], title: str | None = None, *, compact: bool = False) -> None:
    """`compact`: no borders, for wide tables that should stay one line per row."""
    # rich loads only when a table is drawn: `--json` and one-line commands start without it.
    from rich.console import Console
    from rich.table import Table

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # rich's own answer is SystemExit(1); the entry point ends every closed pipe the same quiet way.
            self.quiet = True
            raise BrokenPipeError

    rich_table = (Table(title=title, box=None, pad_edge=False, header_style="bold") if compact
                  else Table(title=title, show_lines=False))
    for column in columns:
        rich_table.add_column(column, no_wrap=compact or column in ("id", "name", "status"))
    for row in rows:
        rich_table.add_row(*["" if v is None else str(v) for v in row])
    console = _Console()
    if not console.is_terminal:
        console = _Console(width=200)  # piped: do not squeeze into 80 columns
    console.print(rich_table)


def short_id(task_id: str) -> str:
    return task_id[:8]


def timing_text(schedule: dict[str, Any]) -> str:
    """When a schedule (as `presenters.schedule_dict` shapes it) fires, in a few words."""
    if schedule["cron"]:
        return f"cron {schedule['cron']} ({schedule['timezone']})"
    if schedule["interval_seconds"]:
        return f"every {schedule['interval_seconds']} s"
    return f"once at {schedule['run_at']}"


def next_run_text(schedule: dict[str, Any]) -> str:
    """When a schedule fires next, in its own zone. A paused schedule keeps a stale next_run_at (resuming computes
    the next slot from then): it is never shown as if it were due."""
    if schedule["state"] == "paused":
        return "paused"
    if schedule["state"] == "finished":
        return "none (nothing left to fire)"
    return (schedule["next_run_at_local"] or "")[:19]
