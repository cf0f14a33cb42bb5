"""Reads: lists and lookups shared by the API, schedulerctl and the admin."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import BooleanField, Count, ExpressionWrapper, F, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from executors.base import CHANGES_PATCH
from tasks_app import budgets
from tasks_app.budgets import GroupSpend
from tasks_app.models import (
    ACTIVE_STATUSES,
    ApiToken,
    AuditEvent,
    Heartbeat,
    Repository,
    RunEvent,
    Schedule,
    ScheduleFiring,
    Task,
    TaskEvent,
    TaskFile,
    TaskLogChunk,
    TaskRun,
    TaskStatus,
    Worker,
    WorkerGroup,
    worker_live_q,
)


def task_list(*, tenant: str | None = None, status: str | None = None, tool: str | None = None,
              worker_group: str | None = None) -> QuerySet[Task]:
    qs = Task.objects.select_related("worker_group", "repository", "schedule").order_by("-created_at")
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
    qs = Task.objects.select_related("worker_group", "repository", "schedule")
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


def task_status(*, task_id: Any) -> str:
    """The task's status alone (raises Task.DoesNotExist)."""
    return Task.objects.values_list("status", flat=True).get(pk=task_id)


def task_latest_run(*, task_id: Any) -> TaskRun | None:
    """The task's most recent attempt (the one running, or the last to finish)."""
    return TaskRun.objects.select_related("worker_group").filter(task_id=task_id).order_by("-attempt").first()


def task_conversation(task: Task, *, limit: int = 100) -> list[Task]:
    """The turns that led to `task`, first to last, itself included: its chain of follow-up parents."""
    chain = [task]
    while chain[-1].parent_id is not None and len(chain) < limit:
        parent = Task.objects.filter(pk=chain[-1].parent_id).first()
        if parent is None:
            break
        chain.append(parent)
    return chain[::-1]


def task_follow_up_ids(*, task_id: Any) -> list[Any]:
    return list(Task.objects.filter(parent_id=task_id).order_by("created_at").values_list("pk", flat=True))


def task_conversation_turns(task: Task) -> list[dict[str, Any]]:
    """Each turn of the conversation that led to `task` as plain values: the task, its latest run's final message,
    session and change, and its changes.patch output."""
    turns = []
    for turn in task_conversation(task):
        run = task_latest_run(task_id=turn.pk)
        patch = (TaskFile.objects.filter(run=run, direction=TaskFile.Direction.OUTPUT, path=CHANGES_PATCH)
                 .values_list("pk", flat=True).first() if run is not None else None)
        turns.append({
            "id": turn.pk, "status": turn.status, "prompt": turn.prompt, "created_at": turn.created_at,
            "final_message": str((turn.result or {}).get("final_message") or ""),
            "session_id": run.session_id if run is not None else "",
            "diff_stat": run.diff_stat if run is not None else None, "patch_file": patch,
        })
    return turns


def task_runs(*, task_id: Any) -> QuerySet[TaskRun]:
    return TaskRun.objects.select_related("worker_group").filter(task_id=task_id).order_by("-attempt")


def task_events(*, task_id: Any) -> QuerySet[TaskEvent]:
    return TaskEvent.objects.filter(task_id=task_id).order_by("created_at", "id")


def task_files(*, task_id: Any) -> QuerySet[TaskFile]:
    """Inputs then outputs, by path; for one path the newest first (a retried attempt's output)."""
    return TaskFile.objects.select_related("run").filter(task_id=task_id).order_by("direction", "path", "-id")


@dataclass(frozen=True)
class TaskChain:
    """A task's place in chains (SPEC §8), as ids: the tasks it depends on, those that depend on it, and the
    parents it is still waiting for (only while it is queued)."""

    depends_on: list[str]
    dependents: list[str]
    waiting_on: list[str]


