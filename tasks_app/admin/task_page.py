"""What the task page shows above everything else, for the person watching a job: its state, where it runs, how
long and how much so far, what went wrong with its outputs, and which of Cancel / Retry / Re-queue now applies."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tasks_app.models import TERMINAL_STATUSES, Task, TaskRun, TaskStatus, WorkerGroup

# runs.py records a declared output the CLI did not write as `declared output 'out.txt' was not produced`.
_NOT_PRODUCED = re.compile(r"""declared output (['"])(?P<path>.*)\1 was not produced""")


@dataclass(frozen=True)
class TaskHeader:
    group: WorkerGroup | None
    attempt: str  # "2 of 3 (4 in all)": runs of the current budget, the budget, every run since creation
    elapsed_seconds: int | None  # from the first start to the end, or to now while unfinished
    # Per attempt, in the shape of a timeline `usage` event: the page's script replaces the running attempt's
    # entry with each such event, and sums them as this class does.
    run_usage: dict[int, dict[str, Any]]
    waiting_until: datetime | None  # a queued task's retry backoff or scheduled time, when still ahead
    waiting_for: str
    missing_outputs: list[str]
    final_message: str
    prompt_excerpt: str
    can_cancel: bool
    can_retry: bool
    can_requeue_now: bool

    @property
    def elapsed(self) -> str:
        return duration_text(self.elapsed_seconds)

    @property
    def cost(self) -> str:
        """Every attempt's (claude reports its cost when a run ends; the others' are estimated from tokens)."""
        costs = [usage for usage in self.run_usage.values() if usage["cost_usd"] is not None]
        if not costs:
            return "-"
        estimate = " (estimate)" if any(usage["estimate"] for usage in costs) else ""
        return f"${sum(usage['cost_usd'] for usage in costs):.4f}{estimate}"

    @property
    def tokens(self) -> str:
        if all(usage["input_tokens"] is None and usage["output_tokens"] is None for usage in self.run_usage.values()):
            return ""
        total_in = sum(usage["input_tokens"] or 0 for usage in self.run_usage.values())
        total_out = sum(usage["output_tokens"] or 0 for usage in self.run_usage.values())
        return f"{total_in:,} in / {total_out:,} out tokens"


def duration_text(seconds: int | None) -> str:
    """`1 h 02 min 05 s`, `3 min 05 s`, `42 s` (the page's script writes the same while the task runs)."""
    if seconds is None:
        return "-"
    hours, rest = divmod(max(seconds, 0), 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min {seconds:02d} s"
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def missing_outputs(result: dict[str, Any] | None) -> list[str]:
    """Declared outputs that were not produced: `result["missing_outputs"]` where recorded, else read from
    `result["output_errors"]` (tasks finished before that key existed)."""
    result = result if isinstance(result, dict) else {}
    paths = [str(path) for path in result.get("missing_outputs") or []]
    for error in result.get("output_errors") or []:
        match = _NOT_PRODUCED.search(str(error))
        if match and match["path"] not in paths:
            paths.append(match["path"])
    return paths


def task_header(task: Task, *, runs: list[TaskRun], now: datetime, may_operate: bool) -> TaskHeader:
    started = task.started_at or min((run.started_at for run in runs), default=None)
    end = task.finished_at if task.status in TERMINAL_STATUSES else now
    waiting = [(when, why) for when, why in ((task.next_attempt_at, "its retry backoff"),
                                             (task.scheduled_at, "its scheduled time")) if when and when > now]
    waiting_until, waiting_for = max(waiting) if waiting else (None, "")
    prompt = " ".join(task.prompt.split())
    result = task.result if isinstance(task.result, dict) else {}
    return TaskHeader(
        group=task.worker_group,
        attempt=f"{task.attempt - task.attempt_base} of {task.max_attempts} ({task.attempt} in all)",
        elapsed_seconds=int((end - started).total_seconds()) if started and end else None,
        run_usage={run.attempt: {"cost_usd": None if run.cost_usd is None else float(run.cost_usd),
                                 "estimate": run.cost_is_estimate, "input_tokens": run.input_tokens,
                                 "output_tokens": run.output_tokens} for run in runs},
        waiting_until=waiting_until,
        waiting_for=waiting_for,
        missing_outputs=missing_outputs(result),
        final_message=str(result.get("final_message") or ""),
        prompt_excerpt=prompt if len(prompt) <= 300 else f"{prompt[:299]}…",
        can_cancel=may_operate and task.status not in TERMINAL_STATUSES and task.cancel_requested_at is None,
        can_retry=may_operate and task.status in (TaskStatus.FAILED, TaskStatus.CANCELED),
        can_requeue_now=may_operate and task.status == TaskStatus.QUEUED and waiting_until is not None,
    )
