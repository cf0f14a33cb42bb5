"""`GET /metrics` in Prometheus format.

Every figure is read from the database at scrape time (cached for SCHEDULER_METRICS_CACHE_SECONDS), so it
covers every worker box without a push gateway or per-process state. Counters are totals over the rows that
exist (runs, tokens, cost); they only grow while rows are kept.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterator

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, F, Q, Sum
from django.db.models.fields.json import KeyTextTransform
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from tasks_app.budgets import DAILY, MONTHLY, GroupSpend
from tasks_app.models import ACTIVE_STATUSES, Task, TaskEvent, TaskRun, TaskStatus, WorkerGroup

DURATION_BUCKETS_SECONDS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
CACHE_KEY = "cli-scheduler-metrics"


class SchedulerCollector:
    def collect(self) -> Iterator[Metric]:
        tasks = GaugeMetricFamily("cli_scheduler_tasks", "Tasks by status, tool and worker group.",
                                  labels=["status", "tool", "worker_group"])
        for status, tool, group, n in (Task.objects.values_list("status", "tool", "worker_group__name")
                                       .annotate(n=Count("id")).order_by()):
            tasks.add_metric([status, tool, group or ""], n)
        yield tasks

        depth = GaugeMetricFamily("cli_scheduler_queue_depth",
                                  "Queued tasks per tool and pinned group ('' = any group of the tool).",
                                  labels=["tool", "worker_group"])
        for tool, group, n in (Task.objects.filter(status=TaskStatus.QUEUED)
                               .values_list("tool", "worker_group__name").annotate(n=Count("id")).order_by()):
            depth.add_metric([tool, group or ""], n)
        yield depth

        running = GaugeMetricFamily("cli_scheduler_group_running", "Leased + running tasks per group.",
                                    labels=["worker_group", "tool"])
        capacity = GaugeMetricFamily("cli_scheduler_group_capacity", "max_concurrent per group.",
                                     labels=["worker_group", "tool"])
        enabled = GaugeMetricFamily("cli_scheduler_group_enabled", "1 if the group takes work.",
                                    labels=["worker_group", "tool"])
        limited = GaugeMetricFamily("cli_scheduler_group_rate_limited_until_seconds",
                                    "Unix time until which the group is rate-limited (0: not limited).",
                                    labels=["worker_group", "tool"])
        spend = GaugeMetricFamily("cli_scheduler_group_spend_usd",
                                  "Cost of the group's runs started in the current UTC day or month (window), runs in "
                                  "flight with their cost so far: what its budgets count.",
                                  labels=["worker_group", "tool", "window"])
        budget = GaugeMetricFamily("cli_scheduler_group_budget_usd",
                                   "The group's daily or monthly budget (window); absent when it has none.",
                                   labels=["worker_group", "tool", "window"])
        groups = list(WorkerGroup.objects.annotate(n=Count("tasks", filter=Q(tasks__status__in=ACTIVE_STATUSES))))
        spent = TaskRun.objects.spend_by_group(group_ids=[group.pk for group in groups], now=timezone.now())
        for group in groups:
            labels = [group.name, group.tool]
            running.add_metric(labels, group.n)
            capacity.add_metric(labels, group.max_concurrent)
            enabled.add_metric(labels, 1 if group.enabled else 0)
            limited.add_metric(labels, group.rate_limited_until.timestamp() if group.rate_limited_until else 0)
            group_spend = spent.get(group.pk, GroupSpend())
            for window in (DAILY, MONTHLY):
                spend.add_metric([*labels, window], float(group_spend.of(window)))
                if group.budget(window) is not None:
                    budget.add_metric([*labels, window], float(group.budget(window)))
        yield from (running, capacity, enabled, limited, spend, budget)

        duration = HistogramMetricFamily("cli_scheduler_run_duration_seconds", "CLI run time per tool.",
                                         labels=["tool"])
        aggregates = {f"le_{b}": Count("id", filter=Q(latency_ms__lte=b * 1000)) for b in DURATION_BUCKETS_SECONDS}
        for row in (TaskRun.objects.filter(latency_ms__isnull=False).values(tool=F("task__tool"))
                    .annotate(total=Count("id"), sum_ms=Sum("latency_ms"), **aggregates).order_by()):
            buckets = [(str(float(b)), row[f"le_{b}"]) for b in DURATION_BUCKETS_SECONDS] + [("+Inf", row["total"])]
            duration.add_metric([row["tool"]], buckets, (row["sum_ms"] or 0) / 1000)
        yield duration

        runs = CounterMetricFamily("cli_scheduler_runs", "Finished runs by outcome and failure kind.",
                                   labels=["tool", "worker_group", "status", "failure_kind"])
        tokens = CounterMetricFamily("cli_scheduler_tokens", "Tokens per account.",
                                     labels=["worker_group", "direction"])
        cost = CounterMetricFamily("cli_scheduler_cost_usd", "Cost in USD per account.", labels=["worker_group"])
        for tool, group, status, kind, n in (TaskRun.objects.exclude(status=TaskRun.Status.RUNNING)
                                             .values_list("task__tool", "worker_group__name", "status", "failure_kind")
                                             .annotate(n=Count("id")).order_by()):
            runs.add_metric([tool, group or "", status, kind], n)
        for row in (TaskRun.objects.values("worker_group__name")
                    .annotate(i=Sum("input_tokens"), o=Sum("output_tokens"), c=Sum("cost_usd")).order_by()):
            name = row["worker_group__name"] or ""
            tokens.add_metric([name, "input"], row["i"] or 0)
            tokens.add_metric([name, "output"], row["o"] or 0)
            cost.add_metric([name], float(row["c"] or 0))
        yield from (runs, tokens, cost)

        retries = CounterMetricFamily("cli_scheduler_retries", "Attempts re-queued, by the failure that caused it.",
                                      labels=["failure_kind"])
        for kind, n in (TaskEvent.objects.filter(from_status=TaskStatus.RUNNING, to_status=TaskStatus.QUEUED)
                        .annotate(kind=KeyTextTransform("failure_kind", "data")).values_list("kind")
                        .annotate(n=Count("id")).order_by()):
            retries.add_metric([kind or ""], n)
        yield retries


def render_metrics() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SchedulerCollector())
    return generate_latest(registry)


# Headers a reverse proxy adds. A request carrying one came through a proxy, so REMOTE_ADDR is the proxy's address
# (usually 127.0.0.1), not the scraper's: the allow-list cannot judge it, only the token can.
PROXY_HEADERS = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PROTO",
                 "HTTP_X_REAL_IP")


def _refusal(request: HttpRequest) -> str:
    """Why this scrape is refused ('' if it is not). Never echoes what the request sent."""
    token = settings.SCHEDULER_METRICS_TOKEN
    if token:
        header = request.headers.get("Authorization", "")
        if secrets.compare_digest(header.encode(), f"Bearer {token}".encode()):
            return ""
        return "metrics: send Authorization: Bearer <SCHEDULER_METRICS_TOKEN>\n"
    if any(request.META.get(name) for name in PROXY_HEADERS):
        return ("metrics: this request came through a proxy, so its source address proves nothing: set "
                "SCHEDULER_METRICS_TOKEN and send Authorization: Bearer <token>\n")
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return "metrics: unknown source address: set SCHEDULER_METRICS_TOKEN\n"
    if any(address in ipaddress.ip_network(net, strict=False) for net in settings.SCHEDULER_METRICS_ALLOW):
        return ""
    return "metrics: scrape from an address in SCHEDULER_METRICS_ALLOW, or set SCHEDULER_METRICS_TOKEN\n"


def metrics_view(request: HttpRequest) -> HttpResponse:
    refusal = _refusal(request)
    if refusal:
        return HttpResponse(refusal, status=403, content_type="text/plain")
    body = cache.get(CACHE_KEY) if settings.SCHEDULER_METRICS_CACHE_SECONDS else None
    if body is None:
        body = render_metrics()
        if settings.SCHEDULER_METRICS_CACHE_SECONDS:
            cache.set(CACHE_KEY, body, settings.SCHEDULER_METRICS_CACHE_SECONDS)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
