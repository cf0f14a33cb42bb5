"""Budgets with real workers: the cost a CLI reports stops its account for the day, and the work moves on."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tasks_app.models import AuditEvent, Task, TaskRun, WorkerGroup
from tasks_app.services.groups import group_create, group_update
from tasks_app.services.tasks import TaskSpec, task_create
from tests.conftest import WorkerProcesses, wait_until
from tests.e2e.test_pipeline import fake, wait_terminal
from tests.e2e.test_workers import FAST

pytestmark = pytest.mark.e2e

# The stand-in claude charges $0.000015 per output token (a word): a 1000-word answer costs $0.015.
EXPENSIVE = " ".join(["spent"] * 1000)


def _enqueue(prompt: str, **spec: object) -> Task:
    return task_create(spec=TaskSpec(tool="claude", prompt=prompt, **spec), source="api")[0]


def test_a_run_that_reaches_the_daily_budget_sends_the_next_jobs_to_the_other_account(
    workers: WorkerProcesses, settings
) -> None:
    settings.SCHEDULER_WORKER_TIMEOUT_SECONDS = 2.5  # this process reads health with the workers' timeout
    group_create(tool="claude", account="main", max_concurrent=1, daily_budget_usd="0.01")
    group_create(tool="claude", account="team", max_concurrent=1)
    workers.start_beat(env=FAST)
    workers.start("control", concurrency=1, env=FAST)
    workers.start("claude-main", concurrency=1, env=FAST)
    workers.start("claude-team", concurrency=1, env=FAST)
    wait_until(lambda: WorkerGroup.objects.get(name="claude-main").health == "ok", message="claude-main's worker")

    (expensive,) = wait_terminal(_enqueue(fake("expensive", answer=EXPENSIVE), worker_group="claude-main").pk)
    assert expensive.status == "succeeded", workers.logs()
    assert TaskRun.objects.get(task=expensive).cost_usd >= Decimal("0.015")  # and its prompt's input tokens
    assert WorkerGroup.objects.get(name="claude-main").health == "over_budget"

    pinned = _enqueue(fake("pinned to main"), worker_group="claude-main")
    later = [_enqueue(fake(f"later {n}")) for n in range(3)]
    finished = wait_terminal(*[task.pk for task in later])

    assert [task.status for task in finished] == ["succeeded"] * 3, workers.logs()
    assert {task.worker_group.name for task in finished} == {"claude-team"}
    assert Task.objects.get(pk=pinned.pk).status == "queued"
    assert sorted(AuditEvent.objects.filter(object_id="claude-main", action__startswith="budget_")
                  .values_list("action", "source")) == [("budget_reached", "system"), ("budget_warning", "system")]

    # Raising the budget lets the account work again at once (the change asks for a dispatch pass).
    group_update(name="claude-main", changes={"daily_budget_usd": "1.00"})
    (done,) = wait_terminal(pinned.pk)
    assert (done.status, done.worker_group.name) == ("succeeded", "claude-main"), workers.logs()
