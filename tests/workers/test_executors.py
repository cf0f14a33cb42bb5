"""The executors against the stand-in CLIs (tests/fakes): no database, no Celery, real processes."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from executors import (
    ADAPTERS,
    ConfigurationError,
    Control,
    ExecutionResult,
    ExecutionSpec,
    OutputFile,
)
from executors.runner import execute
from tasks_app.services.runs import RunContext
from tests.conftest import wait_until
from workers.spec import child_env, execution_spec

FAKES_BIN = Path(__file__).resolve().parent.parent / "fakes" / "bin"
TOOLS = ("claude", "codex", "gemini")
MODELS = {"claude": "claude-sonnet-4-5", "codex": "gpt-5-codex", "gemini": "gemini-2.5-pro"}
CREDENTIAL_VARS = {"claude": "ANTHROPIC_API_KEY", "codex": "CODEX_API_KEY", "gemini": "GEMINI_API_KEY"}
SECRET = "sk-test-0123456789-very-secret"
BASE_ARGV = {
    "claude": ["-p", "--output-format", "stream-json", "--verbose", "--permission-mode", "acceptEdits",
               "--setting-sources", "user"],
    "codex": ["exec", "--json", "--skip-git-repo-check", "--color", "never", "--sandbox", "workspace-write"],
    "gemini": ["--output-format", "stream-json", "--approval-mode", "auto_edit", "--skip-trust"],
}


# -- helpers ---------------------------------------------------------------------------------------------


def _prompt(text: str, **directive: Any) -> str:
    return f"{text}\nFAKE: {json.dumps(directive)}" if directive else text


def _env(tool: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path / "home"),
        "LANG": "C.UTF-8",
        "FAKE_CLI_LOG": str(tmp_path / "fake.jsonl"),
        CREDENTIAL_VARS[tool]: SECRET,
    }
    env.update(extra)
    return env


def _spec(tool: str, tmp_path: Path, prompt: str, *, extra_args: list[object] | None = None,
          allow_dangerous: bool = False, env: dict[str, str] | None = None, **fields: Any) -> ExecutionSpec:
    argv = ADAPTERS[tool].build(binary=str(FAKES_BIN / tool), model=MODELS[tool], extra_args=extra_args or [],
                                allow_dangerous=allow_dangerous)
    fields.setdefault("secrets", (SECRET,))
    return ExecutionSpec(tool=tool, argv=argv, stdin=prompt.encode(), env=env or _env(tool, tmp_path),
                         work_dir=tmp_path / "work", **fields)


def _log(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "fake.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _start_line(tmp_path: Path) -> dict[str, Any]:
    (line,) = [entry for entry in _log(tmp_path) if entry["event"] == "start"]
    return line


def _has_started(tmp_path: Path) -> bool:
    return any(entry["event"] == "start" for entry in _log(tmp_path))


def _proc_stat(pid: int) -> list[str] | None:
    """[state, ppid, pgrp, ...] of a live process, None when it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rpartition(")")[2].split()
    return None if fields[0] in ("Z", "X") else fields


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _proc_stat(int(entry.name))) and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _wait_until(predicate: Callable[[], Any], *, timeout: float = 5.0, message: str = "condition") -> Any:
    return wait_until(predicate, timeout=timeout, message=message)


def _assert_all_gone(start: dict[str, Any], *, timeout: float = 5.0) -> None:
    pids = [start["pid"], start["child_pid"]]
    _wait_until(lambda: not _group_members(start["pgid"]) and not any(_proc_stat(p) for p in pids),
                timeout=timeout, message=f"process group {start['pgid']} to be gone")




# -- 1. success through each stand-in -----------------------------------------------------------------


@pytest.mark.parametrize("tool", TOOLS)
def test_each_tool_succeeds_with_its_answer_tokens_and_declared_outputs(tool: str, tmp_path: Path) -> None:
    prompt = _prompt("Write the quarterly report", answer="Report written to disk",
                     write={"reports/out.md": "# Résumé\n"},
                     write_bytes_b64={"data/blob.bin": base64.b64encode(b"\x00\xffbinary\n").decode()})
    spec = _spec(tool, tmp_path, prompt, output_patterns=["reports/out.md", "data/blob.bin"])

    result = execute(spec)

    assert (result.failure_kind, result.error_message) == ("", "")
    assert result.succeeded
    assert (result.exit_code, result.final_message) == (0, "Report written to disk")
    assert (result.input_tokens, result.output_tokens) == (len(prompt.split()), 4)
    assert result.outputs == [OutputFile(path="reports/out.md", data="# Résumé\n".encode()),
                              OutputFile(path="data/blob.bin", data=b"\x00\xffbinary\n")]
    assert result.output_errors == []
    assert result.command == spec.argv
    assert result.latency_ms is not None and result.latency_ms > 0
    assert not spec.work_dir.exists()


def test_claude_success_reports_its_cost_and_session(tmp_path: Path) -> None:
    prompt = _prompt("Say hi", answer="hi there")
    result = execute(_spec("claude", tmp_path, prompt))

    tokens_in, tokens_out = len(prompt.split()), 2
    assert (result.input_tokens, result.output_tokens) == (tokens_in, tokens_out)
    assert result.cost_usd == 0.000003 * tokens_in + 0.000015 * tokens_out
    assert result.details["subtype"] == "success" and result.details["num_turns"] == 1
    assert result.details["session_id"] == result.session_id == json.loads(result.stdout.splitlines()[-1])["session_id"]


