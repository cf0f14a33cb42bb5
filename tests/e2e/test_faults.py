"""Faults with real processes: rate limits, killed and paused workers, a restarted broker, cancel, and
credentials that must never be recorded. Leases, ticks and backoff are shortened through the environment."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery, current_app
from django.conf import settings
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from tasks_app.models import Task, TaskEvent, TaskFile, TaskRun, WorkerGroup
from tasks_app.presenters import task_dict
from tasks_app.services.accounts import token_create, user_create
from tasks_app.services.dispatch import dispatch_runnable
from tasks_app.services.groups import group_create
from tasks_app.services.tasks import TaskSpec, task_create
from tests.conftest import WorkerProcesses, wait_until
from tests.e2e.test_pipeline import fake, read_log, schedulerctl, wait_terminal
from tests.procs import cli_processes

pytestmark = pytest.mark.e2e

FAST = {
    "SCHEDULER_LEASE_SECONDS": "3",
    "SCHEDULER_TICK_SECONDS": "0.5",
    "SCHEDULER_RETRY_BASE_SECONDS": "0.5",
    "SCHEDULER_RETRY_MAX_SECONDS": "1",
    "SCHEDULER_CANCEL_POLL_SECONDS": "0.2",
}


def _enqueue(prompt: str, **spec) -> Task:
    return task_create(spec=TaskSpec(tool=spec.pop("tool", "claude"), prompt=prompt, **spec), source="api")[0]


def _started(log: Path, tag: str) -> list[dict]:
    return [e for e in read_log(log) if e["event"] == "start" and e["tag"] == tag] if log.exists() else []


def test_rate_limit_retries_on_the_other_account_and_new_jobs_avoid_the_limited_one(
    workers: WorkerProcesses, tmp_path: Path
) -> None:
    log = tmp_path / "cli.log"
    env = {"FAKE_CLI_LOG": str(log), "FAKE_CLI_STATE": str(tmp_path)}
    main = group_create(tool="gemini", account="main", credentials={"GEMINI_API_KEY": "g-main"}, env=env)
    group_create(tool="gemini", account="team-a", credentials={"GEMINI_API_KEY": "g-team"}, env=env)
    workers.start_beat(env=FAST)
    workers.start("control", concurrency=1, env=FAST)
    workers.start("gemini-main,gemini-team-a", concurrency=2, env=FAST)

    limited = _enqueue(fake("first", scenario="rate_limit", once_key=f"k-{tmp_path.name}", reset_in=60, tag="first"),
                       tool="gemini")
    (limited,) = wait_terminal(limited.pk)

    assert limited.status == "succeeded", workers.logs()
    first, second = TaskRun.objects.filter(task=limited).order_by("attempt")
    assert (first.worker_group.name, first.failure_kind, first.exit_code) == ("gemini-main", "rate_limited", 173)
    assert 50 <= first.retry_after_seconds <= 60
    assert (second.worker_group.name, second.status) == ("gemini-team-a", "succeeded")
    main.refresh_from_db()
    assert main.rate_limited_until > timezone.now() + timezone.timedelta(seconds=30)
    reasons = list(TaskEvent.objects.filter(task=limited).values_list("to_status", flat=True))
    assert reasons == ["queued", "leased", "running", "queued", "leased", "running", "succeeded"]

    later = [_enqueue(fake(f"later {i}", tag=f"later-{i}"), tool="gemini") for i in range(3)]
    wait_terminal(*(t.pk for t in later))
    assert set(TaskRun.objects.filter(task__in=later).values_list("worker_group__name", flat=True)) == {"gemini-team-a"}
    assert {e["cred"] for e in read_log(log) if e["event"] == "start" and e["tag"].startswith("later")} == {"g-team"}


def test_a_sigkilled_worker_is_detected_and_the_task_runs_once_more_elsewhere(
    workers: WorkerProcesses, tmp_path: Path
) -> None:
    log = tmp_path / "cli.log"
    group_create(tool="claude", account="main", max_concurrent=1, env={"FAKE_CLI_LOG": str(log)})
    workers.start_beat(env=FAST)
    workers.start("control", concurrency=1, env=FAST)
    doomed = workers.start("claude-main", concurrency=1, name="doomed", env=FAST)
    task = _enqueue(fake("long", sleep=3, tag="long", write={"out.txt": "done"}), output_files=["out.txt"])
    wait_until(lambda: _started(log, "long"), message="the CLI to start")
    # Kill the box (its CLI runs in a session of its own), then bring up the other one.
    os.killpg(doomed.pid, signal.SIGKILL)
    killed_at = time.time()
    wait_until(lambda: not cli_processes(log), timeout=float(FAST["SCHEDULER_LEASE_SECONDS"]),
               message="the dead box's CLI to be gone within the lease")
    workers.start("claude-main", concurrency=1, name="survivor", env=FAST)
    (task,) = wait_terminal(task.pk, timeout=60)

    assert task.status == "succeeded", workers.logs()
    lost, good = TaskRun.objects.filter(task=task).order_by("attempt")
    assert (lost.failure_kind, lost.status, good.status) == ("worker_lost", "failed", "succeeded")
    assert good.worker != lost.worker
    assert TaskRun.objects.filter(task=task, status="succeeded").count() == 1
    starts = _started(log, "long")
    assert len(starts) == 2 and starts[1]["t"] > killed_at  # never two copies at once
    assert TaskFile.objects.get(task=task, direction="output").read_bytes() == b"done"


def test_cancel_kills_a_running_job_from_the_command_line(workers: WorkerProcesses, tmp_path: Path) -> None:
    log = tmp_path / "cli.log"
    group_create(tool="claude", account="main", env={"FAKE_CLI_LOG": str(log)})
    workers.start("control", concurrency=1, env=FAST)
    workers.start("claude-main", concurrency=1, env=FAST)
    task = _enqueue(fake("forever", scenario="hang", tag="hang"))
    wait_until(lambda: _started(log, "hang"), message="the CLI to start")

    proc = schedulerctl(workers, "--actor", "ops-ann", "cancel", str(task.pk))
    asked = time.monotonic()

    assert proc.returncode == 0, proc.stderr
    (task,) = wait_terminal(task.pk, timeout=15)
    wait_until(lambda: not cli_processes(log), timeout=10, message="the CLI and its child to be gone")
    assert time.monotonic() - asked < 10
    assert task.status == "canceled"
    last = TaskEvent.objects.filter(task=task).last()
    assert (last.from_status, last.to_status, last.source, last.actor) == ("running", "canceled", "cli", "ops-ann")
    assert TaskRun.objects.get(task=task).failure_kind == "canceled"


@pytest.mark.skipif(not settings.CELERY_BROKER_URL.startswith("redis"), reason="Redis visibility timeout")
def test_a_run_longer_than_the_visibility_timeout_runs_once(workers: WorkerProcesses, tmp_path: Path) -> None:
    log = tmp_path / "cli.log"
    env = {**FAST, "SCHEDULER_BROKER_VISIBILITY_TIMEOUT": "5"}
    group_create(tool="claude", account="main", max_concurrent=2, env={"FAKE_CLI_LOG": str(log)})
    workers.start("control", concurrency=1, env=env)
    workers.start("claude-main", concurrency=1, name="w1", env=env)
    workers.start("claude-main", concurrency=1, name="w2", env=env)

    task = _enqueue(fake("twenty seconds", sleep=20, tag="slow"))
    (task,) = wait_terminal(task.pk, timeout=90)

    assert task.status == "succeeded"
    assert len(_started(log, "slow")) == 1
    assert TaskRun.objects.filter(task=task).count() == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _redis_server(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.2)

    def up() -> bool:
        with contextlib.suppress(redis.ConnectionError):
            return bool(client.ping())
        return False

    wait_until(up, timeout=10, message="redis-server to accept connections")
    return proc


def test_jobs_survive_a_broker_restart(workers: WorkerProcesses, tmp_path: Path) -> None:
    port = _free_port()
    broker = _redis_server(port, tmp_path)
    log = tmp_path / "cli.log"
    env = {**FAST, "CELERY_BROKER_URL": f"redis://127.0.0.1:{port}/0", "SCHEDULER_BROKER_PREFIX": ""}
    try:
        group_create(tool="claude", account="main", max_concurrent=4, env={"FAKE_CLI_LOG": str(log)})
        workers.start_beat(env=env)
        workers.start("control", concurrency=1, env=env)
        workers.start("claude-main", concurrency=2, name="w1", env=env)
        workers.start("claude-main", concurrency=2, name="w2", env=env)
        # Created here, dispatched by beat's tick on the throwaway broker (this process talks to the other one).
        tasks = [_enqueue(fake(f"job {i}", sleep=0.3, tag=f"job-{i}")) for i in range(50)]
        wait_until(lambda: Task.objects.filter(status="succeeded").count() >= 10, timeout=60,
                   message="ten jobs to finish before the restart")

        broker.kill()
        broker.wait(timeout=10)
        broker = _redis_server(port, tmp_path)
        done = wait_terminal(*(t.pk for t in tasks), timeout=180)
    finally:
        broker.kill()
        broker.wait(timeout=10)

    assert [t.status for t in done].count("succeeded") == 50, workers.logs()
    tags = [e["tag"] for e in read_log(log) if e["event"] == "start"]
    assert sorted(tags) == sorted(f"job-{i}" for i in range(50))  # every job started exactly once
    assert TaskRun.objects.filter(status="succeeded").count() == 50


def test_credentials_never_reach_logs_runs_events_or_json(workers: WorkerProcesses, tmp_path: Path) -> None:
    secret_main, secret_team = "sk-ant-e2e-Zq81x0", "sk-ant-e2e-Vb52m7"
    group_create(tool="claude", account="main", credentials={"ANTHROPIC_API_KEY": secret_main},
                 env={"FAKE_CLI_ECHO_ENV": "ANTHROPIC_API_KEY"})
    group_create(tool="claude", account="team-a", credentials={"ANTHROPIC_API_KEY": secret_team},
                 env={"FAKE_CLI_ECHO_ENV": "ANTHROPIC_API_KEY"})
    workers.start("control", concurrency=1, env=FAST, loglevel="DEBUG")
    workers.start("claude-main,claude-team-a", concurrency=2, env=FAST, loglevel="DEBUG")

    tasks = [
        _enqueue(fake("ok", tag="ok")),
        _enqueue(fake("auth", scenario="auth"), worker_group="claude-team-a"),  # pinned: it fails, not moves
        _enqueue(fake("limit", scenario="rate_limit"), max_attempts=1),
        _enqueue(fake("crash", scenario="exit", exit_code=2, stderr="boom")),
    ]
    wait_terminal(*(t.pk for t in tasks), timeout=60)

    recorded = [workers.logs(tail=None)]
    recorded += [f"{r.stdout}{r.stderr}{r.command}" for r in TaskRun.objects.all()]
    recorded += [f"{e.reason}{e.data}" for e in TaskEvent.objects.all()]
    recorded += [json.dumps(task_dict(t, detail=True), default=str) for t in Task.objects.all()]
    recorded += [schedulerctl(workers, "--json", "groups", "list").stdout]
    recorded += [g.credentials_encrypted for g in WorkerGroup.objects.all()]
    text = "\n".join(recorded)
    assert "debug: ANTHROPIC_API_KEY=[redacted]" in text  # the CLI did print it: it was scrubbed
    assert secret_main not in text and secret_team not in text


def test_outputs_that_are_symlinks_are_refused_never_read(workers: WorkerProcesses) -> None:
    group_create(tool="claude", account="main")
    workers.start("control", concurrency=1, env=FAST)
    workers.start("claude-main", concurrency=1, env=FAST)
    prompt = fake("outputs", write={"ok.txt": "fine"}, symlink={"leak.txt": "/etc/passwd", "etc-link": "/etc"})

    # Outputs may be missing (a refused one is): the task succeeds, marked with them.
    task = _enqueue(prompt, output_files=["ok.txt", "leak.txt", "etc-link/passwd", "*.txt"], require_outputs=False)
    (task,) = wait_terminal(task.pk)

    assert task.status == "succeeded", workers.logs()
    assert list(TaskFile.objects.filter(task=task, direction="output").values_list("path", flat=True)) == ["ok.txt"]
    errors = " | ".join(task.result["output_errors"])
    assert "'leak.txt' refused" in errors and "'etc-link/passwd' refused" in errors
    assert task.missing_outputs == ["leak.txt", "etc-link/passwd"]
    assert not any(b"root:" in f.read_bytes() for f in TaskFile.objects.filter(task=task))
    work_root = workers.log_dir / "work"
    assert not work_root.exists() or list(work_root.iterdir()) == []  # removed after collection


def test_work_dir_is_removed_after_a_timeout_kill(workers: WorkerProcesses) -> None:
    group_create(tool="claude", account="main")
    workers.start("control", concurrency=1, env=FAST)
    workers.start("claude-main", concurrency=1, env=FAST)

    task = _enqueue(fake("hang", scenario="hang", write={"partial.txt": "x"}), timeout_seconds=1)
    (task,) = wait_terminal(task.pk)

    assert task.status == "failed" and TaskRun.objects.get(task=task).failure_kind == "timeout"
    assert list((workers.log_dir / "work").iterdir()) == []


@contextlib.contextmanager
def _current_celery_app(broker_url: str) -> Iterator[None]:
    """This process sends through a Celery app on `broker_url` (what a web process would be configured with)."""
    previous = current_app._get_current_object()
    app = Celery("broker-down-test", set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    app.conf.broker_url = broker_url
    app.set_current()
    try:
        yield
    finally:
        previous.set_current()
        app.close()


@pytest.mark.skipif(not settings.CELERY_BROKER_URL.startswith("redis"), reason="a throwaway Redis broker")
def test_a_task_created_while_the_broker_is_down_is_committed_and_runs_when_it_is_back(
    workers: WorkerProcesses, tmp_path: Path
) -> None:
    port = _free_port()
    broker = _redis_server(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    env = {**FAST, "CELERY_BROKER_URL": url, "SCHEDULER_BROKER_PREFIX": ""}
    group_create(tool="claude", account="main")
    user_create(username="client", tenant="default")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_create(username='client')[1]}")
    broker.kill()
    broker.wait(timeout=10)

    with _current_celery_app(url):
        asked = time.monotonic()
        response = client.post("/api/v1/tasks/", {"tool": "claude", "prompt": fake("while the broker is down")},
                               format="json")
        answered = time.monotonic() - asked

    assert response.status_code == 201, response.content  # never a 500 after the commit (clients would retry)
    assert answered < 5  # it does not wait out publish retries against a dead broker
    task = Task.objects.get(pk=response.json()["id"])
    assert task.status == "queued"
    broker = _redis_server(port, tmp_path)
    try:
        workers.start_beat(env=env)
        workers.start("control", concurrency=1, env=env)
        workers.start("claude-main", concurrency=1, env=env)
        (task,) = wait_terminal(task.pk, timeout=60)  # dispatched by the tick, once the broker is back
    finally:
        broker.kill()
        broker.wait(timeout=10)
    assert task.status == "succeeded", workers.logs()


def test_a_revoked_account_is_quarantined_and_every_job_succeeds_on_the_healthy_one(
    workers: WorkerProcesses, tmp_path: Path
) -> None:
    group_create(tool="claude", account="main", max_concurrent=2)
    revoked = group_create(tool="claude", account="revoked", max_concurrent=2,
                           env={"FAKE_CLI_FORCE_SCENARIO": "auth"})  # every run: "Invalid API key"
    workers.start_beat(env=FAST)
    workers.start("control", concurrency=1, env=FAST)
    workers.start("claude-main,claude-revoked", concurrency=4, env=FAST)

    tasks = [_enqueue(fake(f"job {i}", tag=f"job-{i}"), max_attempts=1) for i in range(10)]
    done = wait_terminal(*(t.pk for t in tasks), timeout=120)

    assert [t.status for t in done] == ["succeeded"] * 10, workers.logs()
    revoked.refresh_from_db()
    assert revoked.health == "quarantined" and "auth" in revoked.quarantine_reason
    assert TaskRun.objects.filter(worker_group=revoked, failure_kind="auth").count() == revoked.account_failures
    assert TaskRun.objects.filter(status="succeeded", worker_group__name="claude-main").count() == 10


@pytest.mark.skipif(settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
                    reason="terminates PostgreSQL connections")
def test_database_connections_dropped_mid_run_do_not_kill_the_cli(workers: WorkerProcesses, tmp_path: Path) -> None:
    log = tmp_path / "cli.log"
    group_create(tool="claude", account="main", max_concurrent=1, env={"FAKE_CLI_LOG": str(log)})
    workers.start_beat(env=FAST)
    workers.start("control", concurrency=1, env=FAST)
    workers.start("claude-main", concurrency=1, env=FAST)
    task = _enqueue(fake("long", sleep=4, tag="long", write={"out.txt": "done"}), output_files=["out.txt"])
    wait_until(lambda: _started(log, "long"), message="the CLI to start")

    # What a failover or a restarted pooler does to the workers' connections (this test database's only).
    for _ in range(3):
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        time.sleep(0.7)
    (task,) = wait_terminal(task.pk, timeout=60)

    assert task.status == "succeeded", workers.logs()
    runs = list(TaskRun.objects.filter(task=task).values_list("attempt", "status", "failure_kind"))
    assert runs == [(1, "succeeded", "")]  # the same CLI run, not a retry after a killed one
    assert len(_started(log, "long")) == 1
    assert TaskFile.objects.get(task=task, direction="output").read_bytes() == b"done"


def test_a_worker_that_cannot_decrypt_its_groups_credentials_says_so_and_the_group_gets_no_work(
    workers: WorkerProcesses, tmp_path: Path
) -> None:
    group = group_create(tool="claude", account="main", credentials={"ANTHROPIC_API_KEY": "sk-stored-with-our-key"})
    workers.start("control", concurrency=1, env=FAST)
    workers.start("claude-main", concurrency=1, name="wrong-key",
                  env={**FAST, "SCHEDULER_ENCRYPTION_KEY": "a-key-that-is-not-the-one-" + "z" * 30})

    wait_until(lambda: WorkerGroup.objects.get(pk=group.pk).health == "quarantined", timeout=30,
               message="the group to be quarantined at the worker's start")
    assert "cannot decrypt the credentials of group claude-main" in (workers.log_dir / "wrong-key.log").read_text()
    task = _enqueue(fake("waits"))
    assert dispatch_runnable() == []  # no leases for it: nothing is started, then lost
    task.refresh_from_db()
    assert task.status == "queued" and not TaskRun.objects.filter(task=task).exists()
