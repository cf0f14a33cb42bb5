"""The stream readers alone (no process): the line splitter's bounds, each tool's parser on its CLI's shapes,
prices and the budget flag."""

from __future__ import annotations

import json
import time
import tracemalloc

import pytest

from executors import ADAPTERS, EventKind, FailureKind, RunEvent
from executors.classify import retry_after_from_text
from executors.parsers import ClaudeStream, CodexStream, GeminiStream
from executors.prices import DEFAULT_PRICES, estimate_cost, price_for
from executors.streams import LINE_CAP, LineSplitter, StreamParser

SECRET = "sk-live-0123456789abcdef"
NOW = 1_800_000_000.0


def _feed(parser: StreamParser, *objects: dict[str, object]) -> list[RunEvent]:
    for obj in objects:
        parser.feed_line(json.dumps(obj).encode())
    parser.finish()
    return parser.take_events()


def _kinds(events: list[RunEvent]) -> list[str]:
    return [event.kind.value for event in events]


# -- the line splitter ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("objects_only", [False, True])
def test_a_line_longer_than_the_cap_is_skipped_without_ever_being_held(objects_only: bool) -> None:
    splitter = LineSplitter(objects_only=objects_only)
    huge = b'{"type":"item.completed","item":{"text":"' + b"x" * (3 * LINE_CAP) + b'"}}\n'
    stream = b'{"n":1}\n' + huge + b'{"n":2}\n' + b'{"n":3}'
    lines: list[bytes] = []
    held = 0
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for start in range(0, len(stream), 64 * 1024):
            lines += splitter.feed(stream[start:start + 64 * 1024])
            held = max(held, len(splitter.partial))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert [*lines, splitter.finish()] == [b'{"n":1}', b'{"n":2}', b'{"n":3}']
    assert splitter.skipped == 1
    assert held <= LINE_CAP  # never more than the cap of an unfinished line
    assert peak < 2 * LINE_CAP + 512 * 1024  # the cap, plus one chunk and its slices: never the 3 MiB line


def test_many_lines_in_arbitrary_chunks_come_out_whole_and_in_order() -> None:
    lines = [json.dumps({"i": i, "pad": "y" * (i % 300)}).encode() for i in range(20_000)]
    stream = b"noise\n" + b"\n".join(lines) + b"\n"
    splitter = LineSplitter(objects_only=True)
    got: list[bytes] = []
    for size in (1, 7, 4096, 65536):
        got.clear()
        for start in range(0, len(stream), size):
            got += splitter.feed(stream[start:start + size])
        assert got == lines, size


def test_half_a_megabyte_of_noise_without_a_newline_costs_linear_time() -> None:
    noise = b"z" * (512 * 1024)
    splitter = LineSplitter(objects_only=True)
    started = time.perf_counter()

    for start in range(0, len(noise), 16):  # 32,768 tiny reads of one unfinished line
        assert list(splitter.feed(noise[start:start + 16])) == []
    tail = list(splitter.feed(b'\n{"after":"noise"}\n'))

    # Re-joining the held line on each read would copy ~8 GB here: minutes, not a fraction of a second.
    assert time.perf_counter() - started < 2.0
    assert tail == [b'{"after":"noise"}']


def test_pending_events_are_bounded_the_overflow_counted_and_the_latest_totals_kept() -> None:
    parser = CodexStream(max_pending=5, clock=lambda: NOW)
    for i in range(20):
        parser.feed_line(json.dumps({"type": "error", "message": f"Reconnecting... {i}/5"}).encode())
        parser.feed_line(json.dumps({"type": "turn.completed", "usage": {"input_tokens": 1,
                                                                          "output_tokens": 1}}).encode())

    events = parser.take_events()

    assert _kinds(events) == ["error", "usage", "error", "usage", "error", "usage"]
    assert events[-1].data["turns"] == 20  # the latest totals got through
    assert parser.dropped_events == 17 + 17  # errors, and totals replaced by later ones
    assert parser.take_events() == []


# -- claude ---------------------------------------------------------------------------------------------------

CLAUDE_TURN = {"type": "assistant", "session_id": "s-1", "message": {
    "id": "msg_1", "model": "claude-sonnet-4-5", "usage": {"input_tokens": 10, "output_tokens": 5,
                                                           "cache_read_input_tokens": 100}}}


