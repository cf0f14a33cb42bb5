"""Read-only figures for the operators' dashboard (`admin/dashboard/`).

Every figure is a handful of aggregate queries over a bounded window (24 hours, or the last 7 calendar days in
the current time zone); nothing here loops over table rows in Python except the latency values of one day's
succeeded runs on SQLite, which has no percentile aggregate."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Aggregate, Count, FloatField, Q
from django.db.models.functions import Right
from django.utils import timezone

from tasks_app import selectors
from tasks_app.models import Task, TaskRun, TaskStatus, Tool

HEALTH_WINDOW = timedelta(hours=24)
USAGE_DAYS = 7
RECENT_FAILURES = 10
ERROR_LINE_CHARS = 140
NO_GROUP = "(no group)"


class _Median(Aggregate):
    """PostgreSQL's exact median; interpolates between the two middle values like `statistics.median`."""

    function = "PERCENTILE_CONT"
    template = "%(function)s(0.5) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()


@dataclass(frozen=True)
class GroupLoad:
    name: str
    tool: str
    enabled: bool
    max_concurrent: int
    running: int  # leased + running
    queued: int  # queued tasks assigned to this group (pinned ones)
    rate_limited_until: datetime | None
    rate_limited: bool
    health: str = "ok"
    live_workers: int = 0
    daily_budget_usd: Decimal | None = None
    monthly_budget_usd: Decimal | None = None
    spend_today_usd: Decimal = Decimal(0)
    spend_month_usd: Decimal = Decimal(0)

    @property
    def utilisation_percent(self) -> float:
        return 100 * self.running / self.max_concurrent

    @property
    def load_text(self) -> str:
        """The load as a person reads it. With no live worker nothing runs, whatever its slots say (a lease of a
        worker that died holds one until it expires): "no worker", never a percentage."""
        return f"{self.utilisation_percent:.0f}%" if self.live_workers else "no worker"


@dataclass(frozen=True)
class ToolHealth:
    tool: str
    finished: int
    succeeded: int
    median_latency_ms: float | None  # of the succeeded runs

    @property
    def success_percent(self) -> float | None:
        return 100 * self.succeeded / self.finished if self.finished else None


@dataclass(frozen=True)
class DailyUsage:
    day: date
    group: str
    runs: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class FailedRun:
    task_id: Any
    attempt: int
    group: str
    failure_kind: str
    finished_at: datetime
    error: str


@dataclass(frozen=True)
class Dashboard:
    now: datetime
    status_counts: list[tuple[str, int]]
    groups: list[GroupLoad]
    queued_any_group: list[tuple[str, int]]  # per tool: queued tasks not pinned to a group
    tools: list[ToolHealth]
    usage_days: list[date]
    usage: list[DailyUsage]
    failure_counts: list[tuple[str, int]]
    recent_failures: list[FailedRun]


def task_status_counts() -> list[tuple[str, int]]:
    """Every status, in lifecycle order, zeros included."""
    counts = dict(Task.objects.values_list("status").annotate(n=Count("id")).order_by())
    return [(status, counts.get(status, 0)) for status in TaskStatus.values]


def group_loads(*, now: datetime) -> list[GroupLoad]:
    return [
        GroupLoad(name=group.name, tool=group.tool, enabled=group.enabled, max_concurrent=group.max_concurrent,
                  running=group.running, queued=group.queued, rate_limited_until=group.rate_limited_until,
                  rate_limited=group.rate_limited_until is not None and group.rate_limited_until > now,
                  health=group.health, live_workers=group.live_workers, daily_budget_usd=group.daily_budget_usd,
                  monthly_budget_usd=group.monthly_budget_usd, spend_today_usd=group.spend.today_usd,
                  spend_month_usd=group.spend.month_usd)
        for group in selectors.groups_attach_live_workers(selectors.group_list(), now=now)
    ]


def queued_without_group() -> list[tuple[str, int]]:
    """Queued tasks any account of their tool may take, per tool (tools with none left out)."""
    rows = (Task.objects.filter(status=TaskStatus.QUEUED, worker_group__isnull=True)
            .values_list("tool").annotate(n=Count("id")).order_by("tool"))
    return list(rows)


