"""A run's timeline, stall detection and budgets, through the real runner and the stand-in CLIs (no database)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from executors import ADAPTERS, ExecutionResult, ExecutionSpec, RunEvent
from executors.base import Sandbox
from executors.runner import execute
from executors.sandbox import bwrap_check
from tests.procs import FAKES_BIN, processes_with_env

TOOLS = ("claude", "codex", "gemini")
CREDENTIALS = {"claude": "ANTHROPIC_API_KEY", "codex": "CODEX_API_KEY", "gemini": "GEMINI_API_KEY"}
SECRET = "sk-test-events-5b7e0c1d"
needs_bwrap = pytest.mark.skipif(bool(bwrap_check()), reason="bubblewrap is installed by make test")
MODES = [pytest.param("bwrap", marks=needs_bwrap), "off"]


class Timeline:
    """An `on_event` sink: every batch with the moment it arrived, and whether the CLI had ended by then."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.batches: list[tuple[float, bool, list[RunEvent]]] = []
        self.thread_ids: set[int] = set()

    def __call__(self, events: list[RunEvent]) -> None:
        self.thread_ids.add(threading.get_ident())
        self.batches.append((time.monotonic(), _ended(self.log), events))

    @property
    def events(self) -> list[RunEvent]:
        return [event for _, _, batch in self.batches for event in batch]

    def kinds(self) -> list[str]:
        return [event.kind.value for event in self.events]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event.data for event in self.events if event.kind.value == kind]


def _log_lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _ended(log: Path) -> bool:
    return any(line["event"] == "end" for line in _log_lines(log))


def _start(log: Path) -> dict[str, Any]:
    (line,) = [line for line in _log_lines(log) if line["event"] == "start"]
    return line


def _spec(tool: str, tmp_path: Path, directive: dict[str, Any], *, mode: str = "off", max_cost_usd: float | None = None,
          **fields: Any) -> ExecutionSpec:
    argv = ADAPTERS[tool].build(binary=str(FAKES_BIN / tool), model="", extra_args=[], allow_dangerous=False,
                                max_cost_usd=max_cost_usd)
    (tmp_path / "shared").mkdir(exist_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8",
           "FAKE_CLI_LOG": str(tmp_path / "shared" / "cli.log"), CREDENTIALS[tool]: SECRET}
    if "TZ" in os.environ:  # the stand-in names clock times in the box's zone, as this process reads them
        env["TZ"] = os.environ["TZ"]
    fields.setdefault("heartbeat_interval", 0.05)
    fields.setdefault("kill_grace_seconds", 1.0)
    fields.setdefault("timeout_seconds", 60)
    sandbox = Sandbox(mode=mode, ro_paths=(str(FAKES_BIN.parent),), rw_paths=(str(tmp_path / "shared"),))
    return ExecutionSpec(tool=tool, argv=argv, stdin=f"do the job\nFAKE: {json.dumps(directive)}".encode(),
                         env=env, work_dir=tmp_path / "work", secrets=(SECRET,), sandbox=sandbox,
                         max_cost_usd=max_cost_usd, **fields)


def _run(tool: str, tmp_path: Path, directive: dict[str, Any], **fields: Any) -> tuple[ExecutionResult, Timeline]:
    timeline = Timeline(tmp_path / "shared" / "cli.log")
    result = execute(_spec(tool, tmp_path, directive, **fields), on_event=timeline)
    return result, timeline


def _in_order(kinds: list[str], expected: list[str]) -> bool:
    """`expected` is a subsequence of `kinds`."""
    remaining = iter(kinds)
    return all(kind in remaining for kind in expected)


def _nothing_left(tmp_path: Path) -> bool:
    return not processes_with_env("FAKE_CLI_LOG", str(tmp_path / "shared" / "cli.log"))


# -- the timeline ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tool", TOOLS)
def test_a_run_that_works_and_writes_a_file_streams_its_events_in_order(tool: str, tmp_path: Path) -> None:
    result, timeline = _run(tool, tmp_path, {"turns": 2, "turn_tokens": [300, 30], "answer": "report written",
                                             "write": {"reports/out.md": "# ok\n"}},
                            output_patterns=["reports/out.md"])

    assert (result.failure_kind, result.final_message) == ("", "report written"), result.stderr
    assert [o.path for o in result.outputs] == ["reports/out.md"]
    kinds = timeline.kinds()
    assert _in_order(kinds, ["message", "tool_call", "tool_result", "tool_call", "tool_result", "message", "usage",
                             "result"]), kinds
    assert kinds[-1] == "result" and kinds.count("result") == 1
    calls = timeline.of("tool_call")
    assert "echo step 1" in calls[0]["summary"]
    assert calls[-1]["summary"].endswith("reports/out.md")
    assert all(r["ok"] for r in timeline.of("tool_result"))
    assert [r["id"] for r in timeline.of("tool_result")] == [c["id"] for c in calls]
    last_usage = timeline.of("usage")[-1]
    assert (last_usage["input_tokens"], last_usage["output_tokens"]) == (result.input_tokens, result.output_tokens)
    assert (last_usage["turns"], last_usage["cost_usd"]) == (result.turns, result.cost_usd)
    assert timeline.of("result") == [{"ok": True, "text": "report written", "session_id": result.session_id,
                                      "failure_kind": "", "error": ""}]
    assert result.session_id and result.session_id == _start(tmp_path / "shared" / "cli.log")["session_id"]
    assert timeline.thread_ids == {threading.get_ident()}  # delivered in the caller's thread, like the heartbeat


