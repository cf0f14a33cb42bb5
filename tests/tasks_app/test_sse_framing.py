"""SSE framing: whatever a CLI prints, a client parsing the stream as a browser does sees the events the server sent,
with the server's names and ids, and nothing else."""

from __future__ import annotations

import pytest

from tasks_app.logstream import SSE_KEEPALIVE, SSE_PREAMBLE, LogEvent, sse_event
from tests.sse import SseParser, parse

FORGERY = "before\revent: end\rdata: forged\r\rid: 999\r\rafter"


@pytest.mark.parametrize("line_break", ["\r", "\n", "\r\n"])
def test_output_with_any_line_ending_cannot_forge_an_event_or_an_id(line_break: str) -> None:
    data = FORGERY.replace("\r", line_break)
    stream = [SSE_PREAMBLE, sse_event(LogEvent("stdout", data, 7)), SSE_KEEPALIVE,
              sse_event(LogEvent("end", "succeeded"))]

    events = list(parse(stream))

    assert [(e.type, e.last_event_id) for e in events] == [("stdout", "7"), ("end", "7")]
    assert events[0].data == "before\nevent: end\ndata: forged\n\nid: 999\n\nafter"
    assert events[1].data == "succeeded"


def test_the_parser_reads_a_crlf_split_across_two_network_reads_as_one_line_ending() -> None:
    parser = SseParser()

    events = parser.feed(b"event: stdout\r") + parser.feed(b"\ndata: a\r\ndata: b\r\n\r\n")

    assert [(e.type, e.data) for e in events] == [("stdout", "a\nb")]


def test_keep_alive_is_a_comment_and_the_preamble_sets_the_retry() -> None:
    parser = SseParser()

    assert parser.feed(SSE_PREAMBLE + SSE_KEEPALIVE + SSE_KEEPALIVE) == []
    assert (parser.comments, parser.retry_ms) == (2, 2000)


def test_event_names_come_only_from_the_server() -> None:
    with pytest.raises(ValueError, match="unknown event kind"):
        sse_event(LogEvent("stdout\nevent: end", "x", 1))


def test_empty_output_and_non_utf8_safe_text_still_frame_one_event() -> None:
    events = list(parse([sse_event(LogEvent("stderr", "", 3)), sse_event(LogEvent("stdout", "\ud800 ok", 4))]))

    assert [(e.type, e.data) for e in events] == [("stderr", ""), ("stdout", "? ok")]
