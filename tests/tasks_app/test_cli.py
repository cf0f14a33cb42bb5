from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

from tasks_app.cli import run
from tasks_app.models import Task, TaskEvent, TaskFile, WorkerGroup
from tests.factories import WorkerGroupFactory

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


def _json(capsys) -> object:
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["enqueue", "cursor", "hi"], "tool: 'cursor' is not a known tool"),
        (["enqueue", "claude", "hi", "--priority", "10"], "priority: must be an integer from 1 to 9"),
        (["enqueue", "claude", "hi", "--priority", "x"], "argument --priority: invalid int value"),
        (["enqueue", "claude", "hi", "--output", "../../etc/passwd"], "output_files[0]: '../../etc/passwd'"),
        (["enqueue", "claude", "hi", "--input", "/nonexistent/file"], "--input '/nonexistent/file': no such file"),
        (["enqueue", "claude", "hi", "--group", "claude-nope"], "worker_group: no worker group named"),
        (["enqueue", "claude", "hi", "--at", "tomorrowish"], "--at 'tomorrowish': expected an ISO 8601 time"),
        (["enqueue", "claude", ""], "prompt: must be a non-empty string"),
        (["enqueue", "claude", "hi", "--timeout", "0"], "timeout_seconds: must be an integer"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_enqueue_input_exits_2_with_one_line_and_creates_nothing(argv, message, capsys) -> None:
    code = run(argv)

    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("schedulerctl: error: ")
    assert message in err
    assert (Task.objects.count(), TaskEvent.objects.count(), TaskFile.objects.count()) == (0, 0, 0)


def test_enqueue_json_with_input_file_then_get_list_cancel(tmp_path, capsys) -> None:
    WorkerGroupFactory(account="main")
    local = tmp_path / "notes.txt"
    local.write_text("read me")

    assert run(["enqueue", "claude", "summarise", "--input", f"{local}:docs/notes.txt", "--output", "out.md",
                "--priority", "8", "--model", "sonnet", "--group", "claude-main", "--json"]) == 0
    created = _json(capsys)
    task = Task.objects.get(pk=created["id"])
    assert (task.priority, task.model, task.worker_group.name, task.output_files) == (8, "sonnet", "claude-main",
                                                                                      ["out.md"])
    assert TaskFile.objects.get(task=task).read_bytes() == b"read me"

    assert run(["--json", "get", created["id"][:8]]) == 0
    assert _json(capsys)["files"][0]["path"] == "docs/notes.txt"
    assert run(["list", "--json", "--status", "queued"]) == 0
    assert [row["id"] for row in _json(capsys)] == [created["id"]]
    assert run(["cancel", created["id"], "--json"]) == 0
    assert _json(capsys)["status"] == "canceled"
    assert run(["cancel", created["id"]]) == 1
    assert "already canceled" in capsys.readouterr().err


def test_get_unknown_task_exits_1(capsys) -> None:
    assert run(["get", "deadbeef"]) == 1
    assert "no task 'deadbeef'" in capsys.readouterr().err


def test_groups_add_set_pause_never_print_credential_values(capsys, monkeypatch) -> None:
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "sk-from-env-secret")

    assert run(["groups", "add", "claude", "team-a", "--max-concurrent", "3", "--credential",
                "ANTHROPIC_API_KEY=sk-inline-secret", "--env", "CLAUDE_CONFIG_DIR=/srv/a", "--json"]) == 0
    assert run(["groups", "set", "claude-team-a", "--credential-from-env", "ANTHROPIC_AUTH_TOKEN",
                "--max-concurrent", "4"]) == 0
    assert run(["groups", "pause", "claude-team-a"]) == 0
    assert run(["--json", "groups", "list"]) == 0
    out = capsys.readouterr().out

    group = WorkerGroup.objects.get(name="claude-team-a")
    assert group.credentials == {"ANTHROPIC_API_KEY": "sk-inline-secret", "ANTHROPIC_AUTH_TOKEN": "sk-from-env-secret"}
    assert (group.max_concurrent, group.enabled, group.env) == (4, False, {"CLAUDE_CONFIG_DIR": "/srv/a"})
    assert "sk-inline-secret" not in out and "sk-from-env-secret" not in out
    assert "sk-inline-secret" not in group.credentials_encrypted
    assert '"credentials": ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"]' in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["groups", "add", "claude", "Bad_Account"], "account: must be lowercase"),
        (["groups", "add", "claude", "x", "--max-concurrent", "0"], "max_concurrent: must be an integer from 1"),
        (["groups", "add", "claude", "x", "--extra-arg=--dangerously-skip-permissions"], "is dangerous"),
        (["groups", "add", "claude", "x", "--extra-arg=--mcp-config=/etc/x"], "is not allowed for claude"),
        (["groups", "add", "claude", "x", "--env", "DATABASE_URL=postgres://x"], "DATABASE_URL is reserved"),
        (["groups", "add", "claude", "x", "--credential", "NOVALUE"], "expected KEY=VALUE"),
        (["groups", "set", "claude-none", "--max-concurrent", "2"], "no worker group named 'claude-none'"),
    ],
)
def test_bad_group_input_exits_2_and_writes_nothing(argv, message, capsys) -> None:
    assert run(argv) == 2
    assert message in capsys.readouterr().err
    assert WorkerGroup.objects.count() == 0


