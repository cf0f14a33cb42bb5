"""Follow-up turns (SPEC §8): a new task that resumes a finished task's CLI session, on the same account, in a
workspace at the state the first one left.

The parent's session lives in its account's state dir, so the follow-up is pinned to that group. On a repository
it starts from the parent's commit with the parent's patch applied (`run_start` reads them through
`resume_session_id`); elsewhere it gets the parent's inputs and outputs as its own inputs.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from executors.base import CHANGES_PATCH
from tasks_app.models import Task, TaskFile, TaskRun
from tasks_app.services.tasks import InputFile, TaskSpec, task_create
from tasks_app.transitions import TaskStateError, task_lock


def task_follow_up(*, task_id: Any, prompt: str, created_by: str = "", source: str) -> Task:
    """Create the follow-up of a finished task. `TaskStateError` (a 409) when there is nothing to resume: the task
    is unfinished, recorded no session, or its account is gone; `ValidationError` for a bad prompt."""
    with transaction.atomic():
        parent = task_lock(task_id=task_id)  # a concurrent retry cannot change what we read below
        if parent is None:
            raise Task.DoesNotExist(f"no task {task_id}")
        if not parent.is_terminal:
            raise TaskStateError(f"task {parent.pk} is {parent.status}; follow up once it has finished")
        session_run = (TaskRun.objects.select_related("worker_group").filter(task=parent).exclude(session_id="")
                       .order_by("-attempt").first())
        if session_run is None:
            raise TaskStateError(f"task {parent.pk} recorded no CLI session: there is nothing to resume")
        group = session_run.worker_group
        if group is None:
            raise TaskStateError(f"the account that ran task {parent.pk} is gone: its session cannot be resumed")
        budget = float(parent.max_cost_usd) if parent.max_cost_usd is not None else None
        spec = TaskSpec(
            tool=parent.tool, prompt=prompt, model=parent.model, output_files=list(parent.output_files or []),
            require_outputs=parent.require_outputs,
            priority=parent.priority, max_attempts=parent.max_attempts, timeout_seconds=parent.timeout_seconds,
            worker_group=group.name, max_cost_usd=budget,
            max_turns=parent.max_turns, idle_timeout_seconds=parent.idle_timeout_seconds,
            input_files=[] if parent.repository_id else _carried_files(parent, session_run),
        )
        task, _ = task_create(spec=spec, tenant=parent.tenant, created_by=created_by, source=source,
                              reason=f"follow-up of {parent.pk}", event_data={"parent": str(parent.pk)})
        task.parent = parent
        task.resume_session_id = session_run.session_id
        task.repository_id = parent.repository_id
        # The same commit as the parent's run (a branch may have moved since), with its patch on top.
        task.ref = session_run.base_sha or parent.ref
        task.save(update_fields=["parent", "resume_session_id", "repository", "ref", "updated_at"])
    return task


def _carried_files(parent: Task, run: TaskRun) -> list[InputFile]:
    """The parent's inputs, overlaid by what its run produced: the state it left, where there is no repository."""
    files = {f.path: f.read_bytes() for f in parent.files.filter(direction=TaskFile.Direction.INPUT, run=None)}
    outputs = TaskFile.objects.filter(run=run, direction=TaskFile.Direction.OUTPUT).exclude(path=CHANGES_PATCH)
    files.update({f.path: f.read_bytes() for f in outputs})
    return [InputFile(path=path, content=data) for path, data in sorted(files.items())]