def test_gemini_tokens_are_summed_over_every_model_it_used(tmp_path: Path) -> None:
    prompt = _prompt("Summarise the design document in detail", answer="one two three four five", two_models=True)

    result = execute(_spec("gemini", tmp_path, prompt))

    models = json.loads(result.stdout.splitlines()[-1])["stats"]["models"]
    assert sorted(models) == ["gemini-2.5-flash-lite", "gemini-2.5-pro"]
    per_model_prompt = [m["input_tokens"] for m in models.values()]
    per_model_candidates = [m["output_tokens"] for m in models.values()]
    assert len(prompt.split()) not in per_model_prompt  # only the sum is right
    assert (result.input_tokens, result.output_tokens) == (len(prompt.split()), 5)
    assert (sum(per_model_prompt), sum(per_model_candidates)) == (len(prompt.split()), 5)


@pytest.mark.parametrize("tool", TOOLS)
def test_keep_work_dir_leaves_the_work_dir_in_place(tool: str, tmp_path: Path) -> None:
    spec = _spec(tool, tmp_path, _prompt("go", write={"out.txt": "kept"}), output_patterns=["out.txt"],
                 keep_work_dir=True)

    result = execute(spec)

    assert result.succeeded
    assert sorted(p.name for p in spec.work_dir.iterdir()) == ["out.txt"]
    assert not spec.work_dir.with_name(spec.work_dir.name + ".tmp").exists()  # the private TMPDIR always goes
    assert (spec.work_dir / "out.txt").read_bytes() == b"kept"