def test_dangerous_extra_args_need_group_and_global_switch(settings, capsys) -> None:
    argv = ["groups", "add", "claude", "x", "--allow-dangerous-flags",
            "--extra-arg=--permission-mode=bypassPermissions"]
    settings.SCHEDULER_ALLOW_DANGEROUS_FLAGS = False
    assert run(argv) == 2
    settings.SCHEDULER_ALLOW_DANGEROUS_FLAGS = True
    assert run(argv) == 0
    assert WorkerGroup.objects.get().extra_args == ["--permission-mode=bypassPermissions"]


def test_start_no_run_seeds_demo_groups_and_writes_procfile(settings, tmp_path) -> None:
    settings.VAR_DIR = tmp_path

    call_command("start", "--no-run", "--port", "8123")

    assert sorted(WorkerGroup.objects.values_list("name", flat=True)) == ["claude-main", "codex-main", "gemini-main"]
    lines = (tmp_path / "Procfile.local").read_text().splitlines()
    names = [line.split(":")[0] for line in lines]
    assert names == ["web", "beat", "control", "claude-main", "codex-main", "gemini-main"]
    assert "-Q claude-main -c 2" in lines[3]
    # One port serves the API, the admin and the live streams: an ASGI server, never a thread per stream.
    assert "-m uvicorn scheduler_site.asgi:application --host 127.0.0.1 --port 8123" in lines[0]
    assert "SCHEDULER_SERVE_STATIC=true" in lines[0]
    assert (tmp_path / "admin_password").exists()


def test_console_script_and_manage_py_entry_points_report_errors_the_same_way() -> None:
    script = Path(sys.executable).parent / "schedulerctl"
    for argv in ([str(script), "enqueue", "claude", "hi", "--priority", "0"],
                 [sys.executable, "manage.py", "schedulerctl", "enqueue", "claude", "hi", "--priority", "0"]):
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines()[-1] == (
            "schedulerctl: error: priority: must be an integer from 1 to 9 (9 is most urgent)")


def test_pause_works_even_when_the_groups_settings_no_longer_validate(settings, capsys) -> None:
    settings.SCHEDULER_ALLOW_DANGEROUS_FLAGS = True
    argv = ["groups", "add", "claude", "x", "--allow-dangerous-flags", "--extra-arg=--dangerously-skip-permissions"]
    assert run(argv) == 0
    settings.SCHEDULER_ALLOW_DANGEROUS_FLAGS = False

    assert run(["groups", "pause", "claude-x"]) == 0
    assert WorkerGroup.objects.get(name="claude-x").enabled is False
    assert run(["groups", "resume", "claude-x"]) == 0
    assert WorkerGroup.objects.get(name="claude-x").enabled is True


