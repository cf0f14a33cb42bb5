"""Issue 18, what operators see: nothing that looks fine when it is not, nothing stale shown as current.

Declared outputs a run did not deliver (`missing_output`, or a marked success), attempts per budget, expired rate
limits, paused schedules, groups with no worker; and `schedulerctl` itself: its list, its errors, its logging and
its quiet end on a closed pipe. Real services, database and fake OpenAI server; the command line in-process through
`run([...])`, or as a process where the process is the point (logging, a closed pipe)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from executors import ExecutionResult, OutputFile
from executors.confinement import missing_outputs
from tasks_app.cli import run
from tasks_app.models import Schedule, Task, TaskEvent, TaskFile, TaskRun, TaskStatus
from tasks_app.services.accounts import token_create, user_create
from tasks_app.services.dispatch import dispatch_runnable
from tasks_app.services.followups import task_follow_up
from tasks_app.services.runs import run_finish, run_start
from tasks_app.services.schedules import ScheduleSpec, schedule_create, schedule_fire, schedule_set_enabled
from tasks_app.services.tasks import IdempotencyConflict, TaskSpec, task_create, task_retry
from tests.conftest import test_database_url as database_url
from tests.factories import TaskFactory, WorkerGroupFactory
from tests.fakes.fake_openai import FakeOpenAI
from tests.tasks_app.test_api import client_for
from tests.tasks_app.test_intake import task_answer

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


def _run_once(task: Task, result: ExecutionResult) -> Task:
    """Dispatch the queued task, start its attempt and finish it with `result`, through the services."""
    (lease,) = [lease for lease in dispatch_runnable() if lease.task_id == task.pk]
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="box:1")
    assert ctx is not None
    run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, result=result, worker="box:1")
    task.refresh_from_db()
    return task


def _ok(*outputs: str, errors: tuple[str, ...] = ()) -> ExecutionResult:
    return ExecutionResult(command=["claude", "-p"], exit_code=0, final_message="done", session_id="s-1",
                           outputs=[OutputFile(path, path.encode()) for path in outputs], output_errors=list(errors))


def _task(**spec: Any) -> Task:
    WorkerGroupFactory(account="main", max_concurrent=5)
    task, _ = task_create(spec=TaskSpec(tool="claude", prompt=spec.pop("prompt", "write hello.py"), **spec),
                          source="api")
    return task


def _out(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().out


# -- 1. declared outputs --------------------------------------------------------------------------------------------
def test_missing_outputs_are_the_paths_not_collected_and_the_globs_that_matched_nothing() -> None:
    patterns = ["hello.py", "docs/*.md", "reports/**/*.txt", "b/[ab].txt", "made.txt", "*.md"]

    missing = missing_outputs(patterns, ["made.txt", "reports/x/y/r.txt", "b/a.txt", "docs/sub/deep.md"])

    # "*" and "docs/*.md" stay in one directory: docs/sub/deep.md matches neither.
    assert missing == ["hello.py", "docs/*.md", "*.md"]


def test_an_undelivered_output_fails_the_run_as_missing_output_not_retried_keeping_what_it_made() -> None:
    task = _task(output_files=["hello.py", "docs/*.md", "made.txt"], max_attempts=3)

    task = _run_once(task, _ok("made.txt"))

    assert (task.status, task.attempt, task.attempts_left) == ("failed", 1, 2)  # attempts left, yet not retried
    run = TaskRun.objects.get(task=task)
    assert (run.status, run.failure_kind) == ("failed", "missing_output")
    assert run.error_message == task.error_message == "missing declared outputs: hello.py, docs/*.md"
    assert task.result["missing_outputs"] == task.missing_outputs == ["hello.py", "docs/*.md"]
    assert task.result["final_message"] == "done"
    output = TaskFile.objects.get(task=task, direction="output")
    assert (output.path, output.read_bytes(), output.run_id) == ("made.txt", b"made.txt", run.pk)
    last = TaskEvent.objects.filter(task=task).latest("id")
    assert (last.from_status, last.to_status) == ("running", "failed")
    assert "missing_output, not retryable" in last.reason


def test_a_refused_output_is_missing_too_and_the_message_says_why() -> None:
    task = _task(output_files=["leak.txt"])
    refusal = "output 'leak.txt' refused: 'leak.txt' is a symlink"

    task = _run_once(task, _ok(errors=("declared output 'other' was not produced", refusal)))

    assert task.status == "failed"
    assert task.error_message == f"missing declared output: leak.txt ({refusal})"


def test_a_task_allowing_missing_outputs_succeeds_and_carries_the_marker(admin_client: Client) -> None:
    task = _task(output_files=["hello.py", "*.md", "made.txt"], require_outputs=False)

    task = _run_once(task, _ok("made.txt"))

    assert task.status == "succeeded" and task.error_message == ""
    assert TaskRun.objects.get(task=task).failure_kind == ""
    assert task.result["missing_outputs"] == task.missing_outputs == ["hello.py", "*.md"]
    # The admin's task list has a column for it.
    html = admin_client.get(reverse("admin:tasks_app_task_changelist")).content.decode()
    assert '<th scope="col" class="column-missing_outputs">' in html
    assert '<td class="field-missing_outputs">hello.py, *.md</td>' in html


def test_everything_delivered_succeeds_without_a_marker() -> None:
    task = _task(output_files=["hello.py", "reports/*.md"])

    task = _run_once(task, _ok("hello.py", "reports/a.md"))

    assert task.status == "succeeded"
    assert "missing_outputs" not in task.result and task.missing_outputs == []


def test_a_retried_task_shows_no_marker_until_its_next_run_ends() -> None:
    task = _task(output_files=["hello.py"])
    task = _run_once(task, _ok())
    assert task.missing_outputs == ["hello.py"]

    task = task_retry(task_id=task.pk, source="cli")

    assert task.status == "queued" and task.missing_outputs == []


def test_a_task_finished_before_the_marker_existed_shows_what_its_collector_reported(capsys) -> None:
    task = TaskFactory(status=TaskStatus.SUCCEEDED, require_outputs=False, output_files=["hello.py", "*.md"],
                       result={"final_message": "done", "outputs": [],
                               "output_errors": ["declared output 'hello.py' was not produced"]})

    assert run(["get", str(task.pk), "--json"]) == 0

    assert task.missing_outputs == json.loads(_out(capsys))["missing_outputs"] == ["hello.py"]


def test_require_outputs_is_on_by_default_for_every_producer_and_a_follow_up_keeps_its_parents() -> None:
    WorkerGroupFactory(account="main", max_concurrent=5)
    schedule = schedule_create(spec=ScheduleSpec(name="nightly", tool="claude", prompt="p", cron="0 3 * * *",
                                                 output_files=["report.md"]))
    fired = schedule_fire(schedule_id=schedule.pk, source="trigger", actor="ops")
    parent = _run_once(task_create(spec=TaskSpec(tool="claude", prompt="p", output_files=["a.txt"],
                                                 require_outputs=False), source="api")[0], _ok())
    assert parent.status == "succeeded"

    follow_up = task_follow_up(task_id=parent.pk, prompt="next", source="api")

    assert fired is not None and fired.task is not None and fired.task.require_outputs is True
    assert fired.task.output_files == ["report.md"]
    assert (follow_up.require_outputs, follow_up.output_files) == (False, ["a.txt"])


def test_require_outputs_is_part_of_the_idempotency_fingerprint() -> None:
    spec = TaskSpec(tool="claude", prompt="p", output_files=["a.txt"], idempotency_key="k-1")
    first, _ = task_create(spec=spec, source="api")

    again, created = task_create(spec=spec, source="api")
    with pytest.raises(IdempotencyConflict):
        task_create(spec=TaskSpec(**{**spec.__dict__, "require_outputs": False}), source="api")

    assert (again.pk, created) == (first.pk, False)
    assert Task.objects.count() == 1


def test_api_takes_require_outputs_strictly_and_shows_missing_outputs_in_list_and_detail() -> None:
    WorkerGroupFactory(account="main", max_concurrent=5)
    alice = client_for("alice", "acme")

    refused = alice.post("/api/v1/tasks/", {"tool": "claude", "prompt": "p", "require_outputs": "no"}, format="json")
    assert refused.status_code == 400 and "require_outputs" in refused.json()
    assert Task.objects.count() == 0
    created = alice.post("/api/v1/tasks/", {"tool": "claude", "prompt": "p", "output_files": ["hello.py"],
                                            "require_outputs": False}, format="json").json()
    default = alice.post("/api/v1/tasks/", {"tool": "claude", "prompt": "q"}, format="json").json()
    assert (created["require_outputs"], default["require_outputs"]) == (False, True)
    _run_once(Task.objects.get(pk=created["id"]), _ok())

    detail = alice.get(f"/api/v1/tasks/{created['id']}/").json()
    listed = {row["id"]: row for row in alice.get("/api/v1/tasks/").json()["results"]}

    assert (detail["status"], detail["missing_outputs"]) == ("succeeded", ["hello.py"])
    assert listed[created["id"]]["missing_outputs"] == ["hello.py"]
    assert listed[default["id"]]["missing_outputs"] == []


def test_cli_enqueue_allow_missing_outputs_then_get_wait_and_list_show_the_marker(capsys) -> None:
    WorkerGroupFactory(account="main", max_concurrent=5)
    argv = ["enqueue", "claude", "Write hello.py", "--output", "hello.py", "--allow-missing-outputs",
            "--idempotency-key", "hello-1"]
    assert run([*argv, "--json"]) == 0
    task = Task.objects.get(pk=json.loads(_out(capsys))["id"])
    assert task.require_outputs is False
    _run_once(task, _ok())

    # The same request again, with --wait: the task it names has finished already.
    assert run([*argv, "--wait"]) == 0
    waited = _out(capsys).splitlines()
    assert run(["get", str(task.pk)]) == 0
    shown = _out(capsys)
    assert run(["list"]) == 0
    listed = _out(capsys)

    assert waited == [f"existing task {task.pk} (claude, priority 5): succeeded", "done", "missing outputs: hello.py"]
    assert "        status: succeeded (with missing outputs)\n" in shown
    assert "missing outputs: hello.py\n" in shown
    assert "       outputs: hello.py (missing ones allowed)\n" in shown
    assert "succeeded*" in listed and "* missing declared outputs" in listed


def test_cli_enqueue_wait_on_a_task_failed_for_a_missing_output_exits_3_naming_it(capsys) -> None:
    WorkerGroupFactory(account="main", max_concurrent=5)
    argv = ["enqueue", "claude", "Write hello.py", "--output", "hello.py", "--idempotency-key", "hello-2"]
    assert run(argv) == 0
    task = Task.objects.get()
    assert task.require_outputs is True
    _run_once(task, _ok())
    capsys.readouterr()

    assert run([*argv, "--wait"]) == 3

    assert _out(capsys).splitlines() == [f"existing task {task.pk} (claude, priority 5): failed",
                                         "missing declared output: hello.py", "missing outputs: hello.py"]


def test_intake_creates_tasks_that_require_their_outputs(settings, capsys) -> None:
    with FakeOpenAI() as fake:
        settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL = "sk-test-intake", fake.base_url
        fake.answer(task_answer())

        assert run(["ask", "tomorrow at 9am run claude to find the flaky tests", "--yes", "--json"]) == 0

    task = Task.objects.get(pk=json.loads(_out(capsys))["task"]["id"])
    assert (task.output_files, task.require_outputs) == (["report.md"], True)


# -- 2. what is true now --------------------------------------------------------------------------------------------
def test_get_and_the_api_show_the_attempts_of_the_current_budget_and_in_all(capsys) -> None:
    task = _task(max_attempts=1)
    failure = ExecutionResult(command=["claude"], exit_code=2, failure_kind="exit_code", error_message="boom")
    task = _run_once(task, failure)
    task_retry(task_id=task.pk, source="cli")
    task = _run_once(task, failure)
    assert (task.status, task.attempt, task.attempt_base) == ("failed", 2, 1)

    assert run(["get", str(task.pk)]) == 0
    detail = client_for("root", "ops", staff=True).get(f"/api/v1/tasks/{task.pk}/").json()

    assert "       attempt: 1 of 1 (2 in all, after 1 retry)\n" in _out(capsys)
    assert (detail["attempt"], detail["attempts_in_budget"], detail["max_attempts"]) == (2, 1, 1)


def test_get_says_of_a_fresh_task_only_its_budget(capsys) -> None:
    task = _task()

    assert run(["get", str(task.pk)]) == 0

    assert "       attempt: 0 of 3\n" in _out(capsys)


def test_an_expired_rate_limit_is_not_shown_as_current(capsys) -> None:
    now = timezone.now()
    WorkerGroupFactory(account="past", rate_limited_until=now - timedelta(hours=1))
    current = WorkerGroupFactory(account="now", rate_limited_until=now + timedelta(minutes=5))
    staff = client_for("root", "ops", staff=True)

    assert run(["groups", "list"]) == 0
    table = _out(capsys)
    assert run(["groups", "list", "--json"]) == 0
    data = {g["name"]: g for g in json.loads(_out(capsys))}
    api = {g["name"]: g for g in staff.get("/api/v1/worker-groups/").json()}

    past_row = next(line for line in table.splitlines() if "claude-past" in line)
    now_row = next(line for line in table.splitlines() if "claude-now" in line)
    assert f"{now - timedelta(hours=1):%Y-%m-%d}T" not in past_row  # no time at all on the expired one
    assert current.rate_limited_until.isoformat()[:19] in now_row
    assert (data["claude-past"]["rate_limited"], data["claude-now"]["rate_limited"]) == (False, True)
    assert (api["claude-past"]["rate_limited"], api["claude-now"]["rate_limited"]) == (False, True)
    assert (api["claude-past"]["health"], api["claude-now"]["health"]) == ("ok", "rate_limited")


def test_a_paused_schedule_shows_paused_instead_of_a_next_run(capsys, admin_client: Client) -> None:
    schedule = schedule_create(spec=ScheduleSpec(name="nightly", tool="claude", prompt="p", cron="0 3 * * *"))
    schedule = schedule_set_enabled(schedule_id=schedule.pk, enabled=False)
    stale = schedule.next_run_at
    assert stale is not None  # kept, and stale: resuming computes the next slot from then
    staff = client_for("root", "ops", staff=True)

    assert run(["schedules", "list"]) == 0
    listed = _out(capsys)
    assert run(["schedules", "get", "nightly"]) == 0
    shown = _out(capsys)
    assert run(["schedules", "pause", "nightly"]) == 0
    paused = _out(capsys)
    api = staff.get(f"/api/v1/schedules/{schedule.pk}/").json()
    admin = admin_client.get(reverse("admin:tasks_app_schedule_changelist")).content.decode()

    stale_text = f"{stale:%Y-%m-%d}T{stale:%H:%M}"
    row = next(line for line in listed.splitlines() if "nightly" in line)
    assert "paused" in row and stale_text not in row
    assert "paused" in next(line for line in shown.splitlines() if "next run" in line)
    assert "next run (UTC)" not in shown
    assert paused == f"schedule {schedule.pk} paused\n"
    assert api["state"] == "paused"
    assert '<td class="field-state">paused</td>' in admin
    assert f"{stale:%Y-%m-%d %H:%M:%S} UTC" not in admin


def test_schedules_get_prints_fields_for_people_and_json_for_scripts(capsys) -> None:
    schedule_create(spec=ScheduleSpec(name="standup", tool="codex", prompt="summarise the issues",
                                      cron="0 17 * * 1-5", timezone="Asia/Shanghai", output_files=["summary.md"]))

    assert run(["schedules", "get", "standup"]) == 0
    shown = _out(capsys)
    assert run(["schedules", "get", "standup", "--json"]) == 0
    data = json.loads(_out(capsys))

    with pytest.raises(json.JSONDecodeError):
        json.loads(shown)
    for field, value in (("state", "active"), ("timing", "cron 0 17 * * 1-5 (Asia/Shanghai)"),
                         ("output files", "summary.md"), ("prompt", "summarise the issues")):
        assert any(field in line and value in line for line in shown.splitlines()), field
    assert data["next_run_at_local"][:19] in shown
    assert (data["name"], data["state"]) == ("standup", "active")


def test_a_one_off_schedule_at_a_relative_time(capsys) -> None:
    before = datetime.now(UTC)

    assert run(["schedules", "add", "once", "claude", "Release notes", "--at", "+2h", "--json"]) == 0

    run_at = Schedule.objects.get(name="once").run_at
    assert before.replace(microsecond=0) + timedelta(hours=2) <= run_at <= datetime.now(UTC) + timedelta(hours=2)
    assert json.loads(_out(capsys))["state"] == "active"


def test_the_dashboard_shows_a_group_with_no_live_worker_as_no_worker(admin_client: Client) -> None:
    group = WorkerGroupFactory(account="gone", max_concurrent=1, live=False)
    TaskFactory(status=TaskStatus.RUNNING, worker_group=group)  # a lease its dead worker still holds

    html = admin_client.get("/admin/dashboard/").content.decode()

    assert '<td class="num">no worker</td>' in html
    assert ">100%<" not in html and ">1/1<" not in html


# -- 3. the command line --------------------------------------------------------------------------------------------
def test_list_shows_prompt_or_schedule_scheduled_time_and_last_error_within_120_columns(capsys) -> None:
    group = WorkerGroupFactory(account="research-team", max_concurrent=5)
    when = datetime(2031, 5, 4, 9, 30, tzinfo=UTC)
    task_create(spec=TaskSpec(tool="claude", prompt="Refactor the billing module " * 20, scheduled_at=when),
                source="cli")
    schedule = schedule_create(spec=ScheduleSpec(name="nightly-dependency-audit", tool="claude", prompt="audit",
                                                 cron="0 3 * * *"))
    schedule_fire(schedule_id=schedule.pk, source="trigger")
    failed = TaskFactory(status=TaskStatus.FAILED, worker_group=group, attempt=3, prompt="flaky",
                         error_message="Timed out after 3600 s; the CLI was killed\nstack trace")

    assert run(["list"]) == 0
    out = _out(capsys)

    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 120, out
    assert "task" in lines[0] and "scheduled" in lines[0] and "last error" in lines[0]
    assert any("Refactor the billing" in line and "2031-05-04" in line for line in lines)  # not this year
    this_year = f"{datetime.now(UTC):%m-%d} "
    assert sum(this_year in line for line in lines) == 3  # created today: month, day and time
    assert any("schedule nightly-depe…" in line for line in lines)
    failed_row = next(line for line in lines if line.startswith(str(failed.pk)[:8]))
    assert "Timed out after" in failed_row and "3/3" in failed_row and "stack trace" not in failed_row


@pytest.mark.parametrize(("option", "allowed"), [
    ("--status", "queued, leased, running, succeeded, failed, canceled"),
    ("--tool", "claude, codex, gemini"),
])
def test_list_with_an_unknown_status_or_tool_exits_2_naming_the_allowed_values(option, allowed, capsys) -> None:
    TaskFactory()

    code = run(["list", option, "bogus"])

    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err == f"schedulerctl: error: {option} 'bogus' is not one of: {allowed}\n"


def test_tokens_list_shows_name_and_prefix_and_get_shows_no_none_for_unreported_tokens(capsys) -> None:
    user_create(username="alice", tenant="acme")
    token, _ = token_create(username="alice", name="laptop")
    task = _run_once(_task(), ExecutionResult(command=["claude"], exit_code=0, final_message="ok"))

    assert run(["tokens", "list"]) == 0
    tokens = _out(capsys)
    assert run(["get", str(task.pk)]) == 0
    shown = _out(capsys)

    row = next(line for line in tokens.splitlines() if "alice" in line)
    assert "laptop" in row and f"{token.prefix}…" in row
    assert "None" not in shown


def _env(**extra: str) -> dict[str, str]:
    """This process's environment, pointed at the test database, for a `schedulerctl` process."""
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "scheduler_site.settings", "DATABASE_URL": database_url(),
            **extra}