@pytest.mark.parametrize("tool", TOOLS)
def test_events_reach_the_sink_while_the_cli_is_still_running(tool: str, tmp_path: Path) -> None:
    result, timeline = _run(tool, tmp_path, {"turns": 4, "turn_delay": 0.4})

    assert result.failure_kind == "", result.stderr
    first_call = next(i for i, (_, _, batch) in enumerate(timeline.batches)
                      if any(e.kind.value == "tool_call" for e in batch))
    assert timeline.batches[first_call][1] is False  # the CLI had not ended when its first tool call arrived
    assert timeline.batches[-1][2][-1].kind.value == "result"


def test_cost_and_tokens_are_right_when_the_stdout_buffer_kept_only_its_ends(tmp_path: Path) -> None:
    result, timeline = _run("codex", tmp_path, {"turns": 1500, "turn_tokens": [1000, 100]},
                            stdout_limit=64 * 1024)

    assert result.failure_kind == "", result.error_message
    assert result.stdout_truncated  # most turn.completed lines are gone from the stored stdout ...
    assert (result.input_tokens, result.output_tokens, result.turns) == (1_500_000, 150_000, 1500)  # ... not these
    assert result.cost_is_estimate is False  # no model named: no price, no estimate
    assert timeline.of("usage")[-1]["turns"] == 1500


def test_codex_cost_is_estimated_from_the_models_price(tmp_path: Path) -> None:
    result, timeline = _run("codex", tmp_path, {"turns": 2, "turn_tokens": [1_000_000, 100_000]},
                            model="gpt-5-codex")

    assert (result.cost_usd, result.cost_is_estimate) == (pytest.approx(4.5), True)
    assert timeline.of("usage")[-1]["estimate"] is True


# -- session ids and rate limits ------------------------------------------------------------------------------


@pytest.mark.parametrize("tool", TOOLS)
def test_the_session_id_is_the_clis_own(tool: str, tmp_path: Path) -> None:
    result, timeline = _run(tool, tmp_path, {"answer": "fine"})

    start = _start(tmp_path / "shared" / "cli.log")
    assert result.session_id == start["session_id"] and len(result.session_id) == 36
    assert timeline.of("result")[0]["session_id"] == result.session_id


@pytest.mark.parametrize(("tool", "reset_in", "precision"), [("claude", 900, 1.0), ("codex", 900, 60.0),
                                                              ("gemini", 34.89, 0.5)])
def test_a_rate_limit_is_an_event_with_its_reset_time(tool: str, reset_in: float, precision: float,
                                                      tmp_path: Path) -> None:
    before = time.time()

    result, timeline = _run(tool, tmp_path, {"scenario": "rate_limit", "reset_in": reset_in})

    assert result.failure_kind == "rate_limited"
    (limit,) = timeline.of("rate_limit")
    assert limit["resets_at"] == pytest.approx(before + reset_in, abs=precision + (time.time() - before))
    assert result.retry_after_seconds is not None
    assert result.retry_after_seconds == pytest.approx(reset_in, abs=precision + (time.time() - before))
    assert timeline.of("result")[0] == {"ok": False, "text": result.final_message[:1000], "failure_kind":
                                        "rate_limited", "session_id": result.session_id,
                                        "error": result.error_message[:1000]}


# -- stalls ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tool", TOOLS)
def test_a_silent_cli_is_killed_as_stalled_with_everything_it_started(tool: str, mode: str, tmp_path: Path) -> None:
    started = time.monotonic()

    result, timeline = _run(tool, tmp_path, {"scenario": "hang", "detach": True}, mode=mode,
                            idle_timeout_seconds=1.0, timeout_seconds=60)

    assert result.failure_kind == "stalled"
    assert result.error_message == ("stalled: no output and no event for 1s (the idle timeout); "
                                    "the CLI's process group was killed")
    assert time.monotonic() - started < 1.0 + 1.0 + 8  # idle + grace + start-up slack: far from the 60 s timeout
    assert _nothing_left(tmp_path)  # the CLI, its child and the detached descendant
    assert timeline.of("result")[0]["failure_kind"] == "stalled"


def test_a_cli_that_keeps_talking_is_not_stalled_however_long_it_runs(tmp_path: Path) -> None:
    started = time.monotonic()

    result, _ = _run("codex", tmp_path, {"turns": 5, "turn_delay": 0.4}, idle_timeout_seconds=1.2)

    assert result.failure_kind == "", result.error_message
    assert time.monotonic() - started > 1.2  # longer than the idle timeout in all


