"""Chains (SPEC §8): a task created with `depends_on` is not dispatched until every one of those tasks succeeded,
and starts with each one's outputs under `<parent id>/<path>`.

`Task.dependencies_pending` (parents that have not succeeded yet) is all the dispatcher reads. It is set here
at create, under row locks on the parents, and lowered by `tasks_app.transitions` when a parent succeeds, in the
parent's own transaction; a parent that fails or is canceled cancels its unfinished dependents there too.

Lock order is always parent before child: a child is created after its parents (it names them by id), its
parents never change, and every writer that touches both (create, retry, the settling of a finished parent)
locks the parents first, by id. Cycles cannot form: ids are made by the server when a task is created, so a task
can only name tasks that existed before it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError

from tasks_app import validation
from tasks_app.models import Task, TaskStatus
from tasks_app.selectors import chain_output_files, chain_outputs_over_limit
from tasks_app.transitions import TaskStateError

MAX_PARENTS = 20
FIELD = "depends_on"


def depends_on_clean(value: object) -> list[str]:
    """The shape of `depends_on`: a list of distinct task ids (canonical UUID text), at most MAX_PARENTS. Which
    tasks they are (this tenant's? finished?) is for `parents_pending`, which needs the tenant."""
    if not isinstance(value, list | tuple):
        raise validation.fail(FIELD, "must be a list of task ids")
    if len(value) > MAX_PARENTS:
        raise validation.fail(FIELD, f"at most {MAX_PARENTS} tasks; {len(value)} were given")
    errors: dict[str, list[str]] = {}
    seen: dict[str, int] = {}
    for i, item in enumerate(value):
        field = f"{FIELD}[{i}]"
        try:
            task_id = str(uuid.UUID(item)) if isinstance(item, str) else None
        except ValueError:
            task_id = None
        if task_id is None:
            errors[field] = [f"{item!r:.80} is not a task id (a UUID)"]
        elif task_id in seen:
            errors[field] = [f"task {task_id} is already listed at {FIELD}[{seen[task_id]}]"]
        else:
            seen[task_id] = i
    if errors:
        raise ValidationError(errors)
    return list(seen)


def parents_pending(*, parent_ids: list[str], tenant: str, lock: bool = False) -> int:
    """How many of the parents have not succeeded yet: the new task's `dependencies_pending`.

    Refuses (ValidationError naming `depends_on[i]`) an id that is no task of this tenant, with the same words
    whether it is unknown or another tenant's (never reveal that one exists), and a parent that already failed or
    was canceled: the task could never run. With `lock` (in the creating transaction) the parents' rows are
    locked, by id, until it commits: a parent finishing at the same moment either finished before this read (not
    counted) or settles after the commit and finds the new dependent (counted, then released), exactly once.
    """
    rows = Task.objects.filter(pk__in=parent_ids, tenant=tenant).order_by("pk")
    if lock:
        rows = rows.select_for_update()
    status = {str(pk): value for pk, value in rows.values_list("pk", "status")}
    errors: dict[str, list[str]] = {}
    for i, parent_id in enumerate(parent_ids):
        field = f"{FIELD}[{i}]"
        if parent_id not in status:
            errors[field] = [f"no task {parent_id}"]
        elif status[parent_id] == TaskStatus.FAILED:
            errors[field] = [f"task {parent_id} already failed; this task could never run"]
        elif status[parent_id] == TaskStatus.CANCELED:
            errors[field] = [f"task {parent_id} was canceled; this task could never run"]
    if errors:
        raise ValidationError(errors)
    done = [pk for pk, value in status.items() if value == TaskStatus.SUCCEEDED]
    size_error = chain_outputs_over_limit(parent_ids=done)
    if size_error:
        # Outputs of a succeeded task never change: over the limit now, over it for good.
        raise validation.fail(FIELD, size_error)
    return len(parent_ids) - len(done)


def retry_pending(*, task: Task) -> int:
    """`dependencies_pending` for a dependent being retried (its parents locked by the caller, before the task):
    a parent that is itself queued again (retried) is waited for; one that failed or was canceled refuses the
    retry, since the task could never run. Retrying a parent never revives its canceled dependents by itself."""
    parents = list(Task.objects.filter(dependents=task.pk).order_by("pk").values_list("pk", "status"))
    for parent_id, status in parents:
        if status in (TaskStatus.FAILED, TaskStatus.CANCELED):
            raise TaskStateError(f"task {task.pk} depends on task {parent_id}, which is {status}; retry that one "
                                 "first, then this one")
    done = [parent_id for parent_id, status in parents if status == TaskStatus.SUCCEEDED]
    size_error = chain_outputs_over_limit(parent_ids=done)
    if size_error:
        raise TaskStateError(f"task {task.pk} cannot run: {size_error}")
    return len(parents) - len(done)


def parents_lock(*, task_id: Any) -> None:
    """Lock a task's parents, by id: done before locking the task itself (the chains' lock order)."""
    # `of`: the parents' rows only, not the link rows the join reads.
    list(Task.objects.select_for_update(of=("self",)).filter(dependents=task_id).order_by("pk")
         .values_list("pk", flat=True))


@dataclass(frozen=True)
class ChainInputs:
    """What a dependent's work dir receives from its parents."""

    files: list[tuple[str, bytes]]  # (f"{parent id}/{path}", content)
    dirs: tuple[str, ...]  # the parents' ids: the top-level dirs they arrive in


def chain_inputs(*, task_id: Any) -> ChainInputs:
    """Each parent's outputs (those of its succeeded run) as `<parent id>/<path>`, for `run_start`. Their total
    was checked against SCHEDULER_MAX_TOTAL_BYTES when the task became runnable (at create, when its last
    parent succeeded, or at retry); outputs of a succeeded task never change after that."""
    parents = tuple(str(pk) for pk in Task.objects.filter(dependents=task_id).order_by("pk")
                    .values_list("pk", flat=True))
    if not parents:
        return ChainInputs(files=[], dirs=())
    files = [(f"{row.task_id}/{row.path}", row.read_bytes()) for row in chain_output_files(parent_ids=parents)]
    return ChainInputs(files=files, dirs=parents)
