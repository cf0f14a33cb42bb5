"""The spine end to end: real Celery worker processes, real broker, real database, stand-in CLIs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from tasks_app.models import Task, TaskEvent, TaskFile, TaskRun, WorkerGroup
from tasks_app.services.groups import group_create
from tasks_app.services.tasks import TaskSpec, task_create
from tests.conftest import ROOT, WorkerProcesses, wait_until
from tests.procs import processes_with_env

pytestmark = pytest.mark.e2e

TERMINAL = ("succeeded", "failed", "canceled")


def fake(prompt: str, **directive) -> str:
    return f"{prompt}\nFAKE: {json.dumps(directive)}"


def schedulerctl(workers: WorkerProcesses, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "schedulerctl"
    return subprocess.run([str(script), *args], cwd=ROOT, env=workers.env(), capture_output=True, text=True,
                          timeout=60, check=False)


def wait_terminal(*task_ids, timeout: float = 60.0) -> list[Task]:
    def done():
        by_id = {str(t.pk): t for t in Task.objects.filter(pk__in=task_ids)}
        tasks = [by_id[str(pk)] for pk in task_ids if str(pk) in by_id]  # in the order asked for
        return tasks if len(tasks) == len(task_ids) and all(t.status in TERMINAL for t in tasks) else None

    return wait_until(done, timeout=timeout, interval=0.1, message=f"{len(task_ids)} task(s) to finish")


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_enqueue_from_schedulerctl_runs_on_a_claude_main_worker(workers: WorkerProcesses) -> None:
    group_create(tool="claude", account="main", max_concurrent=1, credentials={"ANTHROPIC_API_KEY": "sk-e2e-main"})
    workers.start("control", concurrency=1)
    workers.start("claude-main", concurrency=1)
    prompt = fake("write the report", write={"out/report.md": "# Report\nall good\n"}, answer="report written")

    proc = schedulerctl(workers, "enqueue", "claude", prompt, "--output", "out/report.md", "--json")

    assert proc.returncode == 0, proc.stderr
    task_id = json.loads(proc.stdout)["id"]
    (task,) = wait_terminal(task_id)
    assert task.status == "succeeded", (task.error_message, workers.logs())
    assert task.worker_group.name == "claude-main"
    assert task.result["final_message"] == "report written"
    (run,) = TaskRun.objects.filter(task=task)
    assert (run.attempt, run.status, run.exit_code, run.failure_kind) == (1, "succeeded", 0, "")
    assert run.input_tokens > 0 and run.output_tokens == 2 and run.latency_ms is not None
    assert '"type":"result"' in run.stdout.replace(" ", "")
    assert Path(run.command[0]).name == "claude" and run.command[1] == "-p"
    assert "write the report" not in " ".join(run.command)  # the prompt went on stdin
    (out,) = TaskFile.objects.filter(task=task, direction="output")
    data = b"# Report\nall good\n"
    assert (out.path, out.read_bytes(), out.sha256) == ("out/report.md", data, hashlib.sha256(data).hexdigest())
    events = TaskEvent.objects.filter(task=task).order_by("created_at", "id")
    chain = list(events.values_list("from_status", "to_status"))
    assert chain == [("", "queued"), ("queued", "leased"), ("leased", "running"), ("running", "succeeded")]
    # The worker logs one JSON object per line, with the job's context.
    lines = [json.loads(line) for log in workers.log_dir.glob("*.log") for line in log.read_text().splitlines()
             if line.startswith("{")]
    started = [entry for entry in lines if entry.get("task_id") == task_id and "started on" in entry["msg"]]
    assert started and started[0]["attempt"] == "1" and started[0]["group"] == "claude-main"
    # Read back through the CLI too.
    shown = schedulerctl(workers, "--json", "get", task_id)
    assert json.loads(shown.stdout)["files"][0]["sha256"] == out.sha256


def test_caps_hold_across_worker_processes_and_each_job_runs_once_with_its_groups_key(
    workers: WorkerProcesses, tmp_path: Path
) -> None:
    log = tmp_path / "cli.log"
    group_create(tool="claude", account="main", max_concurrent=2, credentials={"ANTHROPIC_API_KEY": "key-main"},
                 env={"FAKE_CLI_LOG": str(log)})
    group_create(tool="claude", account="team-a", max_concurrent=1, credentials={"ANTHROPIC_API_KEY": "key-team"},
                 env={"FAKE_CLI_LOG": str(log)})
    workers.start("control", concurrency=1)
    # Three worker processes with more process slots (6) than the caps allow (3): only the dispatcher limits.
    workers.start("claude-main", concurrency=2, name="main1")
    workers.start("claude-main", concurrency=2, name="main2")
    workers.start("claude-team-a", concurrency=2, name="team")

    ids = [task_create(spec=TaskSpec(tool="claude", prompt=fake(f"job {i}", sleep=0.6, tag=f"job-{i}")),
                       source="api")[0].pk for i in range(12)]
    tasks = wait_terminal(*ids, timeout=120)

    assert {t.status for t in tasks} == {"succeeded"}, workers.logs()
    entries = read_log(log)
    starts = [e for e in entries if e["event"] == "start"]
    assert sorted(e["tag"] for e in starts) == sorted(f"job-{i}" for i in range(12))  # each exactly once
    caps = {"key-main": 2, "key-team": 1}
    for cred, cap in caps.items():
        timeline = sorted((e["t"], 1 if e["event"] == "start" else -1) for e in entries if e["cred"] == cred)
        running = peak = 0
        for _, delta in sorted(timeline, key=lambda item: (item[0], item[1])):
            running += delta
            peak = max(peak, running)
        assert 1 <= peak <= cap, f"{cred} peaked at {peak} concurrent runs (cap {cap})"
    # Each run used its own group's credential.
    expected = {"claude-main": "key-main", "claude-team-a": "key-team"}
    by_tag = {e["tag"]: e["cred"] for e in starts}
    for run in TaskRun.objects.select_related("task", "worker_group"):
        tag = run.task.prompt.split("\n")[0].replace("job ", "job-")
        assert by_tag[tag] == expected[run.worker_group.name]
    assert TaskRun.objects.count() == 12


def test_priority_nine_enqueued_later_runs_next(workers: WorkerProcesses, tmp_path: Path) -> None:
    log = tmp_path / "cli.log"
    group_create(tool="claude", account="main", max_concurrent=1, env={"FAKE_CLI_LOG": str(log)})
    workers.start("control", concurrency=1)
    workers.start("claude-main", concurrency=1)
    blocker, _ = task_create(spec=TaskSpec(tool="claude", prompt=fake("block", sleep=1.5, tag="blocker")),
                             source="api")
    wait_until(lambda: Task.objects.get(pk=blocker.pk).status == "running", message="blocker to run")

    low = [task_create(spec=TaskSpec(tool="claude", prompt=fake(f"low {i}", tag=f"low-{i}"), priority=1),
                       source="api")[0].pk for i in range(3)]
    urgent, _ = task_create(spec=TaskSpec(tool="claude", prompt=fake("urgent", tag="urgent"), priority=9),
                            source="api")
    wait_terminal(blocker.pk, urgent.pk, *low, timeout=60)

    order = [e["tag"] for e in read_log(log) if e["event"] == "start"]
    assert order == ["blocker", "urgent", "low-0", "low-1", "low-2"]


def test_cli_environment_holds_only_its_groups_credentials(workers: WorkerProcesses) -> None:
    group_create(tool="claude", account="main", credentials={"ANTHROPIC_API_KEY": "sk-main-only"},
                 env={"CLAUDE_CONFIG_DIR": "/srv/claude/main"})
    group_create(tool="claude", account="team-a", credentials={"ANTHROPIC_API_KEY": "sk-team-never"})
    worker_env = {
        "SECRET_KEY": settings.SECRET_KEY,
        "ANTHROPIC_API_KEY": "sk-worker-box-own",
        "CLAUDECODE": "1",
        "AWS_SECRET_ACCESS_KEY": "aws-worker-secret",
    }
    workers.start("control", concurrency=1, env=worker_env)
    workers.start("claude-main", concurrency=1, env=worker_env)

    task, _ = task_create(spec=TaskSpec(tool="claude", prompt=fake("env", dump_env="env.json"),
                                        output_files=["env.json"], worker_group="claude-main"), source="api")
    (task,) = wait_terminal(task.pk)

    assert task.status == "succeeded", (task.error_message, workers.logs())
    child_env = json.loads(TaskFile.objects.get(task=task, path="env.json").read_bytes())
    assert child_env["ANTHROPIC_API_KEY"] == "sk-main-only"
    assert child_env["CLAUDE_CONFIG_DIR"] == "/srv/claude/main"
    for name in ("DATABASE_URL", "SECRET_KEY", "CELERY_BROKER_URL", "CLAUDECODE", "AWS_SECRET_ACCESS_KEY",
                 "SCHEDULER_ENCRYPTION_KEY", "DJANGO_SETTINGS_MODULE"):
        assert name not in child_env
    dumped = json.dumps(child_env)
    for value in ("sk-team-never", "sk-worker-box-own", settings.SECRET_KEY, "aws-worker-secret"):
        assert value not in dumped


def test_a_job_past_its_timeout_is_killed_with_its_children(workers: WorkerProcesses, tmp_path: Path) -> None:
    log = tmp_path / "cli.log"
    group_create(tool="claude", account="main", env={"FAKE_CLI_LOG": str(log)})
    workers.start("control", concurrency=1)
    workers.start("claude-main", concurrency=1)

    task, _ = task_create(spec=TaskSpec(tool="claude", prompt=fake("hang", scenario="hang", tag="hang"),
                                        timeout_seconds=2, max_attempts=3), source="api")
    (task,) = wait_terminal(task.pk, timeout=60)

    assert task.status == "failed"  # a timeout is not retried by default
    (run,) = TaskRun.objects.filter(task=task)
    assert run.failure_kind == "timeout" and "timed out after 2s" in task.error_message
    assert [e["tag"] for e in read_log(log) if e["event"] == "start"] == ["hang"]
    # The CLI and the child it started (inside the sandbox: found by the environment they carry).
    assert processes_with_env("FAKE_CLI_LOG", str(log)) == []


def test_a_missing_cli_quarantines_its_group_with_a_clear_reason_and_the_task_waits(workers: WorkerProcesses) -> None:
    group = group_create(tool="gemini", account="main")
    workers.start("control", concurrency=1)
    workers.start("gemini-main", concurrency=1, env={"SCHEDULER_GEMINI_BIN": "/opt/not-installed/gemini"})

    task, _ = task_create(spec=TaskSpec(tool="gemini", prompt="anything", max_attempts=3), source="api")
    wait_until(lambda: WorkerGroup.objects.get(pk=group.pk).health == "quarantined", timeout=60,
               message="the group to be quarantined")

    # Installing the CLI is an operator's job: the account is set aside, the task is not charged and waits.
    message = "/opt/not-installed/gemini not found: set SCHEDULER_GEMINI_BIN or install gemini"
    runs = list(TaskRun.objects.filter(task=task).values_list("failure_kind", "exit_code", "error_message"))
    assert runs == [("cli_missing", None, message)] * 3
    task.refresh_from_db()
    group.refresh_from_db()
    assert (task.status, task.attempts_left) == ("queued", 3)
    assert group.quarantine_reason == f"3 account failures in a row; the last: cli_missing: {message}"


def test_scheduled_and_backed_off_tasks_start_on_time_without_waiting_for_a_tick(
    workers: WorkerProcesses, tmp_path: Path
) -> None:
    # No beat runs here: nothing but the wake-ups sent after commit can start these tasks.
    env = {"SCHEDULER_RETRY_BASE_SECONDS": "1", "SCHEDULER_RETRY_MAX_SECONDS": "2",
           "FAKE_CLI_STATE": str(tmp_path)}
    group_create(tool="claude", account="main", max_concurrent=2, env={"FAKE_CLI_STATE": str(tmp_path)})
    workers.start("control", concurrency=1, env=env)
    workers.start("claude-main", concurrency=2, env=env)
    at = timezone.now() + timedelta(seconds=2)

    later, _ = task_create(spec=TaskSpec(tool="claude", prompt=fake("later"), scheduled_at=at), source="api")
    flaky, _ = task_create(spec=TaskSpec(tool="claude", prompt=fake(
        "flaky", scenario="provider_error", once_key=f"flaky-{tmp_path.name}")), source="api")
    later, flaky = wait_terminal(later.pk, flaky.pk, timeout=60)

    assert later.status == "succeeded" and later.started_at >= at
    assert flaky.status == "succeeded"
    assert list(TaskRun.objects.filter(task=flaky).order_by("attempt").values_list("failure_kind", flat=True)) == [
        "provider_error", ""]
