"""The task lifecycle (SPEC §3) as one table, and the only writers of Task.status.

`task_transition` moves one task (locking its row unless the caller already holds the lock), `task_lease_batch`
moves a dispatcher's batch queued → leased; both write the TaskEvent in the same transaction. Row locks are
taken once per transition: a service that must read the row before deciding takes it with `task_lock` and
passes the locked instance on.

A task that reaches a terminal status settles its dependents (chains, SPEC §8) in the same transaction:
`dependents_settle` below.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import timedelta
from typing import Any

from django.db import models, transaction
from django.db.models.expressions import CombinedExpression
from django.db.models.functions import Now
from django.utils import timezone

from tasks_app.models import TERMINAL_STATUSES, EventSource, Task, TaskEvent, TaskStatus, WorkerGroup
from tasks_app.selectors import chain_outputs_over_limit
from tasks_app.services.enqueue import enqueue_dispatch

Q, L, R = TaskStatus.QUEUED, TaskStatus.LEASED, TaskStatus.RUNNING
S, F, C = TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED

ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    "": frozenset({Q}),  # creation
    Q: frozenset({L, C}),
    L: frozenset({R, Q, C}),  # run starts; lease expired before start; canceled
    R: frozenset({S, F, C, Q}),  # Q: retry with backoff
    S: frozenset(),
    F: frozenset({Q}),  # explicit retry
    C: frozenset({Q}),  # explicit retry
}


class InvalidTransition(Exception):
    def __init__(self, from_status: str, to_status: str) -> None:
        self.from_status, self.to_status = from_status, to_status
        allowed = ", ".join(sorted(ALLOWED_TRANSITIONS.get(from_status, ()))) or "none (terminal)"
        super().__init__(
            f"cannot move a task from {from_status or 'nothing'!s} to {to_status}; allowed from "
            f"{from_status or 'nothing'}: {allowed}"
        )


def check_transition(from_status: str, to_status: str) -> None:
    if to_status not in ALLOWED_TRANSITIONS.get(from_status, frozenset()):
        raise InvalidTransition(from_status, to_status)


class TaskStateError(Exception):
    """The requested action does not fit the task's current status."""


def _require_transaction(what: str) -> None:
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError(f"{what} must run inside the caller's transaction, which holds the row lock")


def task_lock(*, task_id: Any) -> Task | None:
    """The task's row, locked until the caller's transaction ends (None if there is no such task)."""
    _require_transaction("task_lock")
    return Task.objects.select_for_update().filter(pk=task_id).first()


def task_event_add(*, task: Task, to: str | None = None, source: str, actor: str = "", reason: str = "",
                   data: dict[str, Any] | None = None, from_status: str | None = None) -> TaskEvent:
    """One audit row. Without `to` it records something that happened to the task without a status change
    (a cancel request on a running task): from and to are both its current status."""
    to_status = task.status if to is None else to
    return TaskEvent.objects.create(
        task=task, from_status=task.status if from_status is None else from_status, to_status=to_status,
        source=source, actor=actor or "", reason=reason, data=data or {},
    )


def task_transition(
    *,
    task_id: Any = None,
    locked: Task | None = None,
    to: str,
    source: str,
    actor: str = "",
    reason: str = "",
    data: dict[str, Any] | None = None,
    expect: Iterable[str] | None = None,
    updates: dict[str, Any] | None = None,
) -> Task:
    """The only writer of ``Task.status``: lock the row, check the lifecycle table, save, write the event.

    Pass ``task_id`` to have the row locked here, or ``locked``: a task the caller locked with `task_lock` in
    the transaction it is in. ``expect`` narrows the allowed current statuses for this caller (a check-and-set);
    ``updates`` are other fields changed in the same save. Raises `TaskStateError` or `InvalidTransition`
    (writing nothing) otherwise.
    """
    if (task_id is None) == (locked is None):
        raise TypeError("task_transition takes exactly one of task_id or locked")
    with transaction.atomic():
        task = locked if locked is not None else Task.objects.select_for_update().get(pk=task_id)
        from_status = task.status
        if expect is not None and from_status not in set(expect):
            raise TaskStateError(f"task {task.pk} is {from_status}, expected {' or '.join(sorted(expect))}")
        check_transition(from_status, to)
        task.status = to
        fields = {"status", "updated_at"}
        for name, value in (updates or {}).items():
            setattr(task, name, value)
            fields.add(name)
        task.save(update_fields=sorted(fields))
        task_event_add(task=task, from_status=from_status, to=to, source=source, actor=actor, reason=reason,
                       data=data)
        if to in TERMINAL_STATUSES:
            dependents_settle(task=task, to=to)
    return task


# The settlings of the current transaction still to do, while one is under way (see `dependents_settle`).
_settling: ContextVar[list[tuple[Task, str]] | None] = ContextVar("chain_settling", default=None)
CHAIN_ACTOR = "chains"


def dependents_settle(*, task: Task, to: str) -> None:
    """A task reached a terminal status (`to`): its dependents learn of it in the same transaction, under its row
    lock. Succeeded: each queued dependent has one parent less to wait for, and is dispatched once none is left.
    Failed or canceled: each unfinished dependent is canceled (it could never run), and settles its own
    dependents in turn. Lock order: the parent is locked (by the caller), then its dependents by id.

    A dependent canceled here goes through `task_transition` like any other move, which calls this again: that
    call only queues its task on the settling under way, which works through the queue in order. A chain of any
    depth is settled by one loop, never by a recursion as deep as the chain.
    """
    queue = _settling.get()
    if queue is not None:
        queue.append((task, to))
        return
    queue = [(task, to)]
    token = _settling.set(queue)
    try:
        while queue:
            parent, status = queue.pop(0)
            if status == TaskStatus.SUCCEEDED:
                _dependents_release(parent)
            else:
                _dependents_cancel(parent, why="failed" if status == TaskStatus.FAILED else "was canceled")
    finally:
        _settling.reset(token)


