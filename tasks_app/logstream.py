"""Following a task's live output: one generator serves the SSE endpoint and `schedulerctl logs --follow`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.db import close_old_connections

from tasks_app.models import TERMINAL_STATUSES
from tasks_app.selectors import run_log_chunks, task_latest_run, task_status


@dataclass(frozen=True)
class LogEvent:
    kind: str  # "attempt", "stdout", "stderr", "end" or "timeout"
    data: str
    seq: int | None = None


def follow(task_id: Any, *, after: int = 0, poll_seconds: float = 0.5, max_seconds: float = 3600.0,
           follow_retries: bool = True) -> Iterator[LogEvent]:
    """Yield the latest run's output as it is written, then a final "end" (or "timeout") event.

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
            while chunks := run_log_chunks(run_id=run_id, after=after):
                for chunk in chunks:
                    yield LogEvent(chunk.stream, chunk.data, chunk.seq)
                after = chunks[-1].seq + 1
        if status in TERMINAL_STATUSES:
            yield LogEvent("end", status)
            return
        if time.monotonic() >= deadline:
            yield LogEvent("timeout", status)
            return
        close_old_connections()
        time.sleep(poll_seconds)


def sse(events: Iterator[LogEvent], *, keepalive_seconds: float = 15.0) -> Iterator[bytes]:
    """Server-sent events: one event per chunk (multi-line data split per the SSE spec)."""
    yield b"retry: 2000\n\n"
    for event in events:
        lines = event.data.split("\n")
        payload = "".join(f"data: {line}\n" for line in lines)
        ident = f"id: {event.seq}\n" if event.seq is not None else ""
        yield f"{ident}event: {event.kind}\n{payload}\n".encode()