def test_claude_stream_gives_messages_tool_calls_results_usage_and_the_session() -> None:
    parser = ClaudeStream(clock=lambda: NOW)
    events = _feed(
        parser,
        {"type": "system", "subtype": "init", "session_id": "s-1", "model": "claude-sonnet-4-5"},
        {**CLAUDE_TURN, "message": {**CLAUDE_TURN["message"], "content": [{"type": "text", "text": "Reading."}]}},
        {**CLAUDE_TURN, "message": {**CLAUDE_TURN["message"], "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/w/a.py"}}]}},
        {"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                                  "content": [{"type": "text", "text": "12345"}]}]}},
        {"type": "result", "subtype": "success", "is_error": False, "result": "done", "session_id": "s-1",
         "num_turns": 2, "total_cost_usd": 0.25, "usage": {"input_tokens": 30, "output_tokens": 9}},
    )

    assert _kinds(events) == ["message", "usage", "tool_call", "tool_result", "usage"]
    assert events[0].data == {"text": "Reading."}
    assert events[1].data == {"input_tokens": 110, "output_tokens": 5, "cost_usd": None, "turns": 1,
                              "estimate": False}
    assert events[2].data == {"tool": "Read", "summary": "/w/a.py", "id": "toolu_1"}
    assert events[3].data == {"tool": "Read", "id": "toolu_1", "ok": True, "size": 5}
    assert events[4].data == {"input_tokens": 30, "output_tokens": 9, "cost_usd": 0.25, "turns": 2,
                              "estimate": False}
    parsed = parser.outcome(exit_code=0, stdout=b"", stderr=b"")
    assert (parsed.failure_kind, parsed.final_message, parsed.session_id, parsed.turns) == ("", "done", "s-1", 2)


def test_claude_rate_limit_event_gives_the_reset_time_and_the_result_the_failure() -> None:
    parser = ClaudeStream(clock=lambda: NOW)
    events = _feed(
        parser,
        {"type": "rate_limit_event", "rate_limit_info": {"status": "allowed", "resetsAt": NOW + 18000}},
        {"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "resetsAt": NOW + 600,
                                                         "rateLimitType": "five_hour"}},
        {"type": "result", "subtype": "success", "is_error": True, "api_error_status": 429,
         "result": "You've hit your session limit · resets 11pm (UTC)", "session_id": "s-2"},
    )

    assert [(e.kind, e.data) for e in events if e.kind is EventKind.RATE_LIMIT] == [
        (EventKind.RATE_LIMIT, {"message": "five_hour limit reached", "resets_at": NOW + 600})]
    parsed = parser.outcome(exit_code=1, stdout=b"", stderr=b"")
    assert (parsed.failure_kind, parsed.retry_after_seconds) == (FailureKind.RATE_LIMITED, 600.0)


def test_claude_max_budget_result_is_budget_exceeded() -> None:
    parser = ClaudeStream()
    _feed(parser, {"type": "result", "subtype": "error_max_budget_usd", "is_error": True, "num_turns": 3,
                   "total_cost_usd": 0.61, "errors": ["Reached maximum budget ($0.5)"], "session_id": "s"})

    parsed = parser.outcome(exit_code=1, stdout=b"", stderr=b"")

    assert parsed.failure_kind == FailureKind.BUDGET_EXCEEDED
    assert parsed.error_message == "claude stopped at its --max-budget-usd after spending $0.6100"
    assert (parsed.cost_usd, parsed.turns) == (0.61, 3)


# -- codex ------------------------------------------------------------------------------------------------------