def task_chain(*, task: Task) -> TaskChain:
    parents = list(Task.objects.filter(dependents=task.pk).order_by("pk").values_list("pk", "status"))
    dependents = Task.objects.filter(depends_on=task.pk).order_by("pk").values_list("pk", flat=True)
    waiting = [str(pk) for pk, status in parents if status != TaskStatus.SUCCEEDED] if (
        task.status == TaskStatus.QUEUED) else []
    return TaskChain(depends_on=[str(pk) for pk, _ in parents], dependents=[str(pk) for pk in dependents],
                     waiting_on=waiting)


def _chain_outputs(parent_ids: Any) -> QuerySet[TaskFile]:
    # A succeeded task has exactly one succeeded run: its outputs are the ones a dependent receives.
    return TaskFile.objects.filter(task_id__in=parent_ids, direction=TaskFile.Direction.OUTPUT,
                                   run__status=TaskRun.Status.SUCCEEDED)


def chain_outputs_bytes(*, parent_ids: Iterable[Any]) -> int:
    """The total size of the outputs of these (succeeded) tasks, as a dependent would receive them."""
    ids = list(parent_ids)
    if not ids:
        return 0
    return _chain_outputs(ids).aggregate(total=Sum("size_bytes"))["total"] or 0


def chain_outputs_over_limit(*, parent_ids: Iterable[Any]) -> str:
    """Why the outputs of these tasks cannot all arrive in one dependent's work dir, or "" when they can:
    SCHEDULER_MAX_TOTAL_BYTES bounds them, as it bounds a task's own inputs."""
    total, limit = chain_outputs_bytes(parent_ids=parent_ids), settings.SCHEDULER_MAX_TOTAL_BYTES
    if total <= limit:
        return ""
    return f"the outputs of its parents total {total} bytes; the limit is {limit} (SCHEDULER_MAX_TOTAL_BYTES)"


def chain_output_files(*, parent_ids: Iterable[Any]) -> QuerySet[TaskFile]:
    """The outputs of these (succeeded) tasks, as a dependent receives them: by task, then path."""
    return _chain_outputs(list(parent_ids)).order_by("task_id", "path")


def run_log_chunks(*, run_id: int, after: int = 0, limit: int = 500) -> list[TaskLogChunk]:
    """Live output of one attempt from sequence number `after` on, in order."""
    return list(TaskLogChunk.objects.filter(run_id=run_id, seq__gte=after).order_by("seq")[:limit])


@dataclass(frozen=True)
class FollowState:
    """What a live stream needs to know of a followed task, read in one statement (one snapshot)."""

    status: str
    run_id: int | None  # the latest attempt's run
    attempt: int | None
    last_seq: int | None  # its last live-output chunk
    last_event_seq: int | None = None  # its last timeline event


def tasks_follow_state(*, task_ids: Iterable[Any]) -> dict[Any, FollowState]:
    """Status, latest run and last chunk of many tasks in one query: the stream process's poll, whatever the number
    of followers. Status and last chunk come from the same snapshot, so a terminal status means every chunk up to
    `last_seq` is there to read."""
    latest = TaskRun.objects.filter(task=OuterRef("pk")).order_by("-attempt")
    last_chunk = TaskLogChunk.objects.filter(run=OuterRef("latest_run_id")).order_by("-seq").values("seq")[:1]
    last_event = RunEvent.objects.filter(run=OuterRef("latest_run_id")).order_by("-seq").values("seq")[:1]
    rows = (Task.objects.filter(pk__in=list(task_ids))
            .annotate(latest_run_id=Subquery(latest.values("pk")[:1]),
                      latest_attempt=Subquery(latest.values("attempt")[:1]))
            .annotate(last_seq=Subquery(last_chunk), last_event_seq=Subquery(last_event))
            .values_list("pk", "status", "latest_run_id", "latest_attempt", "last_seq", "last_event_seq"))
    return {row[0]: FollowState(*row[1:]) for row in rows}