@pytest.mark.parametrize("tool", TOOLS)
def test_the_cli_runs_in_the_fresh_work_dir_with_only_the_given_env(tool: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_ONLY_SECRET", "must-not-leak")
    spec = _spec(tool, tmp_path, _prompt("go", dump_env="env.json"), output_patterns=["env.json", "in/brief.md"],
                 input_files=[("in/brief.md", b"the brief")])

    result = execute(spec)

    assert result.succeeded
    env_file, brief = result.outputs
    assert brief == OutputFile(path="in/brief.md", data=b"the brief")
    child = json.loads(env_file.data)
    expected = {**spec.env, "TMPDIR": str(spec.work_dir) + ".tmp"}  # a private TMPDIR beside it, removed too
    # PATH aside (a pyenv shim in front of python3 may prepend to it), the child sees exactly that
    assert {k: child.get(k) for k in expected if k != "PATH"} == {k: v for k, v in expected.items() if k != "PATH"}
    assert not {"WORKER_ONLY_SECRET", "DJANGO_SETTINGS_MODULE"} & set(child)
    start = _start_line(tmp_path)
    assert (start["cwd"], start["model"], start["cred"]) == (str(spec.work_dir), MODELS[tool], SECRET)
    assert start["pgid"] == start["pid"]  # its own process group


def test_an_existing_work_dir_is_refused_and_left_untouched(tmp_path: Path) -> None:
    spec = _spec("claude", tmp_path, _prompt("go"))
    spec.work_dir.mkdir()
    (spec.work_dir / "someone-elses.txt").write_text("keep me")

    result = execute(spec)

    assert (result.failure_kind, result.error_message) == ("internal", "cannot create work dir: File exists")
    assert (spec.work_dir / "someone-elses.txt").read_text() == "keep me"
    assert _log(tmp_path) == []  # the CLI never started


def test_an_input_file_escaping_the_work_dir_is_refused_before_the_cli_starts(tmp_path: Path) -> None:
    spec = _spec("claude", tmp_path, _prompt("go"), input_files=[("ok.txt", b"1"), ("../escape.txt", b"2")])

    result = execute(spec)

    assert result.failure_kind == "internal"
    assert result.error_message == "input refused: '../escape.txt' is not a plain relative path inside the work dir"
    assert result.exit_code is None
    assert not (tmp_path / "escape.txt").exists()
    assert not spec.work_dir.exists()
    assert _log(tmp_path) == []


def test_conflicting_input_paths_become_a_failed_result_not_an_exception(tmp_path: Path) -> None:
    # task_create accepts both paths: only exact duplicates are refused upstream.
    spec = _spec("claude", tmp_path, _prompt("go"), input_files=[("docs/a.txt", b"1"), ("docs", b"2")])

    result = execute(spec)

    assert result.failure_kind == "internal"
    assert result.error_message.startswith("input refused:")
    assert not spec.work_dir.exists()


def test_an_input_file_named_like_the_private_tmpdir_does_not_crash_the_executor(tmp_path: Path) -> None:
    spec = _spec("claude", tmp_path, _prompt("go", answer="fine"), input_files=[(".tmp", b"not a directory")])

    result = execute(spec)

    assert isinstance(result, ExecutionResult)
    assert not spec.work_dir.exists()


@pytest.mark.parametrize("tool", TOOLS)
def test_outputs_the_cli_turned_into_symlinks_are_refused_unread(tool: str, tmp_path: Path) -> None:
    prompt = _prompt("go", write={"reports/ok.md": "ok"},
                     symlink={"reports/passwd.md": "/etc/passwd", "leak.txt": "/etc/hostname"})
    spec = _spec(tool, tmp_path, prompt, output_patterns=["leak.txt", "reports/*.md"])

    result = execute(spec)

    assert result.succeeded
    assert result.outputs == [OutputFile(path="reports/ok.md", data=b"ok")]
    assert result.output_errors == [
        "output 'leak.txt' refused: 'leak.txt' is a symlink; outputs must be regular files",
        "output 'reports/passwd.md' refused: 'reports/passwd.md' is a symlink; outputs must be regular files",
    ]


# -- 2. the prompt is never argv --------------------------------------------------------------------------


@pytest.mark.parametrize(("tool", "text"), [
    ("claude", "--dangerously-skip-permissions and then delete the repository"),
    ("claude", "--permission-mode=bypassPermissions please"),
    ("codex", "--dangerously-bypass-approvals-and-sandbox then push to main"),
    ("codex", "--yolo then push to main"),
    ("gemini", "--yolo and delete every file"),
    ("gemini", "--approval-mode=yolo and delete every file"),
])
def test_a_prompt_that_looks_like_a_flag_reaches_the_cli_as_text(tool: str, text: str, tmp_path: Path) -> None:
    spec = _spec(tool, tmp_path, text)

    result = execute(spec)

    assert result.succeeded
    assert result.final_message == "done: " + text[:40]
    flag = text.split()[0]
    assert not any(text in arg or arg == flag for arg in spec.argv)
    assert _start_line(tmp_path)["argv"] == [tool, *spec.argv[1:]]  # what the CLI got on its command line


@pytest.mark.parametrize("tool", TOOLS)
def test_adapters_build_the_headless_command_without_any_prompt(tool: str) -> None:
    argv = ADAPTERS[tool].build(binary=f"/opt/{tool}", model="m1", extra_args=[], allow_dangerous=False)

    tail = ["-"] if tool == "codex" else []
    assert argv == [f"/opt/{tool}", *BASE_ARGV[tool], "--model", "m1", *tail]


@pytest.mark.parametrize("tool", TOOLS)
def test_an_empty_model_leaves_the_cli_default(tool: str) -> None:
    argv = ADAPTERS[tool].build(binary=tool, model="", extra_args=[], allow_dangerous=False)

    assert "--model" not in argv


# -- 3. extra args ----------------------------------------------------------------------------------------


def test_claude_extra_args_are_appended_and_override_defaults() -> None:
    argv = ADAPTERS["claude"].build(
        binary="claude", model="opus",
        extra_args=["--max-turns=3", "--permission-mode=plan", "--allowedTools=Read,Edit"], allow_dangerous=False,
    )

    assert argv == ["claude", "-p", "--output-format", "stream-json", "--verbose", "--setting-sources", "user",
                    "--model", "opus",
                    "--max-turns", "3", "--permission-mode", "plan", "--allowedTools", "Read,Edit"]
    assert "acceptEdits" not in argv


def test_codex_and_gemini_extra_args_override_defaults() -> None:
    codex = ADAPTERS["codex"].build(binary="codex", model="", allow_dangerous=False,
                                    extra_args=["--sandbox=read-only", "--config=model_reasoning_effort=high"])
    gemini = ADAPTERS["gemini"].build(binary="gemini", model="", extra_args=["--approval-mode=plan", "--sandbox"],
                                      allow_dangerous=False)

    assert codex == ["codex", "exec", "--json", "--skip-git-repo-check", "--color", "never",
                     "--sandbox", "read-only", "--config", "model_reasoning_effort=high", "-"]
    assert gemini == ["gemini", "--output-format", "stream-json", "--skip-trust", "--approval-mode", "plan",
                      "--sandbox"]


@pytest.mark.parametrize(("tool", "extra_args"), [
    ("claude", ["--max-turns=3", "--permission-mode=plan", "--allowedTools=Read,Edit",
                "--append-system-prompt=Be brief", "--max-budget-usd=1.5"]),
    ("codex", ["--sandbox=read-only", "--ephemeral", "--config=model_verbosity=low"]),
    ("gemini", ["--approval-mode=plan"]),
])
def test_allowed_extra_args_make_a_command_the_cli_accepts(tool: str, extra_args: list[object],
                                                           tmp_path: Path) -> None:
    spec = _spec(tool, tmp_path, _prompt("go", answer="fine"), extra_args=extra_args)

    result = execute(spec)

    assert (result.failure_kind, result.final_message) == ("", "fine")
    assert _start_line(tmp_path)["argv"] == [tool, *spec.argv[1:]]


@pytest.mark.parametrize(("tool", "arg", "message"), [
    ("claude", "--verbose", "extra arg '--verbose' is not allowed for claude"),
    ("claude", "--output-format=text", "extra arg '--output-format' is not allowed for claude"),
    ("claude", "-p", "extra arg '-p' must be a '--flag' or '--flag=value' string"),
    ("claude", 3, "extra arg 3 must be a '--flag' or '--flag=value' string"),
    ("claude", "--max-turns", "extra arg '--max-turns' needs a value, written --max-turns=VALUE"),
    ("claude", "--max-turns=many", "extra arg '--max-turns=many' has a value that is not allowed"),
    ("claude", "--permission-mode=whatever", "extra arg '--permission-mode=whatever' has a value that is not allowed"),
    ("codex", "--ask-for-approval=never", "extra arg '--ask-for-approval' is not allowed for codex"),
    ("codex", "--full-auto", "extra arg '--full-auto' is not allowed for codex"),
    ("codex", "--profile=work", "extra arg '--profile' is not allowed for codex"),
    ("codex", "--ephemeral=yes", "extra arg '--ephemeral' takes no value"),
    ("codex", "--config=sandbox_mode=danger-full-access",
     "extra arg '--config=sandbox_mode=danger-full-access' has a value that is not allowed"),
    ("gemini", "--prompt=hello", "extra arg '--prompt' is not allowed for gemini"),
    ("gemini", "--model=pro", "extra arg '--model' is not allowed for gemini"),
])
def test_extra_args_outside_the_allow_list_are_a_configuration_error(tool: str, arg: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        ADAPTERS[tool].build(binary=tool, model="m", extra_args=[arg], allow_dangerous=True)


DANGEROUS = [
    ("claude", "--dangerously-skip-permissions", ["--dangerously-skip-permissions"]),
    ("claude", "--allow-dangerously-skip-permissions", ["--allow-dangerously-skip-permissions"]),
    ("claude", "--permission-mode=bypassPermissions", ["--permission-mode", "bypassPermissions"]),
    ("codex", "--sandbox=danger-full-access", ["--sandbox", "danger-full-access"]),
    ("codex", "--dangerously-bypass-approvals-and-sandbox", ["--dangerously-bypass-approvals-and-sandbox"]),
    ("codex", "--yolo", ["--yolo"]),
    ("gemini", "--yolo", ["--yolo"]),
    ("gemini", "--approval-mode=yolo", ["--approval-mode", "yolo"]),
]


@pytest.mark.parametrize(("tool", "arg", "tokens"), DANGEROUS)
def test_dangerous_extra_args_are_refused_unless_allowed(tool: str, arg: str, tokens: list[str]) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(f"extra arg {arg!r} is dangerous")):
        ADAPTERS[tool].build(binary=tool, model="m", extra_args=[arg], allow_dangerous=False)

    argv = ADAPTERS[tool].build(binary=tool, model="m", extra_args=[arg], allow_dangerous=True)

    tail = ["-"] if tool == "codex" else []
    assert argv[len(argv) - len(tokens) - len(tail):] == [*tokens, *tail]
    assert argv.count(tokens[0]) == 1  # a default of the same flag is replaced, not doubled


@pytest.mark.parametrize(("tool", "arg"), [
    ("claude", "--dangerously-skip-permissions"),
    ("claude", "--permission-mode=bypassPermissions"),
    ("codex", "--sandbox=danger-full-access"),
    ("codex", "--yolo"),
    ("gemini", "--approval-mode=yolo"),
    pytest.param("gemini", "--yolo"),
])
def test_an_allowed_dangerous_flag_makes_a_command_the_cli_accepts(tool: str, arg: str, tmp_path: Path) -> None:
    spec = _spec(tool, tmp_path, _prompt("go", answer="fine"), extra_args=[arg], allow_dangerous=True)

    result = execute(spec)

    assert (result.failure_kind, result.exit_code, result.final_message) == ("", 0, "fine")


# -- 4. failure classification through the stand-ins -----------------------------------------------------


@pytest.mark.parametrize(("tool", "directive", "kind", "exit_code"), [
    ("claude", {"scenario": "rate_limit_api"}, "rate_limited", 1),
    ("claude", {"scenario": "overloaded"}, "rate_limited", 1),
    ("claude", {"scenario": "provider_error"}, "provider_error", 1),
    ("claude", {"scenario": "provider_error", "status": 503}, "provider_error", 1),
    ("claude", {"scenario": "auth"}, "auth", 1),
    ("claude", {"scenario": "credit"}, "rate_limited", 0),  # is_error true with exit 0: never a success
    ("claude", {"scenario": "exit", "exit_code": 3, "stderr": "boom"}, "exit_code", 3),
    ("codex", {"scenario": "rate_limit_api"}, "rate_limited", 1),
    ("codex", {"scenario": "overloaded"}, "rate_limited", 1),
    ("codex", {"scenario": "provider_error"}, "provider_error", 1),
    ("codex", {"scenario": "auth"}, "auth", 1),
    ("codex", {"scenario": "credit"}, "rate_limited", 1),
    ("codex", {"scenario": "exit", "exit_code": 3, "stderr": "boom"}, "exit_code", 3),
    ("gemini", {"scenario": "rate_limit_api"}, "rate_limited", 173),
    ("gemini", {"scenario": "overloaded"}, "rate_limited", 247),
    ("gemini", {"scenario": "provider_error"}, "provider_error", 244),
    ("gemini", {"scenario": "auth"}, "auth", 144),
    ("gemini", {"scenario": "credit"}, "rate_limited", 173),
    ("gemini", {"scenario": "exit", "exit_code": 3, "stderr": "boom"}, "exit_code", 3),
    pytest.param("gemini", {"scenario": "auth", "auth_variant": "no_auth"}, "auth", 41),
])
def test_failures_are_classified_from_what_the_cli_reports(tool: str, directive: dict[str, Any], kind: str,
                                                           exit_code: int, tmp_path: Path) -> None:
    spec = _spec(tool, tmp_path, _prompt("go", write={"out.txt": "x"}, **directive), output_patterns=["out.txt"])

    result = execute(spec)

    assert (result.failure_kind, result.exit_code) == (kind, exit_code)
    assert not result.succeeded
    assert result.error_message
    assert result.outputs == [] and result.output_errors == []  # outputs are collected only on success
    assert not spec.work_dir.exists()


def test_claude_credit_error_with_exit_zero_is_not_a_success(tmp_path: Path) -> None:
    result = execute(_spec("claude", tmp_path, _prompt("go", scenario="credit")))

    assert (result.exit_code, result.failure_kind) == (0, "rate_limited")
    assert (result.error_message, result.final_message) == ("Credit balance is too low", "Credit balance is too low")
    assert result.retry_after_seconds is None


def test_gemini_rate_limit_exits_173_with_the_error_result_and_its_reset(tmp_path: Path) -> None:
    result = execute(_spec("gemini", tmp_path, _prompt("go", scenario="rate_limit", reset_in=34.89)))

    assert (result.exit_code, result.failure_kind) == (173, "rate_limited")
    last = json.loads(result.stdout.splitlines()[-1])  # stream-json: the error is the stream's own result
    assert (last["type"], last["status"], last["error"]["type"]) == ("result", "error", "RetryableQuotaError")
    assert result.error_message.endswith("Please retry in 34.89s.")
    assert result.retry_after_seconds == 34.89


def test_claude_session_limit_reset_clock_becomes_retry_after(tmp_path: Path) -> None:
    result = execute(_spec("claude", tmp_path, _prompt("go", scenario="rate_limit", reset_in=600)))

    assert (result.exit_code, result.failure_kind) == (1, "rate_limited")
    assert result.error_message.startswith("You've hit your session limit · resets ")
    # the message names a whole minute: up to 60 s earlier than the real reset
    assert result.retry_after_seconds is not None and 530 < result.retry_after_seconds <= 600


def test_codex_usage_limit_reset_clock_becomes_retry_after(tmp_path: Path,
                                                           local_zone: Callable[[str], None]) -> None:
    # A zone where it is about noon now, so now + 10 min is the same day (codex then names only a clock time).
    offset = (12 - datetime.now(UTC).hour + 11) % 24 - 11
    zone = f"NOON{-offset:+d}"
    local_zone(zone)
    spec = _spec("codex", tmp_path, _prompt("go", scenario="rate_limit", reset_in=600),
                 env=_env("codex", tmp_path, TZ=zone))

    result = execute(spec)

    assert (result.exit_code, result.failure_kind) == (1, "rate_limited")
    assert re.search(r"try again at \d{1,2}:\d\d PM\.$", result.error_message)
    assert result.retry_after_seconds is not None and 530 < result.retry_after_seconds <= 600


@pytest.mark.parametrize("tool", TOOLS)
def test_rate_limits_without_a_reset_time_leave_retry_after_unset(tool: str, tmp_path: Path) -> None:
    result = execute(_spec(tool, tmp_path, _prompt("go", scenario="rate_limit_api")))

    assert (result.failure_kind, result.retry_after_seconds) == ("rate_limited", None)


@pytest.mark.parametrize("tool", TOOLS)
def test_garbage_around_the_result_is_skipped(tool: str, tmp_path: Path) -> None:
    prompt = _prompt("go", scenario="garbage", answer="still fine")

    result = execute(_spec(tool, tmp_path, prompt))

    assert (result.failure_kind, result.exit_code, result.final_message) == ("", 0, "still fine")
    assert (result.input_tokens, result.output_tokens) == (len(prompt.split()), 2)
    assert "{not json at all" in result.stdout
    assert "socket hang up" in (result.stdout if tool == "gemini" else result.stderr)


# -- 5. timeout kills the whole process group ------------------------------------------------------------


@pytest.mark.parametrize(("tool", "exit_code"), [("claude", 143), ("codex", -signal.SIGTERM), ("gemini", 0)])
def test_timeout_kills_the_cli_and_everything_in_its_group(tool: str, exit_code: int, tmp_path: Path) -> None:
    spec = _spec(tool, tmp_path, _prompt("go", scenario="hang"), timeout_seconds=1.5, kill_grace_seconds=1.0)

    result = execute(spec)

    # gemini exits 0 on SIGTERM: a run the executor killed is still never a success
    assert (result.failure_kind, result.exit_code) == ("timeout", exit_code)
    assert result.error_message == "timed out after 1.5s; the CLI's process group was killed"
    assert result.stderr == "Working on it... "
    assert 1500 <= result.latency_ms < 4000
    _assert_all_gone(_start_line(tmp_path))
    assert not spec.work_dir.exists()


# -- 6. heartbeat: cancel and lease lost -----------------------------------------------------------------


@pytest.mark.parametrize(("tool", "control", "kind", "message"), [
    ("claude", Control.CANCEL, "canceled", "canceled while running; the CLI's process group was killed"),
    ("gemini", Control.CANCEL, "canceled", "canceled while running; the CLI's process group was killed"),
    ("codex", Control.LEASE_LOST, "worker_lost", "lease lost to another worker; this run was stopped"),
    ("claude", Control.LEASE_LOST, "worker_lost", "lease lost to another worker; this run was stopped"),
])
def test_heartbeat_stops_a_running_cli(tool: str, control: Control, kind: str, message: str,
                                       tmp_path: Path) -> None:
    calls: list[float] = []

    def heartbeat() -> Control:
        calls.append(time.monotonic())
        return Control.CONTINUE if len(calls) == 1 or not _has_started(tmp_path) else control

    spec = _spec(tool, tmp_path, _prompt("go", scenario="hang"), timeout_seconds=30, kill_grace_seconds=1.0,
                 heartbeat_interval=0.2)

    result = execute(spec, heartbeat=heartbeat)

    assert (result.failure_kind, result.error_message) == (kind, message)
    assert len(calls) >= 2
    assert result.latency_ms < 5000
    _assert_all_gone(_start_line(tmp_path))


def test_heartbeat_is_called_while_a_run_goes_on_and_continue_lets_it_finish(tmp_path: Path) -> None:
    calls: list[float] = []

    def heartbeat() -> Control:
        calls.append(time.monotonic())
        return Control.CONTINUE

    spec = _spec("claude", tmp_path, _prompt("go", sleep=0.8, answer="slow but fine"), heartbeat_interval=0.2)

    result = execute(spec, heartbeat=heartbeat)

    assert (result.failure_kind, result.final_message) == ("", "slow but fine")
    assert len(calls) >= 2


def test_a_heartbeat_that_raises_still_kills_the_cli_process_group(tmp_path: Path) -> None:
    def heartbeat() -> Control:
        if not _has_started(tmp_path):
            return Control.CONTINUE
        raise RuntimeError("database connection lost")

    spec = _spec("claude", tmp_path, _prompt("go", scenario="hang"), timeout_seconds=30, heartbeat_interval=0.2)
    try:
        with contextlib.suppress(RuntimeError):  # propagating the error is fine; leaving the CLI behind is not
            execute(spec, heartbeat=heartbeat)
        _assert_all_gone(_start_line(tmp_path), timeout=2.0)
    finally:
        if _has_started(tmp_path):  # clean up what the bug leaks: our own test's process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(_start_line(tmp_path)["pgid"], signal.SIGKILL)


# -- 7. bounded capture ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tool", TOOLS)
def test_huge_stdout_is_bounded_and_the_final_result_still_parsed(tool: str, tmp_path: Path) -> None:
    prompt = _prompt("go", stdout_bytes=5_000_000, answer="after the flood")
    limit = 64 * 1024

    result = execute(_spec(tool, tmp_path, prompt, stdout_limit=limit))

    assert result.stdout_truncated and not result.stderr_truncated
    assert len(result.stdout) <= limit + 60
    assert re.search(r"\n\[\.\.\. \d+ bytes truncated \.\.\.\]\n", result.stdout)
    assert (result.failure_kind, result.final_message) == ("", "after the flood")
    assert (result.input_tokens, result.output_tokens) == (len(prompt.split()), 3)


def test_stdout_under_the_limit_is_kept_whole(tmp_path: Path) -> None:
    result = execute(_spec("claude", tmp_path, _prompt("go", stdout_bytes=1000), stdout_limit=64 * 1024))

    lines = result.stdout.splitlines(keepends=True)
    filler = [line for line in lines if not line.startswith("{")]
    assert not result.stdout_truncated
    assert sum(len(line) for line in filler) == 1000
    assert json.loads(lines[-1])["type"] == "result"


# -- 8. missing CLI --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tool", TOOLS)
def test_a_missing_binary_is_cli_missing_and_names_the_setting(tool: str, tmp_path: Path) -> None:
    binary = str(tmp_path / "nowhere" / tool)
    argv = ADAPTERS[tool].build(binary=binary, model="", extra_args=[], allow_dangerous=False)
    spec = ExecutionSpec(tool=tool, argv=argv, stdin=b"go", env=_env(tool, tmp_path), work_dir=tmp_path / "work")

    result = execute(spec)

    assert result.failure_kind == "cli_missing"
    assert result.error_message == f"{binary} not found: set SCHEDULER_{tool.upper()}_BIN or install {tool}"
    assert result.exit_code is None
    assert not spec.work_dir.exists()


def test_a_binary_that_is_not_executable_is_cli_missing(tmp_path: Path) -> None:
    binary = tmp_path / "claude"
    binary.write_text("#!/bin/sh\n")
    argv = ADAPTERS["claude"].build(binary=str(binary), model="", extra_args=[], allow_dangerous=False)
    spec = ExecutionSpec(tool="claude", argv=argv, stdin=b"go", env=_env("claude", tmp_path),
                         work_dir=tmp_path / "work")

    result = execute(spec)

    assert (result.failure_kind, result.error_message) == ("cli_missing", f"{binary} is not executable")


# -- 9. secrets are scrubbed -----------------------------------------------------------------------------


def _recorded_text(result: ExecutionResult) -> str:
    return "\n".join([result.stdout, result.stderr, result.final_message, result.error_message])


@pytest.mark.parametrize("tool", TOOLS)
def test_a_credential_the_cli_echoes_in_its_answer_is_scrubbed(tool: str, tmp_path: Path) -> None:
    result = execute(_spec(tool, tmp_path, _prompt("go", answer=f"your key is {SECRET}, right?")))

    assert result.succeeded
    assert result.final_message == "your key is [redacted], right?"
    assert SECRET not in _recorded_text(result)
    assert "[redacted]" in result.stdout
    assert _start_line(tmp_path)["cred"] == SECRET  # the CLI did get it


@pytest.mark.parametrize("tool", TOOLS)
def test_a_credential_the_cli_prints_in_an_error_is_scrubbed(tool: str, tmp_path: Path) -> None:
    prompt = _prompt("go", scenario="exit", exit_code=1, stderr=f"request failed with key {SECRET}")

    result = execute(_spec(tool, tmp_path, prompt))

    assert result.failure_kind == "exit_code"
    assert result.error_message == "request failed with key [redacted]"
    assert SECRET not in _recorded_text(result)


@pytest.mark.parametrize("tool", TOOLS)
def test_a_credential_the_cli_prints_while_running_is_scrubbed_from_both_streams(tool: str,
                                                                                 tmp_path: Path) -> None:
    env = _env(tool, tmp_path, FAKE_CLI_ECHO_ENV=CREDENTIAL_VARS[tool])

    result = execute(_spec(tool, tmp_path, _prompt("go", answer="fine"), env=env))

    assert (result.failure_kind, result.final_message) == ("", "fine")
    assert f"debug: {CREDENTIAL_VARS[tool]}=[redacted]" in result.stdout
    assert f"debug: {CREDENTIAL_VARS[tool]}=[redacted]" in result.stderr
    assert SECRET not in _recorded_text(result)


# -- 10. workers/spec.py: the child's environment --------------------------------------------------------


def _context(**overrides: Any) -> RunContext:
    values: dict[str, Any] = {
        "task_id": uuid.UUID("00000000-0000-0000-0000-000000000001"), "run_id": 7, "attempt": 2,
        "lease_token": uuid.uuid4(), "tool": "claude", "model": "opus", "prompt": "Say hi",
        "group_name": "claude-main",
        "group_env": {"CLAUDE_CONFIG_DIR": "/srv/accounts/main", "ANTHROPIC_API_KEY": "group-env-key"},
        "credentials": {"ANTHROPIC_API_KEY": "group-credential"},
        "extra_args": [], "allow_dangerous_flags": False, "input_files": [], "output_patterns": [],
        "timeout_seconds": 60,
    }
    values.update(overrides)
    return RunContext(**values)


@pytest.fixture
def worker_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker box's environment, full of things no CLI may see."""
    for name in ("LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", os.environ["PATH"])
    monkeypatch.setenv("HOME", "/home/worker")
    monkeypatch.setenv("LANG", "en_US.UTF-8")
    monkeypatch.setenv("DATABASE_URL", "postgres://scheduler:pw@db/scheduler")
    monkeypatch.setenv("SECRET_KEY", "django-secret")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://broker:6379/0")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "worker-own-key")
    monkeypatch.setenv("CLAUDECODE", "1")


@pytest.mark.usefixtures("worker_environ")
def test_child_env_holds_only_safe_inherited_vars_defaults_group_env_and_credentials() -> None:
    env = child_env(_context())

    assert env == {
        "PATH": os.environ["PATH"],
        "HOME": "/home/worker",
        "LANG": "en_US.UTF-8",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "NO_COLOR": "1",
        "CLAUDE_CONFIG_DIR": "/srv/accounts/main",
        "ANTHROPIC_API_KEY": "group-credential",  # credentials win over group env
    }


@pytest.mark.usefixtures("worker_environ")
def test_child_env_defaults_lang_and_adds_the_tools_own_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LANG")
    monkeypatch.setenv("TZ", "Europe/Lisbon")

    env = child_env(_context(tool="gemini", group_env={}, credentials={"GEMINI_API_KEY": "g-key"}))

    assert env == {"PATH": os.environ["PATH"], "HOME": "/home/worker", "LANG": "C.UTF-8", "TZ": "Europe/Lisbon",
                   "GEMINI_CLI_NO_RELAUNCH": "1", "NO_COLOR": "1", "GEMINI_API_KEY": "g-key"}


@pytest.mark.usefixtures("worker_environ")
def test_execution_spec_runs_the_cli_with_the_groups_credential_only(settings: Any, tmp_path: Path) -> None:
    settings.SCHEDULER_CLAUDE_BIN = str(FAKES_BIN / "claude")
    settings.SCHEDULER_WORK_DIR = tmp_path / "work-root"
    settings.SCHEDULER_KILL_GRACE_SECONDS = 2.0
    settings.SCHEDULER_LEASE_SECONDS = 60
    ctx = _context(prompt=_prompt("Say hi", answer="hi", dump_env="env.json"), output_patterns=["env.json"],
                   input_files=[("brief.md", b"b")], extra_args=["--max-turns=2"])

    spec = execution_spec(ctx)
    result = execute(spec)

    assert spec.work_dir == tmp_path / "work-root" / f"{ctx.task_id}-2"
    assert spec.argv == [str(FAKES_BIN / "claude"), "-p", "--output-format", "stream-json", "--verbose",
                         "--permission-mode", "acceptEdits", "--setting-sources", "user", "--model", "opus",
                         "--max-turns", "2"]
    assert (spec.stdin, spec.secrets, spec.timeout_seconds) == (ctx.prompt.encode(), ("group-credential",), 60.0)
    assert spec.kill_grace_seconds == 2.0
    assert (result.failure_kind, result.final_message) == ("", "hi")  # CLAUDECODE did not reach it
    (env_file,) = result.outputs
    child = json.loads(env_file.data)
    assert child["ANTHROPIC_API_KEY"] == "group-credential"
    assert not {"DATABASE_URL", "SECRET_KEY", "CELERY_BROKER_URL", "CLAUDECODE"} & set(child)


@pytest.mark.parametrize(("group_allows", "site_allows", "allowed"), [
    (False, False, False), (True, False, False), (False, True, False), (True, True, True),
])
def test_dangerous_flags_need_both_the_group_and_the_site_setting(group_allows: bool, site_allows: bool,
                                                                  allowed: bool, settings: Any) -> None:
    settings.SCHEDULER_ALLOW_DANGEROUS_FLAGS = site_allows
    ctx = _context(extra_args=["--dangerously-skip-permissions"], allow_dangerous_flags=group_allows)

    if allowed:
        assert execution_spec(ctx).argv[-1] == "--dangerously-skip-permissions"
    else:
        with pytest.raises(ConfigurationError, match="is dangerous"):
            execution_spec(ctx)


# -- sessions: a follow-up resumes the CLI's own session ------------------------------------------------


STATE_DIR_VARIABLE = {"claude": "CLAUDE_CONFIG_DIR", "codex": "CODEX_HOME", "gemini": "GEMINI_CLI_HOME"}


def _session_run(tool: str, tmp_path: Path, prompt: str, work: str, *, resume: str = "",
                 state: str = "state") -> ExecutionResult:
    argv = ADAPTERS[tool].build(binary=str(FAKES_BIN / tool), model=MODELS[tool], extra_args=[],
                                allow_dangerous=False, resume_session=resume)
    env = _env(tool, tmp_path, **{STATE_DIR_VARIABLE[tool]: str(tmp_path / state)})
    return execute(ExecutionSpec(tool=tool, argv=argv, stdin=prompt.encode(), env=env, work_dir=tmp_path / work,
                                 secrets=(SECRET,), keep_work_dir=True))


@pytest.mark.parametrize("tool", TOOLS)
def test_each_cli_resumes_its_session_with_the_command_line_it_accepts(tool: str, tmp_path: Path) -> None:
    first = _session_run(tool, tmp_path, "Write the report", "work")
    assert first.succeeded and first.session_id, first.error_message
    shutil.rmtree(tmp_path / "work")  # claude and gemini file sessions by project dir: resume from the same path

    again = _session_run(tool, tmp_path, "Now shorten it", "work", resume=first.session_id)

    assert again.succeeded, again.error_message
    assert again.session_id == first.session_id
    start = [line for line in _log(tmp_path) if line["event"] == "start"][-1]
    assert (start["resumed"], start["history"]) == (first.session_id, 1)


@pytest.mark.parametrize("tool", TOOLS)
def test_a_session_of_another_account_cannot_be_resumed(tool: str, tmp_path: Path) -> None:
    first = _session_run(tool, tmp_path, "Write the report", "work", state="account-a")
    shutil.rmtree(tmp_path / "work")
    other = _session_run(tool, tmp_path, "Go on", "work", resume=first.session_id, state="account-b")
    assert not other.succeeded and other.failure_kind == "exit_code"
    assert first.session_id in other.stderr or "No previous sessions" in other.stderr


@pytest.mark.parametrize("session", ["--dangerously-skip-permissions", "a b", "", "x" * 201])
def test_a_session_id_that_is_not_one_is_never_passed_to_a_cli(session: str) -> None:
    if not session:
        argv = ADAPTERS["claude"].build(binary="claude", model="", extra_args=[], allow_dangerous=False,
                                        resume_session=session)
        assert "--resume" not in argv
        return
    with pytest.raises(ConfigurationError, match="cannot be resumed"):
        ADAPTERS["codex"].build(binary="codex", model="", extra_args=[], allow_dangerous=False,
                                resume_session=session)


def test_codex_resume_keeps_execs_own_options_before_the_subcommand() -> None:
    argv = ADAPTERS["codex"].build(binary="codex", model="gpt-5-codex", extra_args=[], allow_dangerous=False,
                                   resume_session="0199a1b2-0000-7000-8000-000000000000")
    assert argv[argv.index("resume") - 4:] == ["--sandbox", "workspace-write", "--model", "gpt-5-codex", "resume",
                                               "0199a1b2-0000-7000-8000-000000000000", "-"]
