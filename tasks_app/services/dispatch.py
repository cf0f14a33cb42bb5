"""The dispatcher: lease runnable queued tasks to groups with free slots, then send one message each.

Locking design
--------------
Only a lease *adds* load to a group; finishing, failing, expiring and cancelling only remove it. So the
cap holds across every box if leases are decided one pass at a time with fresh counts, and nothing else
needs to coordinate:

* PostgreSQL: each pass runs in one transaction that first takes a transaction-scoped advisory lock
  (``pg_advisory_xact_lock``). Passes from any number of control workers queue on it; inside, the live
  counts (``leased`` + ``running`` per group and per ConcurrencyLimit scope) are read under READ COMMITTED
  and are exact for leases (only lock holders add them) and at worst stale-high for finishes (which only
  makes a pass more careful until the next one). The batch is leased by ``task_lease_batch``, a
  check-and-set under ``SELECT … FOR UPDATE``, so a cancel racing a lease wins or loses cleanly. A pass is
  short (a few indexed queries, one UPDATE per group and one INSERT of events) and holds no lock while
  anything runs.
* SQLite: the transaction starts with ``BEGIN IMMEDIATE`` (settings), which takes the database's single
  write lock up front, so passes are serialised the same way without an advisory lock.

Order: highest priority first; within a priority, tenants take turns (round robin by each tenant's own
oldest-first order), so one tenant's backlog cannot starve another's. Tenants are found with a loose
index scan (a recursive CTE over ``task_dispatch_idx``) so the cost grows with the number of tenants,
not the depth of the queue. Messages go out only after commit (``enqueue_executions``).

Budgets: a group whose spend this UTC day or month reached its budget takes nothing. Its spend is one more grouped
query per pass, and only when some group has a budget (``budgets_check``, over ``taskrun_group_started_idx``).
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Q
from django.utils import timezone

from tasks_app.models import (
    ACTIVE_STATUSES,
    ConcurrencyLimit,
    OverlapPolicy,
    Schedule,
    Task,
    TaskStatus,
    WorkerGroup,
)
from tasks_app.selectors import live_queue_counts
from tasks_app.services.budgets import budgets_check
from tasks_app.services.enqueue import Lease, enqueue_executions
from tasks_app.transitions import task_lease_batch

logger = logging.getLogger(__name__)

DISPATCH_LOCK_ID = 0x5C4ED  # any constant shared by every dispatcher
# Extra candidates per tenant: a pinned group or a model can fill up within the pass itself.
SLACK_PER_TENANT = 8


def runnable_filter(now: datetime) -> Q:
    return (Q(scheduled_at__isnull=True) | Q(scheduled_at__lte=now)) & (
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    ) & Q(dependencies_pending=0)


def _take_dispatch_lock() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [DISPATCH_LOCK_ID])


def queued_tenants(tool: str) -> list[str]:
    """Distinct tenants with queued tasks of `tool`, by a loose index scan (one index probe per tenant)."""
    table = Task._meta.db_table
    sql = f"""
        WITH RECURSIVE tenants(tenant) AS (
            SELECT MIN(tenant) FROM {table} WHERE status = %s AND tool = %s
            UNION ALL
            SELECT (SELECT MIN(t.tenant) FROM {table} t
                    WHERE t.status = %s AND t.tool = %s AND t.tenant > tenants.tenant)
            FROM tenants WHERE tenants.tenant IS NOT NULL
        )
        SELECT tenant FROM tenants WHERE tenant IS NOT NULL
    """  # noqa: S608 - the table name comes from the model, values are parameters
    with connection.cursor() as cursor:
        cursor.execute(sql, [TaskStatus.QUEUED, tool, TaskStatus.QUEUED, tool])
        return [row[0] for row in cursor.fetchall()]


class Candidate(NamedTuple):
    """What a dispatch decision needs of a queued task: plain values, no model instances (this is hot)."""

    pk: uuid.UUID
    priority: int
    created_at: datetime
    model: str
    worker_group_id: int | None
    worker_group_pinned: bool
    schedule_id: int | None
    overlap_policy: str | None


@dataclass(frozen=True)
class Placeable:
    """What can take a task right now; the candidate query leaves out tasks that could not be placed anyway, so
    any number of them (pinned to a full group, waiting on a busy schedule, of a model at its limit) never
    hides a runnable task behind them."""

    free_groups: frozenset[int]  # groups of the tool with a free slot
    busy_schedules: frozenset[int] = frozenset()  # overlap policy "queue", an instance active
    full_models: frozenset[str] = frozenset()  # `model:<name>` scopes at their limit


def _not_placeable_sql(placeable: Placeable) -> tuple[str, list[object]]:
    clauses: list[str] = []
    params: list[object] = []
    groups = sorted(placeable.free_groups)
    clauses.append(f"(NOT t.worker_group_pinned OR t.worker_group_id IN ({', '.join(['%s'] * len(groups))}))"
                   if groups else "NOT t.worker_group_pinned")
    params += groups
    if placeable.busy_schedules:
        schedules = sorted(placeable.busy_schedules)
        clauses.append(f"(t.schedule_id IS NULL OR t.schedule_id NOT IN ({', '.join(['%s'] * len(schedules))}))")
        params += schedules
    if placeable.full_models:
        models = sorted(placeable.full_models)
        clauses.append(f"t.model NOT IN ({', '.join(['%s'] * len(models))})")
        params += models
    return "".join(f" AND {clause}" for clause in clauses), params


def candidates(tool: str, wanted: int, now: datetime, *, tenant_load: dict[str, int] | None = None,
               placeable: Placeable | None = None) -> list[Candidate]:
    """Up to roughly `wanted` runnable tasks of `tool` in dispatch order: priority, then tenant turns, then age.

    A tenant's turn counts the tasks it already has leased or running (`tenant_load`), so fairness holds across
    passes too: when one slot frees, a tenant holding none goes before one holding several. With `placeable`,
    tasks that cannot be placed in this pass are not candidates at all.
    """
    tenant_load = tenant_load or {}
    extra_sql, extra_params = _not_placeable_sql(placeable) if placeable is not None else ("", [])
    ranked: list[tuple[int, int, datetime, Candidate]] = []
    # Plain SQL: this runs once per tenant per tool on every pass, and compiling the equivalent ORM query cost
    # more than executing it. It walks task_dispatch_idx for one (tool, tenant) and stops at the limit. A dependent
    # whose parents have not all succeeded (dependencies_pending > 0, chains) is filtered out on that walk, like a
    # task not yet due: the index stays the one on status = 'queued', the plan keeps its shape.
    sql = f"""
        SELECT t.id, t.priority, t.created_at, t.model, t.worker_group_id, t.worker_group_pinned, t.schedule_id,
               s.overlap_policy
        FROM {Task._meta.db_table} t LEFT JOIN {Schedule._meta.db_table} s ON s.id = t.schedule_id
        WHERE t.status = %s AND t.tool = %s AND t.tenant = %s
          AND (t.scheduled_at IS NULL OR t.scheduled_at <= %s)
          AND (t.next_attempt_at IS NULL OR t.next_attempt_at <= %s)
          AND t.dependencies_pending = 0{extra_sql}
        ORDER BY t.priority DESC, t.created_at ASC
        LIMIT %s
    """  # noqa: S608 - table names come from the models, values are parameters
    at = connection.ops.adapt_datetimefield_value(now)
    for tenant in queued_tenants(tool):
        with connection.cursor() as cursor:
            cursor.execute(sql, [TaskStatus.QUEUED, tool, tenant, at, at, *extra_params, wanted + SLACK_PER_TENANT])
            rows = cursor.fetchall()
        turn: Counter[int] = Counter({priority: tenant_load.get(tenant, 0) for priority in range(1, 10)})
        for pk, priority, created_at, model, group_id, pinned, schedule_id, policy in rows:
            task = Candidate(uuid.UUID(str(pk)), priority, created_at, model, group_id, bool(pinned), schedule_id,
                             policy)
            turn[task.priority] += 1
            ranked.append((-task.priority, turn[task.priority], task.created_at, task))
    ranked.sort(key=lambda item: item[:3])
    return [item[3] for item in ranked]


def _scope_usage(limits: dict[str, int]) -> Counter[str]:
    usage: Counter[str] = Counter()
    if not limits:
        return usage
    for tool, model, n in (
        Task.objects.filter(status__in=ACTIVE_STATUSES).values_list("tool", "model").annotate(n=Count("id"))
    ):
        usage[f"tool:{tool}"] += n
        if model:
            usage[f"model:{model}"] += n
    return usage


def dispatch_runnable(*, now: datetime | None = None) -> list[Lease]:
    """One dispatch pass. Returns the leases made; their Celery messages go out after commit."""
    now = now or timezone.now()
    leases: list[Lease] = []
    with transaction.atomic():
        _take_dispatch_lock()
        # A group takes leases only while a live worker consumes its queue: leased to nobody, a task would
        # expire and come back for ever. Its tasks wait queued (the group's health says no_worker).
        consumed = live_queue_counts()
        enabled_groups = list(WorkerGroup.objects.filter(enabled=True, quarantined_at__isnull=True))
        # A group whose spend reached its daily or monthly budget takes nothing until the window rolls over; its
        # pinned tasks wait, unpinned ones go to the tool's other accounts (tasks_app/services/budgets.py).
        budgets_check(groups=enabled_groups, now=now)
        groups = [
            g for g in enabled_groups
            if (g.rate_limited_until is None or g.rate_limited_until <= now) and consumed[g.name] and not g.over_budget
        ]
        if not groups:
            return leases
        active = dict(
            Task.objects.filter(status__in=ACTIVE_STATUSES, worker_group__isnull=False)
            .values_list("worker_group_id")
            .annotate(n=Count("id"))
        )
        free = {g.pk: g.max_concurrent - active.get(g.pk, 0) for g in groups}
        limits = dict(ConcurrencyLimit.objects.values_list("scope", "max_concurrent"))
        usage = _scope_usage(limits)
        by_tool: dict[str, list[WorkerGroup]] = {}
        for group in groups:
            by_tool.setdefault(group.tool, []).append(group)

        # Schedules with overlap policy "queue" run one instance at a time: later ones wait their turn here.
        busy_schedules = set(
            Task.objects.filter(status__in=ACTIVE_STATUSES, schedule__overlap_policy=OverlapPolicy.QUEUE)
            .values_list("schedule_id", flat=True)
        )
        chosen: list[tuple[uuid.UUID, WorkerGroup]] = []
        for tool, tool_groups in sorted(by_tool.items()):
            capacity = sum(max(free[g.pk], 0) for g in tool_groups)
            if capacity <= 0:
                continue
            load = dict(Task.objects.filter(status__in=ACTIVE_STATUSES, tool=tool).values_list("tenant")
                        .annotate(n=Count("id")).order_by())
            if f"tool:{tool}" in limits and usage[f"tool:{tool}"] >= limits[f"tool:{tool}"]:
                continue
            placeable = Placeable(
                free_groups=frozenset(g.pk for g in tool_groups if free[g.pk] > 0),
                busy_schedules=frozenset(busy_schedules),
                full_models=frozenset(scope[len("model:"):] for scope, cap in limits.items()
                                      if scope.startswith("model:") and usage[scope] >= cap),
            )
            for task in candidates(tool, capacity, now, tenant_load=load, placeable=placeable):
                if capacity <= 0:
                    break
                if task.schedule_id is not None and task.schedule_id in busy_schedules:
                    continue
                group = _choose_group(task, tool_groups, free)
                if group is None:
                    continue
                scopes = [f"tool:{tool}"] + ([f"model:{task.model}"] if task.model else [])
                if any(s in limits and usage[s] >= limits[s] for s in scopes):
                    continue
                chosen.append((task.pk, group))
                free[group.pk] -= 1
                if task.overlap_policy == OverlapPolicy.QUEUE:
                    busy_schedules.add(task.schedule_id)
                capacity -= 1
                for s in scopes:
                    usage[s] += 1
        # A task canceled since it was read is skipped here; its slot stays free until the next pass.
        leases = [Lease(task_id=task_id, lease_token=token, queue=group.name)
                  for task_id, token, group in task_lease_batch(assignments=chosen,
                                                                   lease_seconds=settings.SCHEDULER_LEASE_SECONDS)]
        enqueue_executions(leases)
    if leases:
        logger.info("dispatch leased %d task(s)", len(leases))
    return leases


def _choose_group(task: Candidate, groups: list[WorkerGroup], free: dict[int, int]) -> WorkerGroup | None:
    if task.worker_group_pinned:
        group = next((g for g in groups if g.pk == task.worker_group_id), None)
        return group if group is not None and free[group.pk] > 0 else None
    best = max(groups, key=lambda g: (free[g.pk], -g.pk))
    return best if free[best.pk] > 0 else None
