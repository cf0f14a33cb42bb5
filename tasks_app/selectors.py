"""Reads: lists and lookups shared by the API, schedulerctl and the admin."""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import Count, Q, QuerySet

from tasks_app.models import ACTIVE_STATUSES, Task, TaskStatus, WorkerGroup


def task_list(*, tenant: str | None = None, status: str | None = None, tool: str | None = None,
              worker_group: str | None = None) -> QuerySet[Task]:
    qs = Task.objects.select_related("worker_group").order_by("-created_at")
    if tenant is not None:
        qs = qs.filter(tenant=tenant)
    if status:
        qs = qs.filter(status=status)
    if tool:
        qs = qs.filter(tool=tool)
    if worker_group:
        qs = qs.filter(worker_group__name=worker_group)
    return qs


def task_get(*, task_id: Any, tenant: str | None = None) -> Task | None:
    """By full UUID, or by a unique prefix of at least 6 hex digits (what people copy from tables)."""
    qs = Task.objects.select_related("worker_group")
    if tenant is not None:
        qs = qs.filter(tenant=tenant)
    text = str(task_id).strip().lower().replace("-", "")
    if not 6 <= len(text) <= 32 or any(c not in "0123456789abcdef" for c in text):
        return None
    if len(text) == 32:
        return qs.filter(pk=uuid.UUID(text)).first()
    # A prefix is a range of UUIDs; both backends order UUIDs as their hex text.
    low, high = uuid.UUID(text.ljust(32, "0")), uuid.UUID(text.ljust(32, "f"))
    matches = list(qs.filter(pk__gte=low, pk__lte=high)[:2])
    return matches[0] if len(matches) == 1 else None


def group_list() -> QuerySet[WorkerGroup]:
    return WorkerGroup.objects.annotate(
        running=Count("tasks", filter=Q(tasks__status__in=ACTIVE_STATUSES)),
        queued=Count("tasks", filter=Q(tasks__status=TaskStatus.QUEUED)),
    ).order_by("name")


def group_heartbeating_workers(group: WorkerGroup) -> list[str]:
    """Workers (hostname:pid) renewing a live lease in this group right now: the boxes working for it."""
    from django.utils import timezone

    from tasks_app.models import TaskRun

    return sorted(set(
        TaskRun.objects.filter(worker_group=group, status=TaskRun.Status.RUNNING, task__status=TaskStatus.RUNNING,
                               task__lease_expires_at__gt=timezone.now())
        .values_list("worker", flat=True)
    ))