def runs_log_chunks(*, after: dict[int, int], limit: int) -> list[TaskLogChunk]:
    """Live output of several runs at once, each from its own sequence number on; in (run, seq) order."""
    if not after:
        return []
    wanted = Q()
    for run_id, seq in after.items():
        wanted |= Q(run_id=run_id, seq__gte=seq)
    return list(TaskLogChunk.objects.filter(wanted).order_by("run_id", "seq")[:limit])


def runs_events(*, after: dict[int, int], limit: int) -> list[RunEvent]:
    """Timeline events of several runs at once, each from its own sequence number on; in (run, seq) order."""
    if not after:
        return []
    wanted = Q()
    for run_id, seq in after.items():
        wanted |= Q(run_id=run_id, seq__gte=seq)
    return list(RunEvent.objects.filter(wanted).order_by("run_id", "seq")[:limit])


def run_events(*, run_id: int, after: int = 0, limit: int = 10_000) -> list[RunEvent]:
    """One attempt's timeline from sequence number `after` on, in order."""
    return list(RunEvent.objects.filter(run_id=run_id, seq__gte=after).order_by("seq")[:limit])


def group_get(*, name: str) -> WorkerGroup | None:
    return WorkerGroup.objects.filter(name=name).first()


def group_list() -> QuerySet[WorkerGroup]:
    return WorkerGroup.objects.annotate(
        running=Count("tasks", filter=Q(tasks__status__in=ACTIVE_STATUSES)),
        queued=Count("tasks", filter=Q(tasks__status=TaskStatus.QUEUED)),
    ).order_by("name")


def live_queue_counts() -> Counter[str]:
    """Queue name -> live workers consuming it (one query; a fleet has tens of workers, not millions)."""
    counts: Counter[str] = Counter()
    for queues in Worker.objects.live().values_list("queues", flat=True):
        counts.update(set(queues))
    return counts


def groups_attach_live_workers(groups: Iterable[WorkerGroup], *, now: datetime | None = None) -> list[WorkerGroup]:
    """Set `live_workers` and `spend` (what `health` reads) on every group, from two queries in all."""
    groups = list(groups)
    counts = live_queue_counts()
    spent = TaskRun.objects.spend_by_group(group_ids=[group.pk for group in groups], now=now or timezone.now())
    for group in groups:
        group.live_workers = counts[group.name]
        group.spend = spent.get(group.pk, GroupSpend())
    return groups


@dataclass(frozen=True)
class DailyUsage:
    """Runs started on one UTC day (the budgets' day: in flight ones with their cost so far) for one key: a group's
    name (None: runs without a group) or a tenant."""

    day: date
    key: str | None
    runs: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


USAGE_BY = {"group": "worker_group__name", "tenant": "task__tenant"}


def usage_per_day(*, since: date, until: date, by: str = "group", tenant: str | None = None,
                  group: str | None = None) -> list[DailyUsage]:
    """Runs, tokens and cost per UTC day (from `since` to `until`, both included) per group or per tenant
    (`by`), optionally of one tenant or one group; days without runs are left out. Ordered by day, then key
    (runs without a group last). One grouped query over `taskrun_started_idx`."""
    qs = TaskRun.objects.filter(started_at__gte=budgets.day_start(since),
                                started_at__lt=budgets.day_start(until + timedelta(days=1)))
    if tenant is not None:
        qs = qs.filter(task__tenant=tenant)
    if group:
        qs = qs.filter(worker_group__name=group)
    key = USAGE_BY[by]
    rows = (qs.annotate(day=TruncDate("started_at", tzinfo=UTC)).values_list("day", key)
            .annotate(runs=Count("id"), tokens_in=Sum("input_tokens"), tokens_out=Sum("output_tokens"),
                      cost=Sum("cost_usd"))
            .order_by("day", F(key).asc(nulls_last=True)))
    return [DailyUsage(day=day, key=name, runs=runs, input_tokens=tokens_in or 0, output_tokens=tokens_out or 0,
                       cost_usd=Decimal(str(cost or 0)))
            for day, name, runs, tokens_in, tokens_out, cost in rows]