def test_codex_stream_sums_turn_usage_estimates_cost_and_keeps_the_last_answer() -> None:
    parser = CodexStream(model="gpt-5-codex", clock=lambda: NOW)
    command = {"id": "item_1", "type": "command_execution", "command": "bash -lc 'pytest -q'",
               "aggregated_output": "", "exit_code": None, "status": "in_progress"}
    events = _feed(
        parser,
        {"type": "thread.started", "thread_id": "thread-9"},
        {"type": "turn.started"},
        {"type": "item.started", "item": command},
        {"type": "item.completed", "item": {**command, "aggregated_output": "3 failed", "exit_code": 1,
                                            "status": "completed"}},
        {"type": "item.completed", "item": {"id": "item_2", "type": "file_change", "status": "completed",
                                            "changes": [{"path": "/w/a.py", "kind": "update"}]}},
        {"type": "item.completed", "item": {"id": "item_3", "type": "agent_message", "text": "fixed"}},
        {"type": "turn.completed", "usage": {"input_tokens": 1_000_000, "cached_input_tokens": 0,
                                             "output_tokens": 100_000}},
    )

    assert _kinds(events) == ["tool_call", "tool_result", "tool_call", "tool_result", "message", "usage"]
    assert events[0].data == {"tool": "command", "summary": "bash -lc 'pytest -q'", "id": "item_1"}
    assert events[1].data == {"tool": "command", "id": "item_1", "ok": False, "size": 8}
    assert events[2].data["summary"] == "update /w/a.py"
    assert events[5].data == {"input_tokens": 1_000_000, "output_tokens": 100_000, "cost_usd": 2.25, "turns": 1,
                              "estimate": True}
    parsed = parser.outcome(exit_code=0, stdout=b"", stderr=b"")
    assert (parsed.final_message, parsed.session_id, parsed.cost_usd, parsed.cost_is_estimate) == (
        "fixed", "thread-9", 2.25, True)


def test_codex_usage_limit_is_a_rate_limit_event_with_the_reset_it_names() -> None:
    parser = CodexStream(clock=lambda: NOW)
    message = "You've hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro) or try again at 3:28 PM."
    events = _feed(parser, {"type": "error", "message": "Reconnecting... 1/5"},
                   {"type": "turn.failed", "error": {"message": message}})

    assert [(e.kind.value, e.data["message"]) for e in events] == [("error", "Reconnecting... 1/5"),
                                                                   ("rate_limit", message)]
    assert events[1].data["resets_at"] == pytest.approx(NOW + retry_after_from_text(message), abs=1)
    assert parser.outcome(exit_code=1, stdout=b"", stderr=b"").failure_kind == FailureKind.RATE_LIMITED


# -- gemini ----------------------------------------------------------------------------------------------------


def test_gemini_chunks_become_one_message_and_turns_are_model_responses() -> None:
    parser = GeminiStream(clock=lambda: NOW)
    events = _feed(
        parser,
        {"type": "init", "session_id": "g-1", "model": "gemini-2.5-flash"},
        {"type": "message", "role": "user", "content": "go"},
        {"type": "message", "role": "assistant", "content": "Let me ", "delta": True},
        {"type": "message", "role": "assistant", "content": "look.", "delta": True},
        {"type": "tool_use", "tool_name": "read_file", "tool_id": "t1", "parameters": {"absolute_path": "/w/x"}},
        {"type": "tool_use", "tool_name": "run_shell_command", "tool_id": "t2", "parameters": {"command": "ls"}},
        {"type": "tool_result", "tool_id": "t1", "status": "success", "output": "abc"},
        {"type": "tool_result", "tool_id": "t2", "status": "error", "error": {"type": "x", "message": "denied"}},
        {"type": "message", "role": "assistant", "content": "All ", "delta": True},
        {"type": "message", "role": "assistant", "content": "done.", "delta": True},
        {"type": "result", "status": "success", "stats": {"input_tokens": 2_000_000, "output_tokens": 100_000,
                                                          "models": {}}},
    )

    assert _kinds(events) == ["usage", "message", "tool_call", "tool_call", "tool_result", "tool_result", "usage",
                              "message", "usage"]
    assert [e.data["text"] for e in events if e.kind is EventKind.MESSAGE] == ["Let me look.", "All done."]
    assert events[5].data == {"tool": "run_shell_command", "id": "t2", "ok": False, "size": 6}
    assert events[-1].data == {"input_tokens": 2_000_000, "output_tokens": 100_000,
                               "cost_usd": pytest.approx(0.85), "turns": 2, "estimate": True}
    parsed = parser.outcome(exit_code=0, stdout=b"", stderr=b"")
    assert (parsed.final_message, parsed.session_id, parsed.turns) == ("All done.", "g-1", 2)


def test_gemini_error_result_is_classified_from_its_exit_code_and_message() -> None:
    parser = GeminiStream(clock=lambda: NOW)
    message = "You exceeded your current quota. Please retry in 34.8s."
    events = _feed(parser, {"type": "init", "session_id": "g-2", "model": "gemini-2.5-pro"},
                   {"type": "result", "status": "error", "error": {"type": "RetryableQuotaError",
                                                                  "message": message}, "stats": {}})

    assert [e.data for e in events if e.kind is EventKind.RATE_LIMIT] == [{"message": message,
                                                                           "resets_at": NOW + 34.8}]
    parsed = parser.outcome(exit_code=173, stdout=b"", stderr=b"")
    assert (parsed.failure_kind, parsed.retry_after_seconds, parsed.session_id) == ("rate_limited", 34.8, "g-2")


