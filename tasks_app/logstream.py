"""Following a task's live output: `follow()` for `schedulerctl logs --follow`, and the SSE framing of the stream
process (tasks_app/streams.py serves `?follow=1`)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.db import close_old_connections

from executors.base import EventKind
from tasks_app.models import TERMINAL_STATUSES, RunEvent
from tasks_app.selectors import run_events, run_log_chunks, task_latest_run, task_status


@dataclass(frozen=True)
class LogEvent:
    kind: str  # "attempt", "end", "timeout"; "stdout"/"stderr" (logs); a RunEvent kind (timeline)
    data: str
    seq: int | None = None


# What can be followed: the latest attempt's live output, or its timeline (RunEvents, one JSON object each).
LOGS, TIMELINE = "logs", "timeline"
FEEDS = (LOGS, TIMELINE)


def timeline_dict(event: RunEvent) -> dict[str, Any]:
    return {"seq": event.seq, "kind": event.kind, "at": event.created_at.isoformat(), "data": event.data}


def timeline_event(event: RunEvent) -> LogEvent:
    return LogEvent(event.kind, json.dumps(timeline_dict(event), separators=(",", ":")), event.seq)


def _feed_events(feed: str, run_id: int, after: int) -> list[LogEvent]:
    if feed == TIMELINE:
        return [timeline_event(e) for e in run_events(run_id=run_id, after=after)]
    return [LogEvent(c.stream, c.data, c.seq) for c in run_log_chunks(run_id=run_id, after=after)]


def follow(task_id: Any, *, after: int = 0, poll_seconds: float = 0.5, max_seconds: float = 3600.0,
           follow_retries: bool = True, feed: str = LOGS) -> Iterator[LogEvent]:
    """Yield the latest run's output (or, with feed="timeline", its RunEvents) as it is written, then a final
    "end" (or "timeout") event.

    `after` is the sequence number to resume from (SSE's Last-Event-ID + 1). A retry's new attempt is followed
    too, announced by an "attempt" event.
    """
    deadline = time.monotonic() + max_seconds
    run_id: int | None = None
    while True:
        status = task_status(task_id=task_id)
        latest = task_latest_run(task_id=task_id)
        if latest is not None and latest.pk != run_id and (run_id is None or follow_retries):
            if run_id is not None:
                after = 0
            run_id = latest.pk
            yield LogEvent("attempt", str(latest.attempt))
        if run_id is not None:
            while events := _feed_events(feed, run_id, after):
                yield from events
                after = (events[-1].seq or 0) + 1
        if status in TERMINAL_STATUSES:
            yield LogEvent("end", status)
            return
        if time.monotonic() >= deadline:
            yield LogEvent("timeout", status)
            return
        close_old_connections()
        time.sleep(poll_seconds)


# The event names this server sends: the field is never built from anything a CLI wrote.
EVENT_KINDS = frozenset({"attempt", "stdout", "stderr", "end", "timeout", *(kind.value for kind in EventKind)})
# Every line ending the SSE format knows (CRLF, a bare CR, LF). A data field ends at any of them, so output is cut
# at all three before each piece gets its own `data:` prefix: no byte of it can end a field or start another one.
_SSE_LINE_BREAK = re.compile(r"\r\n|\r|\n")
SSE_PREAMBLE = b"retry: 2000\n\n"  # clients reconnect after 2 s, sending Last-Event-ID
SSE_KEEPALIVE = b": keep-alive\n\n"  # a comment: clients ignore it, proxies and NAT see traffic


def sse_event(event: LogEvent) -> bytes:
    """One server-sent event: the server's own name and integer id, the data split per the SSE spec.

    A CR or CRLF in the output reaches the client as LF (the format has no escape for it); the exact bytes stay
    available from the JSON logs endpoint.
    """
    if event.kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {event.kind!r}")
    ident = f"id: {int(event.seq)}\n" if event.seq is not None else ""
    payload = "".join(f"data: {line}\n" for line in _SSE_LINE_BREAK.split(event.data))
    return f"{ident}event: {event.kind}\n{payload}\n".encode(errors="replace")
