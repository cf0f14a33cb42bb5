"""Chains end to end: real worker processes, real broker and database, stand-in CLIs. A dependent runs only after
its parents succeeded, with their outputs in its work dir; a failing parent cancels its dependents."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tasks_app.models import Task, TaskEvent, TaskFile, TaskRun
from tasks_app.services.groups import group_create
from tasks_app.services.tasks import TaskSpec, task_create
from tests.conftest import ROOT, WorkerProcesses
from tests.e2e.test_pipeline import fake, wait_terminal

pytestmark = pytest.mark.e2e


def schedulerctl(workers: WorkerProcesses, *args: str) -> subprocess.CompletedProcess[str]:
    # `python -m` from the checkout under test: the console script would import the installed one.
    return subprocess.run([sys.executable, "-m", "tasks_app.cli", *args], cwd=ROOT, env=workers.env(),
                          capture_output=True, text=True, timeout=60, check=False)


def _event_time(task: Task, to_status: str):
    return TaskEvent.objects.filter(task=task, to_status=to_status).latest("id").created_at


def test_a_task_after_two_others_starts_once_both_succeeded_with_their_outputs(workers: WorkerProcesses) -> None:
    group_create(tool="claude", account="main", max_concurrent=3)
    workers.start("control", concurrency=1)
    workers.start("claude-main", concurrency=3)
    first = task_create(spec=TaskSpec(tool="claude", output_files=["a.txt"],
                                      prompt=fake("first", sleep=0.5, write={"a.txt": "from A\n"})), source="api")[0]
    second = task_create(spec=TaskSpec(tool="claude", output_files=["out/b.md"],
                                       prompt=fake("second", write={"out/b.md": "# from B\n"})), source="api")[0]

    # Through schedulerctl, by the short ids people copy from tables.
    proc = schedulerctl(workers, "enqueue", "claude", fake("third", list_files="seen.json"), "--output",
                        "seen.json", "--after", str(first.pk)[:8], "--after", str(second.pk), "--json")

    assert proc.returncode == 0, proc.stderr
    third_id = json.loads(proc.stdout)["id"]
    first, second, third = wait_terminal(first.pk, second.pk, third_id, timeout=90)
    assert [t.status for t in (first, second, third)] == ["succeeded"] * 3, workers.logs()
    # Leased only once both parents had succeeded.
    assert _event_time(third, "leased") > max(_event_time(first, "succeeded"), _event_time(second, "succeeded"))
    seen = json.loads(TaskFile.objects.get(task=third, direction="output", path="seen.json").read_bytes())
    assert seen[f"{first.pk}/a.txt"] == "from A\n"
    assert seen[f"{second.pk}/out/b.md"] == "# from B\n"
    shown = json.loads(schedulerctl(workers, "--json", "get", third_id).stdout)
    assert (sorted(shown["depends_on"]), shown["waiting_on"]) == (sorted([str(first.pk), str(second.pk)]), [])


def test_a_failing_parent_cancels_its_dependent_which_never_runs(workers: WorkerProcesses) -> None:
    group_create(tool="claude", account="main", max_concurrent=2)
    workers.start("control", concurrency=1)
    workers.start("claude-main", concurrency=2)
    parent = task_create(spec=TaskSpec(tool="claude", max_attempts=1,
                                       prompt=fake("parent", scenario="exit", exit_code=4)), source="api")[0]
    child = task_create(spec=TaskSpec(tool="claude", prompt=fake("child"), depends_on=[str(parent.pk)]),
                        source="api")[0]

    parent, child = wait_terminal(parent.pk, child.pk, timeout=60)

    assert (parent.status, child.status) == ("failed", "canceled"), workers.logs()
    assert not TaskRun.objects.filter(task=child).exists()
    event = TaskEvent.objects.filter(task=child).latest("id")
    assert (event.from_status, event.to_status, event.reason, event.data) == (
        "queued", "canceled", f"parent {parent.pk} failed", {"parent": str(parent.pk)})
