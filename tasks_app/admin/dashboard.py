"""The operators' dashboard: figures from `tasks_app.stats` drawn as inline SVG charts."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.safestring import SafeString, mark_safe

from tasks_app import stats, svg


def _chart(markup: str) -> SafeString:
    return mark_safe(markup)  # noqa: S308 -- tasks_app.svg escapes every label and value it embeds


def dashboard_view(request: HttpRequest) -> TemplateResponse:
    """Figures and charts from `tasks_app.stats`; staff only (wrapped in `admin_view` in `tasks_app.admin`)."""
    data = stats.dashboard()
    days = [day.strftime("%a %d") for day in data.usage_days]
    groups = sorted({row.group for row in data.usage})
    per_day = {(row.day, row.group): row for row in data.usage}
    # Every account with a daily budget has its line on the cost chart, spending or not.
    budgets = {group.name: float(group.daily_budget_usd) for group in data.groups
               if group.daily_budget_usd is not None}

    def series(value: Callable[[stats.DailyUsage], float], names: list[str]) -> list[tuple[str, list[float]]]:
        return [(group, [value(per_day[day, group]) if (day, group) in per_day else 0 for day in data.usage_days])
                for group in names]

    charts = {
        "status": svg.bar_chart(data.status_counts, title="Tasks by status"),
        "groups": svg.stacked_bar(
            [(group.name, (group.running, max(group.max_concurrent - group.running, 0)),
              f"{group.running}/{group.max_concurrent}" if group.live_workers else "no worker")
             for group in data.groups],
            series=("running", "free"), title="Running vs max_concurrent per group"),
        "success": svg.bar_chart([(tool.tool, tool.success_percent) for tool in data.tools if tool.finished],
                                 title="Success rate per tool, last 24 h", maximum=100,
                                 format_value=lambda value: f"{value:.1f}%", color=svg.PALETTE[4]),
        "tokens": svg.column_chart(days, series(lambda row: row.tokens, groups), title="Tokens per day per account"),
        "cost": svg.budget_column_chart(days, series(lambda row: float(row.cost_usd), sorted({*groups, *budgets})),
                                        budgets=budgets, title="Cost (USD) per UTC day per account, daily budgets"),
        "failures": svg.bar_chart(data.failure_counts, title="Failed runs by kind, last 24 h",
                                  color=svg.PALETTE[3]),
    }
    context = {**admin.site.each_context(request), "title": "Dashboard", "data": data,
               "charts": {name: _chart(markup) for name, markup in charts.items()}}
    return TemplateResponse(request, "admin/cockpit/dashboard.html", context)