# -- budgets -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_codex_is_killed_when_its_streamed_usage_passes_the_cost_limit(mode: str, tmp_path: Path) -> None:
    # 0.225 USD a turn at gpt-5-codex's default price: the third turn passes 0.5
    directive = {"turns": 6, "turn_tokens": [100_000, 10_000], "turn_delay": 0.5, "write": {"out.txt": "x"}}

    result, timeline = _run("codex", tmp_path, directive, mode=mode, max_cost_usd=0.5, model="gpt-5-codex")

    assert result.failure_kind == "budget_exceeded"
    assert result.error_message == ("budget exceeded: cost $0.6750 (estimated from tokens) passed max_cost_usd "
                                    "$0.5000; the CLI's process group was killed")
    assert (result.turns, result.cost_is_estimate) == (3, True)
    assert not _ended(tmp_path / "shared" / "cli.log")  # killed mid-run: it never got to write its file
    assert result.outputs == [] and _nothing_left(tmp_path)
    assert timeline.of("usage")[-1]["cost_usd"] == pytest.approx(0.675)


def test_gemini_is_killed_when_its_model_turns_pass_the_turn_limit(tmp_path: Path) -> None:
    result, timeline = _run("gemini", tmp_path, {"turns": 6, "turn_delay": 0.5}, max_turns=2)

    assert result.failure_kind == "budget_exceeded"
    assert result.error_message == "budget exceeded: 3 turns passed max_turns 2; the CLI's process group was killed"
    assert not _ended(tmp_path / "shared" / "cli.log")
    assert [u["turns"] for u in timeline.of("usage")] == [1, 2, 3]


def test_gemini_cost_reported_only_in_its_result_still_counts(tmp_path: Path) -> None:
    result, _ = _run("gemini", tmp_path, {"turns": 1, "turn_tokens": [1_000_000, 0]}, max_cost_usd=1.0)

    assert result.failure_kind == "budget_exceeded"  # 1.25 USD at gemini-2.5-pro's default price
    assert result.error_message == ("budget exceeded: cost $1.2500 (estimated from tokens) passed max_cost_usd "
                                    "$1.0000; reported as the run ended")


def test_claude_gets_max_budget_usd_and_its_own_stop_is_budget_exceeded(tmp_path: Path) -> None:
    # 0.45 USD a turn at the stand-in's price; claude checks between turns: it stops after the second
    result, timeline = _run("claude", tmp_path, {"turns": 5, "turn_tokens": [100_000, 10_000]}, max_cost_usd=0.5)

    start = _start(tmp_path / "shared" / "cli.log")
    assert start["argv"][-2:] == ["--max-budget-usd", "0.5"] and "--max-turns" not in start["argv"]
    assert result.failure_kind == "budget_exceeded"
    assert result.error_message == ("budget exceeded: cost $0.9000 passed max_cost_usd $0.5000; "
                                    "reported as the run ended")
    assert (result.turns, result.cost_usd, result.cost_is_estimate) == (2, pytest.approx(0.9), False)
    assert timeline.of("result")[0]["failure_kind"] == "budget_exceeded"


def test_claude_is_killed_when_its_turns_pass_the_turn_limit(tmp_path: Path) -> None:
    result, _ = _run("claude", tmp_path, {"turns": 6, "turn_delay": 0.5}, max_turns=3)

    assert result.failure_kind == "budget_exceeded"
    assert result.error_message == "budget exceeded: 4 turns passed max_turns 3; the CLI's process group was killed"
    assert not _ended(tmp_path / "shared" / "cli.log")


# -- secrets -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tool", TOOLS)
def test_secrets_are_scrubbed_from_every_event(tool: str, tmp_path: Path) -> None:
    directive = {"answer": "x" * 995 + SECRET + " done", "write": {f"notes-{SECRET}.txt": SECRET}}

    result, timeline = _run(tool, tmp_path, directive, output_patterns=["*.txt"])

    assert result.failure_kind == "", result.error_message
    assert timeline.events
    recorded = json.dumps([event.data for event in timeline.events])
    assert SECRET[:6] not in recorded  # not whole, and not the half left by cutting a text to 1000 characters
    assert "[redacted]" in recorded
    assert any("[redacted]" in call["summary"] for call in timeline.of("tool_call"))


def test_a_sink_that_fails_at_the_end_does_not_lose_the_result(tmp_path: Path) -> None:
    calls: list[int] = []

    def sink(events: list[RunEvent]) -> None:
        calls.append(len(events))
        if events[-1].kind.value == "result":
            raise RuntimeError("database went away")

    result = execute(_spec("claude", tmp_path, {"answer": "kept"}), on_event=sink)

    assert (result.failure_kind, result.final_message) == ("", "kept")
    assert calls