def test_schedules_add_list_pause_trigger_rm(capsys) -> None:
    assert run(["schedules", "add", "standup", "codex", "summarise", "--cron", "0 17 * * 1-5", "--tz",
                "Asia/Shanghai", "--output", "summary.md", "--overlap", "queue", "--json"]) == 0
    created = _json(capsys)
    assert (created["cron"], created["timezone"], created["overlap_policy"]) == ("0 17 * * 1-5", "Asia/Shanghai",
                                                                                 "queue")
    assert created["next_run_at_local"].endswith("T17:00:00+08:00")
    assert run(["schedules", "pause", "standup", "--json"]) == 0
    assert _json(capsys)["enabled"] is False
    assert run(["schedules", "trigger", str(created["id"]), "--json"]) == 0
    fired = _json(capsys)
    assert Task.objects.get(pk=fired["id"]).schedule_id == created["id"]
    assert run(["schedules", "list", "--json"]) == 0
    assert [s["name"] for s in _json(capsys)] == ["standup"]
    assert run(["schedules", "rm", "standup"]) == 0
    assert Task.objects.count() == 1  # the spawned task stays


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["schedules", "add", "x", "codex", "p", "--cron", "0 25 * * *"],
         "cron: '0 25 * * *': hour '25' is out of range; hour takes 0-23"),
        (["schedules", "add", "x", "codex", "p", "--cron", "0 9 * * *", "--tz", "Mars/Base"], "timezone:"),
        (["schedules", "add", "x", "codex", "p", "--every", "0"], "interval_seconds: must be"),
        (["schedules", "add", "x", "codex", "p", "--at", "2001-01-01T00:00:00Z"], "run_at: 2001-01-01"),
        (["schedules", "add", "x", "codex", "p"], "one of the arguments --cron --every --at is required"),
        (["schedules", "add", "x", "codex", "p", "--every", "5", "--cron", "* * * * *"], "not allowed with"),
        (["schedules", "add", "x", "codex", "", "--every", "5"], "prompt: must be a non-empty string"),
        (["schedules", "pause", "nope"], "no schedule 'nope'"),
    ],
)
def test_bad_schedule_input_exits_non_zero_and_writes_nothing(argv, message, capsys) -> None:
    from django_celery_beat.models import PeriodicTask

    from tasks_app.models import Schedule

    assert run(argv) in (1, 2)
    assert message in capsys.readouterr().err
    assert Schedule.objects.count() == 0 and not PeriodicTask.objects.filter(task="workers.fire_schedule").exists()


def test_retry_logs_and_files_download(tmp_path, capsys) -> None:
    from executors import ExecutionResult, OutputFile
    from tasks_app.services.dispatch import dispatch_runnable
    from tasks_app.services.runs import run_finish, run_log_append, run_start
    from tasks_app.services.tasks import TaskSpec, task_create

    WorkerGroupFactory(account="main")
    task, _ = task_create(spec=TaskSpec(tool="claude", prompt="p", output_files=["out/report.md"], max_attempts=1),
                          source="cli")
    (lease,) = dispatch_runnable()
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")
    run_log_append(run_id=ctx.run_id, chunks=[("stdout", "working…\n")], first_seq=0)

    assert run(["logs", str(task.pk)]) == 0  # while running: the live output so far
    assert capsys.readouterr().out == "working…\n"
    run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, worker="w", result=ExecutionResult(
        command=["claude"], exit_code=1, failure_kind="exit_code", stdout="final out", stderr="boom",
        error_message="boom", outputs=[OutputFile("out/report.md", b"# partial")]))

    assert run(["logs", str(task.pk)]) == 0  # finished: the stored copies
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("final out", "boom")
    assert run(["files", str(task.pk), "--download", str(tmp_path / "dl"), "--json"]) == 0
    assert [f["path"] for f in _json(capsys)] == ["out/report.md"]
    assert (tmp_path / "dl" / "out" / "report.md").read_bytes() == b"# partial"
    assert run(["retry", str(task.pk), "--json"]) == 0
    retried = _json(capsys)
    assert (retried["status"], Task.objects.get(pk=task.pk).attempts_left) == ("queued", 1)
    assert run(["retry", str(task.pk)]) == 1
    assert "only failed or canceled tasks can be retried" in capsys.readouterr().err
