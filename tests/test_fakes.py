"""Tests of the stand-in CLIs in tests/fakes/bin (no database, no Django)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(__file__).resolve().parent / "fakes" / "bin"
TIMEOUT = 30


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "FAKE_CLI_LOG": str(tmp_path / "log.jsonl"),
        "FAKE_CLI_STATE": str(tmp_path / "state"),
    }
    env.update(extra)
    return env


def _workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return work


def run_fake(
    tool: str, args: list[str], tmp_path: Path, stdin: str | None = None, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(BIN / tool), *args],
        cwd=cwd or _workdir(tmp_path),
        env=_env(tmp_path, **env),
        input=stdin.encode() if stdin is not None else None,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )


def jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines() if line.startswith("{")]


def log_records(tmp_path: Path) -> list[dict]:
    path = tmp_path / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for(predicate, timeout: float = 10.0):
    """Bounded poll: return the first truthy value of predicate() or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout}s")


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def fake(**directive: object) -> str:
    return "FAKE: " + json.dumps(directive)


# ----------------------------------------------------------------------------- claude


def test_claude_json_ok(tmp_path):
    r = run_fake("claude", ["-p", "--output-format", "json", "--model", "opus", "hello big world"], tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert res["type"] == "result"
    assert res["subtype"] == "success"
    assert res["is_error"] is False
    assert res["result"] == "done: hello big world"
    assert res["num_turns"] == 1
    assert res["usage"]["input_tokens"] == 3
    assert res["usage"]["output_tokens"] == 4
    assert res["usage"]["cache_read_input_tokens"] == 0
    assert res["usage"]["cache_creation_input_tokens"] == 0
    assert res["total_cost_usd"] == 0.000003 * 3 + 0.000015 * 4
    assert list(res["modelUsage"]) == ["opus"]
    assert res["permission_denials"] == []
    assert "api_error_status" not in res
    assert isinstance(res["session_id"], str) and len(res["session_id"]) == 36
    assert isinstance(res["duration_ms"], int)


def test_claude_prompt_from_stdin_text_mode(tmp_path):
    r = run_fake("claude", ["-p"], tmp_path, stdin="from stdin please")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"done: from stdin please\n"


def test_claude_variadic_space_form_swallows_prompt(tmp_path):
    r = run_fake(
        "claude", ["-p", "--allowedTools", "Read", "positional words"], tmp_path, stdin="the stdin prompt"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"done: the stdin prompt\n"
    r = run_fake("claude", ["-p", "--allowedTools=Read,Edit", "positional words"], tmp_path)
    assert r.stdout == b"done: positional words\n"


def test_claude_rejects_unknown_option(tmp_path):
    r = run_fake("claude", ["-p", "--x", "hi"], tmp_path)
    assert r.returncode == 1
    assert r.stderr == b"error: unknown option '--x'\n"
    assert r.stdout == b""


def test_claude_stream_json_requires_verbose(tmp_path):
    r = run_fake("claude", ["-p", "--output-format", "stream-json", "hi"], tmp_path)
    assert r.returncode == 1
    assert r.stdout == b""
    assert b"requires --verbose" in r.stderr


def test_claude_refuses_nested_session(tmp_path):
    r = run_fake("claude", ["-p", "hi"], tmp_path, CLAUDECODE="1")
    assert r.returncode == 1
    assert r.stdout == b""
    assert b"cannot be launched inside another Claude Code session" in r.stderr


def test_claude_stream_json_ok(tmp_path):
    r = run_fake("claude", ["-p", "--output-format", "stream-json", "--verbose", "a b"], tmp_path)
    assert r.returncode == 0, r.stderr
    events = jsonl(r.stdout)
    assert [e["type"] for e in events] == ["system", "assistant", "rate_limit_event", "result"]
    assert events[0]["subtype"] == "init"
    assert events[1]["message"]["content"] == [{"type": "text", "text": "done: a b"}]
    assert events[2]["rate_limit_info"]["status"] == "allowed"
    assert events[3]["is_error"] is False
    assert events[3]["result"] == "done: a b"


def _claude_clock(ts: float) -> str:
    t = time.gmtime(ts)
    hour = t.tm_hour % 12 or 12
    ampm = "am" if t.tm_hour < 12 else "pm"
    return (f"{hour}{ampm}" if t.tm_min == 0 else f"{hour}:{t.tm_min:02d}{ampm}") + " (UTC)"


def test_claude_rate_limit_json_and_stream(tmp_path):
    prompt = fake(scenario="rate_limit", reset_in=3600) + "\nwork"
    before = time.time()
    r = run_fake("claude", ["-p", "--output-format", "json"], tmp_path, stdin=prompt)
    after = time.time()
    assert r.returncode == 1
    res = json.loads(r.stdout)
    assert res["is_error"] is True
    assert res["subtype"] == "success"
    assert res["api_error_status"] == 429
    expected = {"You've hit your session limit · resets " + _claude_clock(t + 3600) for t in (before, after)}
    assert res["result"] in expected

    before = time.time()
    r = run_fake("claude", ["-p", "--output-format", "stream-json", "--verbose"], tmp_path, stdin=prompt)
    after = time.time()
    assert r.returncode == 1
    events = jsonl(r.stdout)
    assert [e["type"] for e in events] == ["system", "assistant", "rate_limit_event", "result"]
    info = events[2]["rate_limit_info"]
    assert info["status"] == "rejected"
    assert int(before + 3600) <= info["resetsAt"] <= int(after + 3600)
    assert events[3]["api_error_status"] == 429
    assert events[3]["is_error"] is True


def test_claude_error_scenarios(tmp_path):
    cases = {
        "rate_limit_api": (
            1,
            429,
            "API Error: Request rejected (429) · This request would exceed your account's rate limit. "
            "Please try again later.",
        ),
        "overloaded": (
            1,
            529,
            'API Error: 529 {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
        ),
        "auth": (1, 401, "Invalid API key · Please run /login"),
        "credit": (0, None, "Credit balance is too low"),  # the lying exit code
    }
    for scenario, (code, status, text) in cases.items():
        r = run_fake("claude", ["-p", "--output-format", "json"], tmp_path, stdin=fake(scenario=scenario))
        assert r.returncode == code, scenario
        res = json.loads(r.stdout)
        assert res["subtype"] == "success", scenario
        assert res["is_error"] is True, scenario
        assert res["result"] == text, scenario
        assert res.get("api_error_status") == status, scenario
    r = run_fake("claude", ["-p"], tmp_path, stdin=fake(scenario="auth"))
    assert r.returncode == 1
    assert r.stdout == "Invalid API key · Please run /login\n".encode()


def test_claude_stdout_filler_precedes_result(tmp_path):
    r = run_fake("claude", ["-p", "--output-format", "json"], tmp_path, stdin=fake(stdout_bytes=300_000))
    assert r.returncode == 0
    filler, _, last = r.stdout.rstrip(b"\n").rpartition(b"\n")
    assert len(filler) + 1 == 300_000
    assert json.loads(last)["result"] == "done: "
    assert all(not line.startswith(b"{") for line in filler.splitlines())


# ----------------------------------------------------------------------------- codex


def test_codex_jsonl_ok(tmp_path):
    r = run_fake("codex", ["exec", "--json", "--skip-git-repo-check", "-m", "gpt-5", "fix the bug"], tmp_path)
    assert r.returncode == 0, r.stderr
    events = jsonl(r.stdout)
    assert [e["type"] for e in events] == [
        "thread.started",
        "turn.started",
        "item.completed",
        "item.completed",
        "turn.completed",
    ]
    assert events[3]["item"]["type"] == "agent_message"
    assert events[3]["item"]["text"] == "done: fix the bug"
    assert events[4]["usage"] == {"input_tokens": 3, "cached_input_tokens": 0, "output_tokens": 4}
    assert isinstance(events[0]["thread_id"], str)


def test_codex_prompt_from_stdin_dash(tmp_path):
    r = run_fake(
        "codex",
        ["exec", "--skip-git-repo-check", "--color", "never", "-o", "last.txt", "-"],
        tmp_path,
        stdin="prompt via stdin",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"done: prompt via stdin\n"
    assert b"OpenAI Codex" in r.stderr
    assert (tmp_path / "work" / "last.txt").read_text() == "done: prompt via stdin"


def test_codex_git_repo_check(tmp_path):
    r = run_fake("codex", ["exec", "--json", "hi"], tmp_path)
    assert r.returncode == 1
    assert r.stdout == b""
    assert r.stderr == b"Not inside a trusted directory and --skip-git-repo-check was not specified.\n"
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "sub").mkdir()
    r = run_fake("codex", ["exec", "--json", "hi"], tmp_path, cwd=repo / "sub")
    assert r.returncode == 0, r.stderr
    r = run_fake("codex", ["exec", "--json", "-C", str(repo), "hi"], tmp_path)
    assert r.returncode == 0, r.stderr


def test_codex_rejects_unknown_flags(tmp_path):
    for flag in ("-a", "--ask-for-approval", "--x", "--full-auto"):
        r = run_fake("codex", ["exec", "--skip-git-repo-check", flag, "never", "hi"], tmp_path)
        assert r.returncode == 2, flag
        assert r.stderr.startswith(f"error: unexpected argument '{flag}' found\n".encode()), flag
        assert b"Usage: codex exec" in r.stderr
        assert r.stdout == b""
    r = run_fake("codex", ["exec", "--skip-git-repo-check", "-s", "bogus", "hi"], tmp_path)
    assert r.returncode == 2


def _codex_clock(ts: float) -> str:
    t = time.gmtime(ts)
    clock = f"{t.tm_hour % 12 or 12}:{t.tm_min:02d} {'AM' if t.tm_hour < 12 else 'PM'}"
    now = time.gmtime(ts - 600)
    if (t.tm_year, t.tm_yday) == (now.tm_year, now.tm_yday):
        return clock
    day = t.tm_mday
    suffix = "th" if 11 <= day <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{time.strftime('%b', t)} {day}{suffix}, {t.tm_year} {clock}"


def test_codex_rate_limit_usage_limit(tmp_path):
    before = time.time()
    r = run_fake(
        "codex",
        ["exec", "--json", "--skip-git-repo-check", "-"],
        tmp_path,
        stdin=fake(scenario="rate_limit", reset_in=600),
    )
    after = time.time()
    assert r.returncode == 1
    events = jsonl(r.stdout)
    assert [e["type"] for e in events] == ["thread.started", "turn.started", "error", "turn.failed"]
    message = events[3]["error"]["message"]
    assert events[2]["message"] == message
    assert message.startswith("You've hit your usage limit. ")
    assert message in {
        "You've hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), visit "
        "https://chatgpt.com/codex/settings/usage to purchase more credits or try again at "
        f"{_codex_clock(t + 600)}."
        for t in (before, after)
    }
    assert re.search(r"try again at .*\d{1,2}:\d\d (AM|PM)\.$", message)


def test_codex_rate_limit_api_and_others(tmp_path):
    cases = {
        "rate_limit_api": "exceeded retry limit, last status: 429 Too Many Requests, request id: abc",
        "overloaded": "We're currently experiencing high demand, which may cause temporary errors.",
        "provider_error": "exceeded retry limit, last status: 500 Internal Server Error, request id: abc",
        "auth": "exceeded retry limit, last status: 401 Unauthorized, request id: abc",
    }
    for scenario, message in cases.items():
        r = run_fake("codex", ["exec", "--json", "--skip-git-repo-check", fake(scenario=scenario)], tmp_path)
        assert r.returncode == 1, scenario
        events = jsonl(r.stdout)
        assert events[-1] == {"type": "turn.failed", "error": {"message": message}}, scenario
        assert events[-2] == {"type": "error", "message": message}, scenario
    r = run_fake(
        "codex", ["exec", "--json", "--skip-git-repo-check", fake(scenario="rate_limit_api")], tmp_path
    )
    notices = [e["message"] for e in jsonl(r.stdout) if e["type"] == "error"]
    assert notices[:2] == ["Reconnecting... 1/5", "Reconnecting... 2/5"]
    r = run_fake("codex", ["exec", "--skip-git-repo-check", fake(scenario="rate_limit_api")], tmp_path)
    assert r.returncode == 1
    assert r.stdout == b""
    assert r.stderr.endswith(
        b"ERROR: exceeded retry limit, last status: 429 Too Many Requests, request id: abc\n"
    )


def test_codex_writes_files_into_cd_dir(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    prompt = fake(
        write={"src/a.txt": "alpha"}, write_bytes_b64={"b.bin": base64.b64encode(b"\x00\x01").decode()}
    )
    r = run_fake("codex", ["exec", "--skip-git-repo-check", "-C", str(target), prompt], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (target / "src" / "a.txt").read_text() == "alpha"
    assert (target / "b.bin").read_bytes() == b"\x00\x01"


# ----------------------------------------------------------------------------- gemini


def test_gemini_json_ok(tmp_path):
    r = run_fake(
        "gemini", ["--skip-trust", "-o", "json", "-m", "gemini-2.5-flash", "-p", "one two three"], tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b'{\n  "session_id": ')
    doc = json.loads(r.stdout)
    assert doc["response"] == "done: one two three"
    assert list(doc["stats"]["models"]) == ["gemini-2.5-flash"]
    tokens = doc["stats"]["models"]["gemini-2.5-flash"]["tokens"]
    assert tokens == {
        "input": 3,
        "prompt": 3,
        "candidates": 4,
        "total": 7,
        "cached": 0,
        "thoughts": 0,
        "tool": 0,
    }
    assert doc["stats"]["models"]["gemini-2.5-flash"]["api"]["totalRequests"] == 1
    assert set(doc["stats"]) == {"models", "tools", "files"}


def test_gemini_two_models_must_be_summed(tmp_path):
    prompt = fake(two_models=True) + "\none two three four five"
    r = run_fake("gemini", ["--skip-trust", "-o", "json", "-p", prompt], tmp_path)
    assert r.returncode == 0, r.stderr
    models = json.loads(r.stdout)["stats"]["models"]
    assert len(models) == 2
    assert sum(m["tokens"]["prompt"] for m in models.values()) == len(prompt.split())
    assert sum(m["tokens"]["candidates"] for m in models.values()) == len(
        ["done:", "one", "two", "three", "four", "five"]
    )
    assert all(m["tokens"]["prompt"] < len(prompt.split()) for m in models.values())


def test_gemini_prompt_from_stdin(tmp_path):
    r = run_fake("gemini", ["--skip-trust", "-o", "json"], tmp_path, stdin="only stdin")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["response"] == "done: only stdin"
    r = run_fake("gemini", ["--skip-trust", "-o", "json", "--prompt=tail"], tmp_path, stdin="head")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["response"] == "done: head\n\ntail"


def test_gemini_rejects_unknown_flag_and_bad_combos(tmp_path):
    r = run_fake("gemini", ["--skip-trust", "--bogus", "-p", "hi"], tmp_path)
    assert r.returncode == 1
    assert r.stdout == b""
    assert r.stderr.startswith(b"Usage: gemini")
    assert r.stderr.endswith(b"Unknown argument: bogus\n")
    r = run_fake("gemini", ["--skip-trust", "-y", "--approval-mode", "yolo", "-p", "hi"], tmp_path)
    assert r.returncode == 1
    r = run_fake("gemini", ["--skip-trust", "-o", "xml", "-p", "hi"], tmp_path)
    assert r.returncode == 1


def test_gemini_untrusted_folder_exits_55(tmp_path):
    r = run_fake("gemini", ["-o", "json", "-p", "hi"], tmp_path)
    assert r.returncode == 55
    assert r.stdout == b""
    r = run_fake("gemini", ["-o", "json", "-p", "hi"], tmp_path, GEMINI_CLI_TRUST_WORKSPACE="true")
    assert r.returncode == 0, r.stderr


def test_gemini_rate_limit_exit_173_error_on_stderr(tmp_path):
    r = run_fake(
        "gemini", ["--skip-trust", "-o", "json", "-p", fake(scenario="rate_limit", reset_in=42)], tmp_path
    )
    assert r.returncode == 173
    assert r.stdout == b""
    error = json.loads(r.stderr)["error"]
    assert error["code"] == 429
    assert error["message"].endswith("Please retry in 42s.")


def test_gemini_error_exit_codes(tmp_path):
    cases = {
        "rate_limit_api": (173, 429, "RESOURCE_EXHAUSTED"),
        "overloaded": (247, 503, "UNAVAILABLE"),
        "provider_error": (244, 500, "INTERNAL"),
        "auth": (144, 400, "API_KEY_INVALID"),
    }
    for scenario, (code, http, needle) in cases.items():
        r = run_fake("gemini", ["--skip-trust", "-o", "json", "-p", fake(scenario=scenario)], tmp_path)
        assert r.returncode == code, scenario
        assert r.stdout == b"", scenario
        error = json.loads(r.stderr)["error"]
        assert error["code"] == http, scenario
        assert needle in error["message"], scenario
    r = run_fake("gemini", ["--skip-trust", "-p", fake(scenario="auth", auth_variant="no_auth")], tmp_path)
    assert r.returncode == 41


def test_gemini_garbage_mixes_trace_into_stdout(tmp_path):
    r = run_fake(
        "gemini", ["--skip-trust", "-o", "json", "-p", fake(scenario="garbage", answer="fine")], tmp_path
    )
    assert r.returncode == 0
    text = r.stdout.decode()
    assert "at connResetException" in text
    start = text.index("\n{\n") + 1
    assert json.loads(text[start:])["response"] == "fine"


def test_gemini_sigterm_exits_0_with_empty_stdout(tmp_path):
    proc = subprocess.Popen(
        [str(BIN / "gemini"), "--skip-trust", "-o", "json", "-p", fake(sleep=60, tag="term")],
        cwd=_workdir(tmp_path),
        env=_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for(lambda: any(rec["event"] == "start" for rec in log_records(tmp_path)))
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert out == b""
    finally:
        _killpg_quietly(proc.pid)


# ----------------------------------------------------------------------------- shared behaviour


def test_once_key_fails_only_first_time(tmp_path):
    prompt = fake(scenario="rate_limit", once_key="job-17")
    first = run_fake("claude", ["-p", "--output-format", "json"], tmp_path, stdin=prompt)
    second = run_fake("claude", ["-p", "--output-format", "json"], tmp_path, stdin=prompt)
    assert first.returncode == 1
    assert json.loads(first.stdout)["is_error"] is True
    assert second.returncode == 0
    assert json.loads(second.stdout)["is_error"] is False
    assert len(list((tmp_path / "state").iterdir())) == 1
    other = run_fake(
        "gemini", ["--skip-trust", "-o", "json", "-p", fake(scenario="overloaded", once_key="g")], tmp_path
    )
    assert other.returncode == 247


def test_exit_scenario_and_dump_env(tmp_path):
    r = run_fake(
        "codex",
        [
            "exec",
            "--skip-git-repo-check",
            fake(scenario="exit", exit_code=7, stderr="boom", dump_env="env.json"),
        ],
        tmp_path,
        CODEX_API_KEY="ck",
    )
    assert r.returncode == 7
    assert r.stderr.endswith(b"boom\n")
    env = json.loads((tmp_path / "work" / "env.json").read_text())
    assert env["CODEX_API_KEY"] == "ck"
    assert env["TZ"] == "UTC"


def test_list_files_writes_what_the_cli_finds_in_its_work_dir(tmp_path):
    work = _workdir(tmp_path)
    (work / "parent-id" / "out").mkdir(parents=True)
    (work / "parent-id" / "out" / "a.txt").write_text("from A\n")
    (work / "b.bin").write_bytes(b"\xff")
    (work / "link").symlink_to(work / "b.bin")

    r = run_fake("claude", ["-p", fake(list_files="seen/listing.json")], tmp_path, ANTHROPIC_API_KEY="ak")

    assert r.returncode == 0
    listing = json.loads((work / "seen" / "listing.json").read_text())
    assert listing == {"parent-id/out/a.txt": "from A\n", "b.bin": "\ufffd"}


def test_log_lines_written(tmp_path):
    run_fake("claude", ["-p", "--model", "sonnet", fake(tag="c1")], tmp_path, ANTHROPIC_API_KEY="ak")
    run_fake("codex", ["exec", "--skip-git-repo-check", fake(tag="x1")], tmp_path, CODEX_ACCESS_TOKEN="xt")
    run_fake("gemini", ["--skip-trust", "-p", fake(tag="g1")], tmp_path, GOOGLE_API_KEY="gk")
    run_fake("claude", ["-p", "--nope"], tmp_path)
    recs = log_records(tmp_path)
    assert [(r["event"], r["tool"], r["tag"], r["cred"]) for r in recs] == [
        ("start", "claude", "c1", "ak"),
        ("end", "claude", "c1", "ak"),
        ("start", "codex", "x1", "xt"),
        ("end", "codex", "x1", "xt"),
        ("start", "gemini", "g1", "gk"),
        ("end", "gemini", "g1", "gk"),
        ("reject", "claude", None, None),
    ]
    assert recs[0]["model"] == "sonnet"
    assert recs[2]["model"] is None
    assert recs[1]["exit"] == 0
    assert recs[6]["exit"] == 1
    assert recs[0]["argv"] == ["claude", "-p", "--model", "sonnet", fake(tag="c1")]
    assert recs[0]["cwd"] == str(tmp_path / "work")
    assert recs[0]["pid"] == recs[1]["pid"]
    assert recs[0]["t"] <= recs[1]["t"]


# ----------------------------------------------------------------------------- hang / process groups


def _killpg_quietly(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _start_hang(tool: str, args: list[str], tmp_path: Path) -> tuple[subprocess.Popen, int]:
    errpath = tmp_path / f"{tool}.stderr"
    with open(errpath, "wb") as errf:
        proc = subprocess.Popen(
            [str(BIN / tool), *args],
            cwd=_workdir(tmp_path),
            env=_env(tmp_path),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errf,
            start_new_session=True,
        )
    start = wait_for(lambda: next((r for r in log_records(tmp_path) if r["event"] == "start"), None))
    assert start["pid"] == proc.pid
    assert start["pgid"] == proc.pid
    child = start["child_pid"]
    assert pid_alive(child)
    assert os.getpgid(child) == proc.pid
    wait_for(lambda: errpath.read_bytes().endswith(b"Working on it... "))
    return proc, child


def _hang_dies_with_group(tool: str, args: list[str], expected_rc: int, tmp_path: Path) -> None:
    proc, child = _start_hang(tool, args, tmp_path)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == expected_rc
        wait_for(lambda: not pid_alive(child))
    finally:
        _killpg_quietly(proc.pid)


def test_claude_hang_child_dies_with_process_group(tmp_path):
    _hang_dies_with_group("claude", ["-p", fake(scenario="hang")], 143, tmp_path)


def test_codex_hang_child_dies_with_process_group(tmp_path):
    _hang_dies_with_group(
        "codex", ["exec", "--skip-git-repo-check", fake(scenario="hang")], -signal.SIGTERM, tmp_path
    )


def test_gemini_hang_child_dies_with_process_group(tmp_path):
    _hang_dies_with_group("gemini", ["--skip-trust", "-p", fake(scenario="hang")], 0, tmp_path)


def test_hang_killing_only_the_pid_leaves_the_child(tmp_path):
    proc, child = _start_hang("codex", ["exec", "--skip-git-repo-check", fake(scenario="hang")], tmp_path)
    try:
        proc.kill()
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert pid_alive(child)
        os.killpg(proc.pid, signal.SIGTERM)  # the group outlives its leader while the child lives
        wait_for(lambda: not pid_alive(child))
    finally:
        _killpg_quietly(proc.pid)


# ----------------------------------------------------------------------------- agent turns (issue 16)

CLAUDE_STREAM = ["-p", "--output-format", "stream-json", "--verbose"]
CODEX_JSON = ["exec", "--json", "--skip-git-repo-check", "-"]
GEMINI_STREAM = ["-o", "stream-json", "--skip-trust"]


def test_claude_stream_shows_tool_turns_and_writes_the_file(tmp_path):
    prompt = fake(turns=2, turn_tokens=[100, 10], write={"out/a.md": "hello"}, answer="fin") + "\ngo"
    r = run_fake("claude", CLAUDE_STREAM, tmp_path, stdin=prompt)
    assert r.returncode == 0, r.stderr
    events = jsonl(r.stdout)
    blocks = [(e["type"], e["message"]["content"][0]["type"]) for e in events if e["type"] in ("assistant", "user")]
    assert blocks == [("assistant", "text"), ("assistant", "tool_use"), ("user", "tool_result")] * 2 + [
        ("assistant", "text")]
    bash, write = [e["message"]["content"][0] for e in events if e["type"] == "assistant"][1:4:2]
    assert (bash["name"], bash["input"]["command"]) == ("Bash", "echo step 1")
    assert (write["name"], write["input"]["file_path"]) == ("Write", str(tmp_path / "work" / "out" / "a.md"))
    ids = {e["message"]["id"] for e in events if e["type"] == "assistant"}
    assert len(ids) == 3  # one message id per turn, one event per content block
    result = events[-1]
    assert (result["num_turns"], result["result"], result["usage"]["input_tokens"]) == (3, "fin", 300)
    assert result["total_cost_usd"] == pytest.approx(3 * (0.000003 * 100 + 0.000015 * 10))
    assert (tmp_path / "work" / "out" / "a.md").read_text() == "hello"


def test_claude_stops_itself_at_max_budget_usd_between_turns(tmp_path):
    prompt = fake(turns=4, turn_tokens=[100_000, 10_000], write={"never.txt": "x"}) + "\ngo"
    r = run_fake("claude", [*CLAUDE_STREAM, "--max-budget-usd", "0.5"], tmp_path, stdin=prompt)
    assert r.returncode == 1
    result = jsonl(r.stdout)[-1]
    assert (result["subtype"], result["is_error"], result["num_turns"]) == ("error_max_budget_usd", True, 2)
    assert result["errors"] == ["Reached maximum budget ($0.5)"] and "result" not in result
    assert not (tmp_path / "work" / "never.txt").exists()
    for value in ("lots", "0"):
        r = run_fake("claude", [*CLAUDE_STREAM, "--max-budget-usd", value], tmp_path, stdin="go")
        assert (r.returncode, r.stdout) == (1, b"")
        assert r.stderr == b"error: --max-budget-usd must be a positive number greater than 0\n"


def test_codex_turns_stream_usage_per_turn_and_commands_in_flight(tmp_path):
    prompt = fake(turns=3, turn_tokens=[1000, 100], write={"f.txt": "x"}, answer="done") + "\ngo"
    r = run_fake("codex", CODEX_JSON, tmp_path, stdin=prompt)
    assert r.returncode == 0, r.stderr
    events = jsonl(r.stdout)
    assert [e["type"] for e in events].count("turn.completed") == 3
    assert sum(e["usage"]["input_tokens"] for e in events if e["type"] == "turn.completed") == 4000
    started = [e["item"] for e in events if e["type"] == "item.started"]
    assert [(i["type"], i["status"]) for i in started] == [("command_execution", "in_progress")] * 2
    changes = [e["item"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == "file_change"]
    assert changes[0]["changes"] == [{"path": str(tmp_path / "work" / "f.txt"), "kind": "add"}]
    assert events[-2]["item"] == {"id": events[-2]["item"]["id"], "type": "agent_message", "text": "done"}
    r = run_fake("codex", ["exec", "--json", "--max-budget-usd", "1", "-"], tmp_path, stdin="go")
    assert r.returncode == 2 and b"unexpected argument '--max-budget-usd'" in r.stderr


def test_gemini_stream_shows_tools_and_per_model_stats(tmp_path):
    prompt = fake(turns=2, two_models=True, write={"g.txt": "x"}, answer="all done") + "\ngo"
    r = run_fake("gemini", GEMINI_STREAM, tmp_path, stdin=prompt)
    assert r.returncode == 0, r.stderr
    events = jsonl(r.stdout)
    assert [e["type"] for e in events] == ["init", "message", *(["message", "tool_use", "tool_result"] * 2),
                                           "message", "result"]
    uses = [e for e in events if e["type"] == "tool_use"]
    assert [u["tool_name"] for u in uses] == ["run_shell_command", "write_file"]
    assert uses[1]["parameters"]["file_path"] == str(tmp_path / "work" / "g.txt")
    assert [e["tool_id"] for e in events if e["type"] == "tool_result"] == [u["tool_id"] for u in uses]
    stats = events[-1]["stats"]
    assert (stats["input_tokens"], stats["tool_calls"]) == (3000, 2)
    assert sum(m["input_tokens"] for m in stats["models"].values()) == 3000 and len(stats["models"]) == 2
    assert events[0]["session_id"] and (tmp_path / "work" / "g.txt").exists()


def test_gemini_stream_failures_end_with_an_error_result_or_nothing_at_all(tmp_path):
    r = run_fake("gemini", GEMINI_STREAM, tmp_path, stdin=fake(scenario="rate_limit", reset_in=34.8) + "\ngo")
    assert r.returncode == 173
    last = jsonl(r.stdout)[-1]
    assert (last["type"], last["status"], last["error"]["type"]) == ("result", "error", "RetryableQuotaError")
    assert last["error"]["message"].endswith("Please retry in 34.80s.")
    r = run_fake("gemini", GEMINI_STREAM, tmp_path, stdin=fake(scenario="auth", auth_variant="no_auth") + "\ngo")
    assert (r.returncode, r.stdout) == (41, b"")  # found before the session starts: no init, the text on stderr
    assert b"Please set an Auth method" in r.stderr


def test_turn_delay_lets_a_follower_see_events_before_the_end(tmp_path):
    proc = subprocess.Popen([str(BIN / "codex"), *CODEX_JSON], cwd=_workdir(tmp_path), env=_env(tmp_path),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        proc.stdin.write((fake(turns=3, turn_delay=0.5) + "\ngo").encode())
        proc.stdin.close()
        first = json.loads(proc.stdout.readline())
        assert first["type"] == "thread.started" and proc.poll() is None  # read while the CLI still works
        assert any(r["event"] == "start" and r["session_id"] == first["thread_id"] for r in log_records(tmp_path))
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT)