def worker_list(*, alive: bool | None = None, queue: str | None = None) -> QuerySet[Worker]:
    """Registered workers, each annotated `alive`; a stopped or silent worker stays listed for a week."""
    qs = Worker.objects.annotate(alive=ExpressionWrapper(worker_live_q(), output_field=BooleanField()))
    if alive is not None:
        qs = qs.filter(worker_live_q()) if alive else qs.exclude(worker_live_q())
    if queue:
        qs = qs.filter(pk__in=[pk for pk, queues in Worker.objects.values_list("pk", "queues") if queue in queues])
    return qs.order_by("hostname", "-started_at")


def group_live_workers(group: WorkerGroup) -> list[str]:
    """The live workers (node name, pid) consuming the group's queue."""
    return [f"{hostname} (pid {pid})"
            for hostname, pid, queues in Worker.objects.live().values_list("hostname", "pid", "queues")
            if group.name in queues]


def audit_list() -> QuerySet[AuditEvent]:
    return AuditEvent.objects.order_by("-created_at", "-id")


def tick_last() -> datetime | None:
    """When beat's periodic tick last ran on a control worker."""
    return Heartbeat.objects.filter(name=Heartbeat.TICK).values_list("at", flat=True).first()


def group_heartbeating_workers(group: WorkerGroup) -> list[str]:
    """Workers (hostname:pid) renewing a live lease in this group right now: the boxes working for it."""
    return sorted(set(
        TaskRun.objects.filter(worker_group=group, status=TaskRun.Status.RUNNING, task__status=TaskStatus.RUNNING,
                               task__lease_expires_at__gt=timezone.now())
        .values_list("worker", flat=True)
    ))


def task_attempts_running(*, task_ids: set[Any]) -> set[tuple[str, int]]:
    """(task id as text, attempt) of those tasks that are running now: the work dirs still in use."""
    return {(str(pk), attempt) for pk, attempt in
            Task.objects.filter(pk__in=task_ids, status=TaskStatus.RUNNING).values_list("pk", "attempt")}


def schedule_list(*, tenant: str | None = None) -> QuerySet[Schedule]:
    qs = Schedule.objects.select_related("worker_group").order_by("name")
    return qs if tenant is None else qs.filter(tenant=tenant)


def schedule_get(*, ref: str, tenant: str | None = None) -> Schedule | None:
    """By id, or by name within the tenant."""
    qs = schedule_list(tenant=tenant)
    ref = str(ref)
    return (qs.filter(pk=int(ref)).first() if ref.isdigit() else None) or qs.filter(name=ref).first()


def schedule_tasks(*, schedule: Schedule) -> QuerySet[Task]:
    """The tasks a schedule spawned, newest first."""
    return Task.objects.filter(schedule=schedule).select_related("worker_group").order_by("-created_at")


def schedule_firings(*, schedule: Schedule) -> QuerySet[ScheduleFiring]:
    return ScheduleFiring.objects.filter(schedule=schedule).select_related("task").order_by("-fire_time")


def repository_list(*, tenant: str | None = None) -> QuerySet[Repository]:
    """A tenant's repositories (None: every tenant's), by tenant then name."""
    qs = Repository.objects.order_by("tenant", "name")
    return qs.filter(tenant=tenant) if tenant is not None else qs


def repository_get(*, tenant: str, name: str) -> Repository | None:
    return Repository.objects.filter(tenant=tenant, name=name).first()


def token_list(*, username: str | None = None) -> QuerySet[ApiToken]:
    qs = ApiToken.objects.select_related("user")
    return qs if not username else qs.filter(user__username=username)


def token_get(*, token_id: int) -> ApiToken | None:
    return ApiToken.objects.select_related("user").filter(pk=token_id).first()
