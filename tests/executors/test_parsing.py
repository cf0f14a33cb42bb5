"""Reading a CLI's machine output never fails on what else it prints: noise, a `{` on every line, brackets
nested far deeper than the interpreter's recursion limit."""

from __future__ import annotations

import json

from executors import ADAPTERS
from executors.adapters import json_objects

RESULT = {"type": "result", "subtype": "success", "is_error": False, "result": "fine", "session_id": "s"}


def test_the_result_is_found_after_half_a_megabyte_of_noise() -> None:
    text = "x" * 512 * 1024 + "\n" + json.dumps(RESULT)

    assert json_objects(text) == [RESULT]


def test_brackets_nested_a_million_deep_are_noise_not_a_crash() -> None:
    text = "[" * 1_000_000 + "\n" + '{"a": ' + "[" * 100_000 + "\n" + json.dumps(RESULT)

    assert json_objects(text) == [RESULT]
    assert json_objects("{" * 1_000_000) == []


def test_a_brace_on_every_line_does_not_hide_the_result() -> None:
    assert json_objects("{\n" * 200_000 + json.dumps(RESULT)) == [RESULT]


def test_a_pretty_document_after_noise_and_jsonl_are_both_read() -> None:
    pretty = "Error: at node:internal\n    at foo (x.js:1)\n" + json.dumps({"response": "r"}, indent=2)
    lines = "\r\n".join(json.dumps({"i": i}) for i in range(3))

    assert json_objects(pretty) == [{"response": "r"}]
    assert json_objects(lines) == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_claude_reads_its_result_through_nul_bytes_and_invalid_utf8() -> None:
    stdout = b"\x00\xff\xfe garbage \xc3\x28\n" + json.dumps({**RESULT, "result": "ok \u0000 \ud800"}).encode()

    parsed = ADAPTERS["claude"].parse(stdout=stdout, stderr=b"\x00\xff", exit_code=0)

    assert (parsed.failure_kind, parsed.final_message) == ("", "ok \x00 \ud800")  # stored sanitised later
