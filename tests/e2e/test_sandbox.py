"""Every run in a sandbox that dies with its lease (issue 13), with real workers on the real broker: a stalled box
never runs a task twice or over its cap, a killed box leaves nothing behind, a hostile CLI reaches no secret."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.conf import settings

from executors.sandbox import bwrap_check
from tasks_app.models import Task, TaskEvent, TaskFile, TaskRun
from tasks_app.services.groups import group_create
from tasks_app.services.tasks import InputFile, TaskSpec, task_cancel, task_create
from tests.conftest import WorkerProcesses, wait_until
from tests.e2e.test_faults import FAST, _enqueue
from tests.e2e.test_pipeline import fake, read_log, wait_terminal
from tests.procs import cli_processes, processes_with_env

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(bwrap_check()), reason="make test installs bubblewrap")]

LEASE = float(FAST["SCHEDULER_LEASE_SECONDS"])


def _logged(log: Path, event: str, tag: str) -> list[dict]:
    return [e for e in read_log(log) if e["event"] == event and e["tag"] == tag] if log.exists() else []


def test_a_stalled_box_never_runs_a_task_twice_nor_over_its_cap(workers: WorkerProcesses, tmp_path: Path) -> None:
    log = tmp_path / "cli.log"
    group_create(tool="claude", account="main", max_concurrent=1, env={"FAKE_CLI_LOG": str(log)})
    workers.start_beat(env=FAST)
    workers.start("control", concurrency=1, env=FAST)
    stalled = workers.start("claude-main", concurrency=1, name="stalled", env=FAST)
    task = _enqueue(fake("long", sleep=5, tag="long", write={"out.txt": "done"}), output_files=["out.txt"])
    wait_until(lambda: _logged(log, "start", "long"), message="the CLI to start")

    os.killpg(stalled.pid, signal.SIGSTOP)  # a GC pause, a blocked database call, a frozen VM
    most_alive = 0
    try:
        workers.start("claude-main", concurrency=1, name="healthy", env=FAST)
        deadline = time.monotonic() + 60
        while Task.objects.get(pk=task.pk).status not in ("succeeded", "failed", "canceled"):
            # The CLI plus nothing else; a second copy of the task (here also the group's cap) would show here.
            most_alive = max(most_alive, len(cli_processes(log)))
            assert time.monotonic() < deadline, workers.logs()
            time.sleep(0.05)
        events_before = TaskEvent.objects.filter(task=task).count()
    finally:
        os.killpg(stalled.pid, signal.SIGCONT)
    wait_until(lambda: "the lease moved on" in (workers.log_dir / "stalled.log").read_text(), timeout=30,
               message="the woken box to drop its stale result")

    task.refresh_from_db()
    assert most_alive == 1
    assert task.status == "succeeded"
    runs = list(TaskRun.objects.filter(task=task).order_by("attempt").values_list("status", "failure_kind"))
    assert runs == [("failed", "worker_lost"), ("succeeded", "")]
    assert TaskEvent.objects.filter(task=task, to_status="succeeded").count() == 1
    assert TaskEvent.objects.filter(task=task).count() == events_before  # the stale box wrote nothing
    (output,) = TaskFile.objects.filter(task=task, direction="output")
    assert output.run.attempt == 2
    assert [e["tag"] for e in read_log(log) if e["event"] == "end"] == ["long"]  # the first never finished


def test_a_killed_box_leaves_no_process_of_its_run_and_the_task_runs_elsewhere(workers: WorkerProcesses,
                                                                              tmp_path: Path) -> None:
    log = tmp_path / "cli.log"
    group_create(tool="claude", account="main", max_concurrent=1, env={"FAKE_CLI_LOG": str(log)})
    workers.start_beat(env=FAST)
    workers.start("control", concurrency=1, env=FAST)
    doomed = workers.start("claude-main", concurrency=1, name="doomed", env=FAST)
    task = _enqueue(fake("long", sleep=4, detach=True, tag="long"))
    wait_until(lambda: _logged(log, "detached", "long"), message="the CLI to leave a detached descendant")
    assert len(cli_processes(log)) == 2  # the CLI and its setsid() grandchild

    os.killpg(doomed.pid, signal.SIGKILL)  # the OOM killer, a deploy, a power cut of the worker
    killed = time.monotonic()
    wait_until(lambda: not processes_with_env("FAKE_CLI_LOG", str(log)), timeout=LEASE,
               message="every process of the dead box's run to be gone")
    assert time.monotonic() - killed < LEASE
    workers.start("claude-main", concurrency=1, name="survivor", env=FAST)
    (task,) = wait_terminal(task.pk, timeout=60)

    assert task.status == "succeeded", workers.logs()
    runs = list(TaskRun.objects.filter(task=task).order_by("attempt").values_list("failure_kind", "sandbox"))
    assert runs == [("worker_lost", "bwrap"), ("", "bwrap")]


def test_a_hostile_cli_reaches_no_secret_of_the_worker_other_groups_or_other_tenants(
    workers: WorkerProcesses, tmp_path: Path, settings_key: str
) -> None:
    shared = tmp_path / "shared"  # the only extra path bound into the sandboxes: the stand-ins' log
    shared.mkdir()
    log = shared / "cli.log"
    own_state, other_state = tmp_path / "state-main", tmp_path / "state-other"
    other_state.mkdir()
    (other_state / "credentials.json").write_text('{"token": "other-state-secret-61"}')
    group_create(tool="claude", account="main", max_concurrent=2, credentials={"ANTHROPIC_API_KEY": "sk-own-77"},
                 env={"FAKE_CLI_LOG": str(log), "CLAUDE_CONFIG_DIR": str(own_state)})
    # (No log for the other group: the stand-ins write their credential into it, and the log dir is shared.)
    group_create(tool="claude", account="other", credentials={"ANTHROPIC_API_KEY": "sk-other-group-83"},
                 env={"CLAUDE_CONFIG_DIR": str(other_state)})
    worker_secrets = {"SECRET_KEY": settings.SECRET_KEY, "SCHEDULER_ENCRYPTION_KEY": settings_key,
                      "DATABASE_URL": workers.env()["DATABASE_URL"]}
    env = {**FAST, **worker_secrets, "SCHEDULER_SANDBOX_RW_PATHS": str(shared)}
    workers.start("control", concurrency=1, env=env)
    workers.start("claude-main,claude-other", concurrency=2, env=env)
    # Another tenant's job runs at the same time, with an input file of its own.
    neighbour = task_create(spec=TaskSpec(tool="claude", prompt=fake("neighbour", scenario="hang", tag="neighbour"),
                                          worker_group="claude-other",
                                          input_files=[InputFile("private/plan.txt", b"neighbour-input-secret-52")]),
                            tenant="other-tenant", source="api")[0]
    wait_until(lambda: Task.objects.get(pk=neighbour.pk).status == "running", message="the neighbour to run")
    var_dir = Path(workers.env()["SCHEDULER_VAR_DIR"])
    probes = [str(var_dir), str(workers.log_dir / "work"), str(other_state), "/root", "/workspace"]

    hostile = _enqueue(fake("snoop", hostile="findings.json", probe=probes, tag="hostile"),
                       worker_group="claude-main", output_files=["findings.json"],
                       input_files=[InputFile("mine.txt", b"own-input-13")])
    (hostile,) = wait_terminal(hostile.pk, timeout=60)

    assert hostile.status == "succeeded", workers.logs()
    findings = TaskFile.objects.get(task=hostile, path="findings.json").read_bytes().decode()
    # It could look and write what it found (its own key, input and work dir): the test is not vacuous.
    assert "sk-own-77" in findings and "own-input-13" in findings
    assert json.loads(findings)["listed"]
    for name, value in worker_secrets.items():
        assert value not in findings, name
    for secret in ("sk-other-group-83", "other-state-secret-61", "neighbour-input-secret-52"):
        assert secret not in findings
    reached = json.loads(findings)["probes"]
    # Its own work dir, at /workspace/<its conversation>, and no other; the box's real work dirs are not there at all.
    assert reached.pop("/workspace") == [str(hostile.pk)]
    assert reached == dict.fromkeys([str(var_dir), str(workers.log_dir / "work"), str(other_state), "/root"])
    assert TaskRun.objects.get(task=hostile).sandbox == "bwrap"
    assert Task.objects.get(pk=neighbour.pk).status == "running"  # it was there to be found, all along
    task_cancel(task_id=neighbour.pk, source="api", actor="test")
    wait_terminal(neighbour.pk, timeout=30)


def test_sandbox_off_is_an_explicit_recorded_choice(workers: WorkerProcesses, tmp_path: Path) -> None:
    group_create(tool="claude", account="main")
    workers.start("control", concurrency=1, env=FAST)
    workers.start("claude-main", concurrency=1, name="open", env={**FAST, "SCHEDULER_SANDBOX": "off"})

    (task,) = wait_terminal(_enqueue(fake("plain")).pk)

    assert task.status == "succeeded"
    assert TaskRun.objects.get(task=task).sandbox == "off"
    assert "SCHEDULER_SANDBOX=off" in (workers.log_dir / "open.log").read_text()


def test_a_worker_without_bubblewrap_refuses_to_start(workers: WorkerProcesses, tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    with pytest.raises(AssertionError, match="worker refuses to start: bubblewrap"):
        workers.start("claude-main", concurrency=1, name="unsandboxed", env={"PATH": str(tmp_path / "bin")})


@pytest.fixture
def settings_key(settings) -> str:
    """An explicit credentials key, shared by this process (which stores the credentials) and the workers."""
    settings.SCHEDULER_ENCRYPTION_KEY = Fernet.generate_key().decode()
    return settings.SCHEDULER_ENCRYPTION_KEY
