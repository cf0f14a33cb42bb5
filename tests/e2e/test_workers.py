"""Real worker processes register and heartbeat; a group with no live consumer gets no leases (SPEC §8)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tasks_app.models import Heartbeat, Task, TaskEvent, TaskRun, Worker, WorkerGroup
from tasks_app.services.groups import group_create
from tasks_app.services.tasks import TaskSpec, task_create
from tests.conftest import WorkerProcesses, wait_until
from tests.e2e.test_pipeline import fake, schedulerctl, wait_terminal

pytestmark = pytest.mark.e2e

FAST = {
    "SCHEDULER_LEASE_SECONDS": "3",
    "SCHEDULER_TICK_SECONDS": "0.5",
    "SCHEDULER_RETRY_BASE_SECONDS": "0.5",
    "SCHEDULER_RETRY_MAX_SECONDS": "1",
    "SCHEDULER_WORKER_HEARTBEAT_SECONDS": "0.5",
    "SCHEDULER_WORKER_TIMEOUT_SECONDS": "2.5",
}


def _enqueue(prompt: str, tool: str = "claude", **spec) -> Task:
    return task_create(spec=TaskSpec(tool=tool, prompt=prompt, **spec), source="api")[0]


def _health(name: str) -> str:
    return WorkerGroup.objects.get(name=name).health


def _ticks_pass(n: int) -> None:
    """Wait for `n` more runs of beat's tick (each one a dispatch pass): an event, not a sleep."""
    seen: list[object] = []

    def advanced() -> bool:
        at = Heartbeat.objects.filter(name=Heartbeat.TICK).values_list("at", flat=True).first()
        if at is not None and (not seen or seen[-1] != at):
            seen.append(at)
        return len(seen) > n

    wait_until(advanced, timeout=30, message=f"{n} ticks")


def test_a_group_added_while_the_stack_runs_waits_for_its_worker_then_runs_at_once(
    workers: WorkerProcesses, settings
) -> None:
    settings.SCHEDULER_WORKER_TIMEOUT_SECONDS = 2.5  # this process reads health with the workers' timeout
    group_create(tool="claude", account="main", max_concurrent=1)
    workers.start_beat(env=FAST)
    workers.start("control", concurrency=1, env=FAST)
    workers.start("claude-main", concurrency=1, env=FAST)
    (first,) = wait_terminal(_enqueue(fake("before", answer="ok")).pk)
    assert first.status == "succeeded", workers.logs()

    added = schedulerctl(workers, "groups", "add", "codex", "late", "--max-concurrent", "2")
    assert added.returncode == 0, added.stderr
    assert "celery -A workers worker -Q codex-late -c 2 -n codex-late@%h" in added.stdout
    waiting = _enqueue(fake("needs the new account", answer="done"), tool="codex")
    _ticks_pass(3)  # three dispatch passes (and reconciler runs) with the task runnable

    assert Task.objects.get(pk=waiting.pk).status == "queued"
    assert list(TaskEvent.objects.filter(task=waiting).values_list("to_status", flat=True)) == ["queued"]
    assert _health("codex-late") == "no_worker"
    listed = schedulerctl(workers, "groups", "list")
    assert "no_worker" in listed.stdout, listed.stderr

    workers.start("codex-late", concurrency=2, env=FAST)
    (done,) = wait_terminal(waiting.pk)

    assert done.status == "succeeded", workers.logs()
    assert list(TaskEvent.objects.filter(task=waiting).values_list("to_status", flat=True)) == [
        "queued", "leased", "running", "succeeded"]  # leased once, to the worker that serves it
    assert _health("codex-late") == "ok"
    (registered,) = [w for w in Worker.objects.all() if "codex-late" in w.queues]
    assert (registered.queues, registered.concurrency, registered.stopped_at) == (["codex-late"], 2, None)


def test_a_stalled_box_gets_no_leases_and_a_stopped_one_leaves_at_once(
    workers: WorkerProcesses, tmp_path: Path, settings
) -> None:
    settings.SCHEDULER_WORKER_TIMEOUT_SECONDS = 2.5
    group_create(tool="gemini", account="a", max_concurrent=2)
    group_create(tool="gemini", account="b", max_concurrent=2)
    workers.start_beat(env=FAST)
    workers.start("control", concurrency=1, env=FAST)
    box_a = workers.start("gemini-a", concurrency=2, name="box-a", env=FAST)
    box_b = workers.start("gemini-b", concurrency=2, name="box-b", env=FAST)
    wait_until(lambda: _health("gemini-a") == _health("gemini-b") == "ok", message="both boxes to register")

    os.killpg(box_a.pid, signal.SIGSTOP)  # a frozen VM: no heartbeats, no consuming
    try:
        wait_until(lambda: _health("gemini-a") == "no_worker", timeout=15, message="box a to stop counting")
        tasks = [_enqueue(fake(f"job {i}", answer="ok"), tool="gemini") for i in range(4)]
        done = wait_terminal(*(t.pk for t in tasks), timeout=90)
    finally:
        os.killpg(box_a.pid, signal.SIGCONT)

    assert [t.status for t in done] == ["succeeded"] * 4, workers.logs()
    runs = TaskRun.objects.filter(task__in=tasks)
    assert sorted(runs.values_list("worker_group__name", flat=True)) == ["gemini-b"] * 4  # one attempt each
    leased_to = TaskEvent.objects.filter(task__in=tasks, to_status="leased").values_list("data", flat=True)
    assert [d["worker_group"] for d in leased_to] == ["gemini-b"] * 4  # nothing ever leased to the frozen box
    wait_until(lambda: _health("gemini-a") == "ok", timeout=15, message="box a to heartbeat again")

    os.kill(box_b.pid, signal.SIGTERM)  # a clean shutdown (a deploy): the worker's main process stops its pool
    box_b.wait(timeout=60)
    # Marked stopped on the way out: no heartbeat timeout to wait for.
    (gone,) = Worker.objects.filter(hostname__startswith="box-b@")
    assert gone.stopped_at is not None
    assert _health("gemini-b") == "no_worker"