@pytest.fixture
def many_tasks(transactional_db: None) -> Iterator[None]:
    # Committed, for another process to read; far more output than a pipe buffers (64 KiB).
    Task.objects.bulk_create(Task(tool="claude", prompt=f"job {i} " + "x" * 50, timeout_seconds=60)
                             for i in range(400))
    yield


@pytest.mark.parametrize("argv", [["list", "--json", "--limit", "400"], ["list", "--limit", "400"]])
def test_output_into_a_reader_that_stops_early_ends_quietly(many_tasks, argv) -> None:
    # `python -m` from the checkout under test (the console script would import the installed one).
    script = f'"$0" -m tasks_app.cli {" ".join(argv)} | head -c 1 >/dev/null; exit "${{PIPESTATUS[0]}}"'

    proc = subprocess.run(["bash", "-c", script, sys.executable], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=120, check=False)

    assert proc.stderr == ""
    assert proc.returncode == 141 if "--json" in argv else proc.returncode in (0, 141)


def test_ask_prints_no_library_log_lines_unless_verbose() -> None:
    with FakeOpenAI() as fake:
        env = _env(OPENAI_API_KEY="sk-test-intake", OPENAI_BASE_URL=fake.base_url, SCHEDULER_INTAKE_MODEL="gpt-test",
                   LOG_FORMAT="json", LOG_LEVEL="DEBUG")
        results = []
        for verbosity in ([], ["-v"]):
            fake.answer(task_answer())
            results.append(subprocess.run(
                [sys.executable, "-m", "tasks_app.cli", *verbosity, "ask", "run claude on the flaky tests"],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                check=False))
    quiet, verbose = results

    assert (quiet.returncode, verbose.returncode) == (0, 0)
    assert "fix-flaky-tests" in quiet.stdout
    assert quiet.stderr == "not created: stdin is not a terminal; run again with --yes to create it\n"
    http_lines = [line for line in verbose.stderr.splitlines() if "HTTP Request: POST" in line]
    # The openai client's own httpx (named httpx or, vendored, httpx2): its INFO line, plain.
    assert len(http_lines) == 1 and re.match(r"INFO httpx\w*: HTTP Request: POST http://127\.0\.0\.1:", http_lines[0])
    assert Task.objects.count() == 0