def test_adapter_parse_still_reads_the_one_document_formats() -> None:
    claude = ADAPTERS["claude"].parse(stdout=json.dumps({"type": "result", "subtype": "success", "is_error": False,
                                                         "result": "hi", "session_id": "c-1", "num_turns": 1,
                                                         "usage": {"input_tokens": 3, "output_tokens": 1}}).encode(),
                                      stderr=b"", exit_code=0)
    gemini = ADAPTERS["gemini"].parse(stdout=b"Loaded cached credentials.\n" + json.dumps(
        {"session_id": "g-1", "response": "hi", "stats": {"models": {"gemini-2.5-pro": {"tokens": {
            "prompt": 3, "candidates": 1}}}}}, indent=2).encode(), stderr=b"", exit_code=0)

    assert (claude.failure_kind, claude.final_message, claude.session_id, claude.input_tokens) == ("", "hi", "c-1", 3)
    assert (gemini.failure_kind, gemini.final_message, gemini.session_id, gemini.input_tokens) == ("", "hi", "g-1", 3)


# -- secrets, prices, the budget flag -------------------------------------------------------------------------


def test_a_secret_is_scrubbed_before_the_text_is_cut_so_no_half_of_it_survives() -> None:
    parser = CodexStream(secrets=(SECRET,))
    command = "curl -H 'Authorization: Bearer " + "a" * 150 + SECRET + "' https://example.test/" + "b" * 300
    events = _feed(parser, {"type": "item.started", "item": {"id": "c", "type": "command_execution",
                                                             "command": command}},
                   {"type": "item.completed", "item": {"id": "m", "type": "agent_message",
                                                       "text": "x" * 995 + SECRET}})

    texts = [str(value) for event in events for value in event.data.values()]
    assert not any(SECRET[:5] in text for text in texts)
    assert "[redacted]" in events[0].data["summary"] and len(events[0].data["summary"]) == 200


def test_event_text_is_storable_whatever_the_cli_printed() -> None:
    parser = ClaudeStream()
    events = _feed(parser, {"type": "assistant", "message": {"id": "m", "content": [
        {"type": "text", "text": "ok \u0000 \ud800 done"}]}})

    assert events[0].data == {"text": "ok \ufffd \ufffd done"}  # no NUL for PostgreSQL, no lone surrogate
    json.dumps(events[0].data, ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate


def test_prices_match_the_longest_prefix_and_the_callers_table_comes_first() -> None:
    assert price_for("gpt-5-codex-2026-01") == DEFAULT_PRICES["gpt-5-codex"]
    assert price_for("gpt-5-codex", {"gpt-5": (9.0, 9.0)}) == (9.0, 9.0)
    assert price_for("my-local-model") is None
    assert estimate_cost("my-local-model", 10, 10, {"my-local": (1.0, 2.0)}) == pytest.approx(0.00003)


def test_claude_gets_the_tasks_budget_as_max_budget_usd_the_others_no_flag() -> None:
    claude = ADAPTERS["claude"].build(binary="claude", model="", extra_args=[], allow_dangerous=False,
                                      max_cost_usd=0.75)
    lower_extra = ADAPTERS["claude"].build(binary="claude", model="", extra_args=["--max-budget-usd=0.5"],
                                           allow_dangerous=False, max_cost_usd=0.75)
    higher_extra = ADAPTERS["claude"].build(binary="claude", model="", extra_args=["--max-budget-usd=2"],
                                            allow_dangerous=False, max_cost_usd=0.00001)
    codex = ADAPTERS["codex"].build(binary="codex", model="", extra_args=[], allow_dangerous=False,
                                    max_cost_usd=0.75)

    assert claude[-2:] == ["--max-budget-usd", "0.75"] and "--max-turns" not in claude
    assert lower_extra.count("--max-budget-usd") == 1 and lower_extra[-2:] == ["--max-budget-usd", "0.5"]
    assert higher_extra.count("--max-budget-usd") == 1 and higher_extra[-2:] == ["--max-budget-usd", "0.00001"]
    assert "--max-budget-usd" not in codex and codex[-1] == "-"