def tool_health(*, now: datetime, window: timedelta = HEALTH_WINDOW) -> list[ToolHealth]:
    """Runs finished in the window, per tool: success rate = succeeded / finished (failed and canceled count as
    finished), and the median latency of the succeeded ones. Every tool is listed, idle ones with zeros."""
    finished = TaskRun.objects.filter(finished_at__gt=now - window, finished_at__lte=now)
    counts = {
        row["task__tool"]: row
        for row in finished.values("task__tool").annotate(
            finished=Count("id"), succeeded=Count("id", filter=Q(status=TaskRun.Status.SUCCEEDED))
        ).order_by()
    }
    latencies = finished.filter(status=TaskRun.Status.SUCCEEDED, latency_ms__isnull=False)
    if connection.vendor == "postgresql":
        medians = dict(latencies.values_list("task__tool").annotate(median=_Median("latency_ms")).order_by())
    else:
        by_tool: dict[str, list[int]] = defaultdict(list)
        for tool, latency in latencies.values_list("task__tool", "latency_ms").iterator():
            by_tool[tool].append(latency)
        medians = {tool: float(statistics.median(values)) for tool, values in by_tool.items()}
    return [
        ToolHealth(tool=tool, finished=counts.get(tool, {}).get("finished", 0),
                   succeeded=counts.get(tool, {}).get("succeeded", 0), median_latency_ms=medians.get(tool))
        for tool in Tool.values
    ]


def usage_days(*, now: datetime, days: int = USAGE_DAYS) -> list[date]:
    """The last `days` UTC days, today included: the days of the accounts' daily budgets."""
    today = now.astimezone(UTC).date()
    return [today - timedelta(days=offset) for offset in range(days - 1, -1, -1)]


def daily_usage(*, now: datetime, days: int = USAGE_DAYS) -> list[DailyUsage]:
    """Tokens and cost of the runs started on each of the last `days` UTC days (today included; runs in flight with
    their cost so far), per worker group: what the daily budgets count. Only (day, group) pairs with runs are
    returned, ordered by day then group (runs without a group last)."""
    shown = usage_days(now=now, days=days)
    return [
        DailyUsage(day=row.day, group=row.key or NO_GROUP, runs=row.runs, input_tokens=row.input_tokens,
                   output_tokens=row.output_tokens, cost_usd=row.cost_usd)
        for row in selectors.usage_per_day(since=shown[0], until=shown[-1], by="group")
    ]


def failure_counts(*, now: datetime, window: timedelta = HEALTH_WINDOW) -> list[tuple[str, int]]:
    """Failed runs finished in the window, per failure kind, most frequent first (canceled runs excluded)."""
    rows = (TaskRun.objects.filter(status=TaskRun.Status.FAILED, finished_at__gt=now - window, finished_at__lte=now)
            .values_list("failure_kind").annotate(n=Count("id")).order_by("-n", "failure_kind"))
    return list(rows)


def recent_failures(*, now: datetime, window: timedelta = HEALTH_WINDOW,
                    limit: int = RECENT_FAILURES) -> list[FailedRun]:
    rows = (
        TaskRun.objects.filter(status=TaskRun.Status.FAILED, finished_at__gt=now - window, finished_at__lte=now)
        .order_by("-finished_at", "-id")
        # Only the tail of stderr: a run keeps up to megabytes of output.
        .annotate(stderr_tail=Right("stderr", 500))
        .values("task_id", "attempt", "worker_group__name", "failure_kind", "finished_at", "exit_code",
                "stderr_tail", "task__attempt", "task__error_message")[:limit]
    )
    return [
        FailedRun(task_id=row["task_id"], attempt=row["attempt"], group=row["worker_group__name"] or NO_GROUP,
                  failure_kind=row["failure_kind"], finished_at=row["finished_at"], error=_error_line(row))
        for row in rows
    ]


def _error_line(row: dict[str, Any]) -> str:
    # The task keeps only its latest attempt's message; an earlier attempt's error is read from its stderr.
    message = row["task__error_message"] if row["attempt"] == row["task__attempt"] else ""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    if lines:
        text = lines[0]
    else:
        stderr_lines = [line.strip() for line in (row["stderr_tail"] or "").splitlines() if line.strip()]
        if stderr_lines:
            text = stderr_lines[-1]
        elif row["exit_code"] is not None:
            text = f"exit code {row['exit_code']}"
        else:
            text = "-"
    text = " ".join(text.split())
    return text if len(text) <= ERROR_LINE_CHARS else f"{text[:ERROR_LINE_CHARS - 1]}…"


def dashboard(*, now: datetime | None = None) -> Dashboard:
    now = now or timezone.now()
    return Dashboard(
        now=now,
        status_counts=task_status_counts(),
        groups=group_loads(now=now),
        queued_any_group=queued_without_group(),
        tools=tool_health(now=now),
        usage_days=usage_days(now=now),
        usage=daily_usage(now=now),
        failure_counts=failure_counts(now=now),
        recent_failures=recent_failures(now=now),
    )