def _dependents_release(parent: Task) -> None:
    children = list(Task.objects.filter(depends_on=parent.pk, status=TaskStatus.QUEUED, dependencies_pending__gt=0)
                    .order_by("pk").values_list("pk", flat=True))
    if not children:
        return
    # One atomic decrement each (the row is locked by the UPDATE, after the parent: the chains' lock order). The
    # condition is checked again by the UPDATE itself, so a dependent canceled meanwhile is left alone.
    Task.objects.filter(pk__in=children, status=TaskStatus.QUEUED, dependencies_pending__gt=0).update(
        dependencies_pending=models.F("dependencies_pending") - 1)
    now = timezone.now()
    for child in Task.objects.filter(pk__in=children, status=TaskStatus.QUEUED, dependencies_pending=0).order_by("pk"):
        parents = list(Task.objects.filter(dependents=child.pk).values_list("pk", flat=True))
        refusal = chain_outputs_over_limit(parent_ids=parents)
        if refusal:
            # Refused before it ever runs: a run that started with part of its inputs would mislead.
            task_transition(
                task_id=child.pk, to=TaskStatus.CANCELED, source=EventSource.SYSTEM, actor=CHAIN_ACTOR,
                reason=refusal, data={"parent": str(parent.pk)}, expect=[TaskStatus.QUEUED],
                updates={"finished_at": now},
            )
            continue
        due = max((at for at in (child.scheduled_at, child.next_attempt_at) if at is not None), default=None)
        enqueue_dispatch(at=due if due is not None and due > now else None)


def _dependents_cancel(parent: Task, *, why: str) -> None:
    reason = f"parent {parent.pk} {why}"
    children = (Task.objects.filter(depends_on=parent.pk)
                .exclude(status__in=TERMINAL_STATUSES).order_by("pk").values_list("pk", flat=True))
    for child_id in list(children):
        child = task_lock(task_id=child_id)
        if child is None or child.status in TERMINAL_STATUSES:
            continue
        if child.status == TaskStatus.RUNNING:
            # Cannot happen (a dependent is dispatched only once every parent succeeded), but if it does, it is
            # stopped like any running task: a cancel request its worker acts on.
            if child.cancel_requested_at is None:
                child.cancel_requested_at = timezone.now()
                child.cancel_source, child.cancel_actor, child.cancel_reason = EventSource.SYSTEM, CHAIN_ACTOR, reason
                child.save(update_fields=["cancel_requested_at", "cancel_source", "cancel_actor", "cancel_reason",
                                          "updated_at"])
                task_event_add(task=child, source=EventSource.SYSTEM, actor=CHAIN_ACTOR,
                               reason=f"cancel requested: {reason}",
                               data={"parent": str(parent.pk), "cancel_requested": True})
            continue
        task_transition(
            locked=child, to=TaskStatus.CANCELED, source=EventSource.SYSTEM, actor=CHAIN_ACTOR, reason=reason,
            data={"parent": str(parent.pk)},
            updates={"finished_at": timezone.now(), "lease_token": None, "lease_expires_at": None},
        )


def lease_expiry(seconds: float) -> CombinedExpression:
    """A lease's end, computed by the database from its own clock: every box compares leases with that same
    clock (`lease_expires_at < Now()`), so no box's clock skew can end a lease early or late."""
    return Now() + timedelta(seconds=seconds)


def task_lease_batch(*, assignments: list[tuple[Any, WorkerGroup]], lease_seconds: float,
                     actor: str = "dispatcher") -> list[tuple[Any, uuid.UUID, WorkerGroup]]:
    """The dispatcher's hot claim: queued → leased for a whole batch, as a compare-and-swap under row locks.

    The same move `task_transition` makes (checked against the lifecycle table, one TaskEvent per task, in the
    caller's transaction), in one UPDATE per group and one INSERT instead of five statements per task. Tasks
    that left `queued` since the caller read them (a cancel) are skipped. Returns (task id, lease token, group)
    for each lease made.
    """
    _require_transaction("task_lease_batch")
    check_transition(TaskStatus.QUEUED, TaskStatus.LEASED)
    ids = [task_id for task_id, _ in assignments]
    still_queued = set(
        Task.objects.select_for_update().filter(pk__in=ids, status=TaskStatus.QUEUED).values_list("pk", flat=True)
    )
    now = timezone.now()
    by_group: dict[int, tuple[WorkerGroup, list[Any]]] = {}
    for task_id, group in assignments:
        if task_id in still_queued:
            by_group.setdefault(group.pk, (group, []))[1].append(task_id)
    events: list[TaskEvent] = []
    leases: list[tuple[Any, uuid.UUID, WorkerGroup]] = []
    for group, task_ids in by_group.values():
        # A token fences stale workers per (task, lease): one fresh token per group and pass is as good as one
        # per task, and makes this a single UPDATE.
        token = uuid.uuid4()
        Task.objects.filter(pk__in=task_ids).update(status=TaskStatus.LEASED, worker_group=group, lease_token=token,
                                                    lease_expires_at=lease_expiry(lease_seconds), updated_at=now)
        for task_id in task_ids:
            events.append(TaskEvent(task_id=task_id, from_status=TaskStatus.QUEUED, to_status=TaskStatus.LEASED,
                                    source=EventSource.SYSTEM, actor=actor, reason=f"leased to {group.name}",
                                    data={"worker_group": group.name}, created_at=now))
            leases.append((task_id, token, group))
    TaskEvent.objects.bulk_create(events)
    return leases
